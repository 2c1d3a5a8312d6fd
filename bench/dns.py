#!/usr/bin/env python3
"""DNS benchmark: dnsperf against sidus-appliance and dnsmasq, same names, same run.

A lab made for this run (server namespace with bridge `eth1` = 10.20.17.254/24, one client
namespace at 10.20.17.100/24; both removed at the end whatever happens). Each server runs
alone in the server namespace on port 53, one after the other, loaded with the lab zone of
config.example.yaml: gateway, master, filer (CNAME gateway) and dhcp-10..dhcp-249, forward
and reverse. dnsmasq gets them through --addn-hosts/--cname with --no-resolv and --local for
both zones, so it answers everything itself, as we do. dnsperf runs in the client namespace
for a fixed time per server (default 10 s) over the forward+reverse query list, with a
bounded number of outstanding queries; figures: answered queries per second and lost ones.

    sudo .venv/bin/python bench/dns.py              # ~30 s: ours then dnsmasq, plain queries
    sudo .venv/bin/python bench/dns.py --edns       # same, every query with an EDNS0 OPT
    sudo .venv/bin/python bench/dns.py --rounds 3   # ours, dnsmasq, dnsmasq, ours, ...: best of each
    sudo .venv/bin/python bench/dns.py --servers ours --profile   # where our time goes
"""

from __future__ import annotations

import argparse
import pstats
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import NsProcess, load, require_root, udp_listening
from sidus_appliance.config import load_config
from sidus_appliance.lab import EXAMPLE_CONFIG, Lab, write_lab_config

SERVER_IP = "10.20.17.254"
CLIENT_ADDRESS = "10.20.17.100/24"
PORT = 53


@dataclass
class Figures:
    name: str
    qps: float = 0.0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    error: str = ""

    def line(self) -> str:
        if self.error:
            return f"  {self.name:<8} ERROR {self.error}"
        loss = self.lost / self.sent if self.sent else 0.0
        return (f"  {self.name:<8} {self.qps:>10,.0f} q/s   sent {self.sent:>9,}  completed {self.completed:>9,}  "
                f"lost {self.lost:,} ({loss:.3%})")


def lab_names() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, address) pairs and CNAMEs, from config.example.yaml, fully qualified."""
    config = load_config(EXAMPLE_CONFIG)
    domain = config.domain
    hosts = [(f"gateway.{domain}", str(config.server_ip))]
    hosts += [(f"{h.name}.{domain}", str(h.address)) for h in config.hosts]
    assert config.dhcp.pool is not None
    hosts += [(f"{config.dhcp.pool.name_for(ip)}.{domain}", str(ip)) for ip in config.dhcp.pool.addresses()]
    cnames = [(f"{r.name}.{domain}", f"{r.value}.{domain}") for r in config.dns.records if r.type == "CNAME"]
    return hosts, cnames


def query_file(path: Path) -> int:
    hosts, cnames = lab_names()
    lines = [f"{name} A" for name, _ in hosts] + [f"{name} A" for name, _ in cnames]
    lines += [f"{IPv4Address(ip).reverse_pointer} PTR" for _, ip in hosts]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def start_ours(lab: Lab, work: Path, args: argparse.Namespace) -> NsProcess:
    config = write_lab_config(work, {"dhcp": {"enabled": False}, "tftp": {"enabled": False}, "http": {"enabled": False},
                                     "dns": {"port": PORT, "listen": [SERVER_IP]}})
    command = [sys.executable]
    if args.profile:
        command += ["-m", "cProfile", "-o", str(work / "serve.prof")]
    if args.standalone:
        command += [__file__, "--serve-standalone", str(config)]
    else:
        command += ["-m", "sidus_appliance.cli", "--log-level", "INFO", "serve", "--config", str(config)]
    process = NsProcess(lab.server_ns, command, work / "serve.log")
    process.wait_ready(lambda: "ready: serving" in process.log(), timeout=60)
    return process


def serve_standalone(config_path: str) -> int:
    """Our DnsService alone on its own loop (no DHCP/TFTP, empty leases): `--standalone`."""
    import asyncio
    import logging
    import signal

    from sidus_appliance.dhcp.leases import InMemoryLeaseStore
    from sidus_appliance.dns.service import DnsService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        service = DnsService(load_config(config_path), InMemoryLeaseStore(), logging.getLogger("sidus.dns"))
        await service.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        logging.getLogger("sidus").info("ready: serving dns (standalone)")
        await stop.wait()
        logging.getLogger("sidus").info("counters: %s", service.core.counters())
        service.close()

    asyncio.run(run())
    return 0


def start_dnsmasq(lab: Lab, work: Path) -> NsProcess:
    hosts, cnames = lab_names()
    addn = work / "hosts"
    addn.write_text("".join(f"{ip} {name}\n" for name, ip in hosts))
    config = load_config(EXAMPLE_CONFIG)
    command = [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        f"--addn-hosts={addn}", f"--port={PORT}", f"--listen-address={SERVER_IP}", "--bind-interfaces",
        f"--local=/{config.domain}/", f"--local=/{config.reverse_zone}/", "--pid-file=", "--user=root",
        "--log-facility=-",
        *(f"--cname={alias},{target}" for alias, target in cnames),
    ]
    process = NsProcess(lab.server_ns, command, work / "dnsmasq.log")
    process.wait_ready(lambda: udp_listening(lab.server_ns, PORT), timeout=20)
    return process


def run_dnsperf(lab: Lab, queries: Path, args: argparse.Namespace, name: str) -> Figures:
    client = lab.clients[0]
    command = ["dnsperf", "-s", SERVER_IP, "-p", str(PORT), "-d", str(queries), "-l", str(args.seconds),
               "-c", str(args.clients), "-q", str(args.outstanding), "-t", "2"]
    if args.edns:
        command.append("-e")
    result = client.run(command, timeout=args.seconds + 30)
    text = result.stdout + result.stderr
    figures = Figures(name)

    def number(label: str) -> float:
        match = re.search(rf"{label}:\s+([\d.]+)", text)
        if match is None:
            raise ValueError(f"no '{label}' in dnsperf output:\n{text[-2000:]}")
        return float(match.group(1))

    try:
        figures.sent = int(number("Queries sent"))
        figures.completed = int(number("Queries completed"))
        figures.lost = int(number("Queries lost"))
        figures.qps = number("Queries per second")
    except ValueError as exc:
        figures.error = str(exc)
    return figures


def bench(name: str, lab: Lab, root: Path, queries: Path, args: argparse.Namespace) -> Figures:
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    try:
        process = start_ours(lab, work, args) if name == "ours" else start_dnsmasq(lab, work)
    except RuntimeError as exc:
        return Figures(name, error=str(exc)[-500:])
    try:
        # One short warm-up pass (not counted): caches, ARP, page faults.
        client = lab.clients[0]
        client.run(["dnsperf", "-s", SERVER_IP, "-p", str(PORT), "-d", str(queries), "-n", "1"], timeout=30)
        return run_dnsperf(lab, queries, args, name)
    finally:
        process.stop()
        if name == "ours" and args.profile and (work / "serve.prof").exists():
            stats = pstats.Stats(str(work / "serve.prof"))
            stats.sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="ours,dnsmasq", help="comma-separated subset of ours,dnsmasq")
    parser.add_argument("--seconds", type=int, default=10, help="dnsperf run length per server (-l)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf client sockets (-c)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf outstanding queries (-q)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat ours/dnsmasq, alternating the order")
    parser.add_argument("--edns", action="store_true", help="send every query with EDNS0 (dnsperf -e)")
    parser.add_argument("--profile", action="store_true", help="run ours under cProfile and print the top")
    parser.add_argument("--standalone", action="store_true",
                        help="run our DnsService alone instead of the whole `sidus-appliance serve`")
    parser.add_argument("--serve-standalone", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_standalone:
        return serve_standalone(args.serve_standalone)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if any(n not in ("ours", "dnsmasq") for n in names):
        parser.error("servers: ours, dnsmasq")
    require_root(["dnsperf"] + (["dnsmasq"] if "dnsmasq" in names else []))

    root = Path(tempfile.mkdtemp(prefix="sidus-bench-dns-"))
    queries = root / "queries.txt"
    count = query_file(queries)
    print(f"dnsperf: {count} forward+reverse lab queries, {args.seconds} s per server, -c {args.clients} "
          f"-q {args.outstanding}{', EDNS0' if args.edns else ''}; before: {load()}")
    results: list[Figures] = []
    with Lab() as lab:
        lab.add_client(address=CLIENT_ADDRESS)
        for round_ in range(args.rounds):
            # Alternate the order each round: on a shared box, load drifts during a run.
            for name in names if round_ % 2 == 0 else names[::-1]:
                results.append(bench(name, lab, root, queries, args))
                print(results[-1].line(), f"  [{load()}]", flush=True)
    best = {}
    for r in results:
        if not r.error and (r.name not in best or r.qps > best[r.name].qps):
            best[r.name] = r
    ours, ref = best.get("ours"), best.get("dnsmasq")
    if ours and ref:
        what = "best of each" if args.rounds > 1 else "same run"
        lost = sum(r.lost for r in results if r.name == "ours")
        print(f"  ratio ours/dnsmasq: {ours.qps / ref.qps:.2f}x ({what}; ours lost {lost} in all)"
              f"  (target >= 0.5x with 0 lost)")
    shutil.rmtree(root, ignore_errors=True)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
