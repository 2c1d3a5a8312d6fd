"""Classroom storm: N PXE clients start together against our appliance and against dnsmasq
(DHCP+TFTP) serving the same tree, in the same run, for each N.

    sudo .venv/bin/python bench/storm.py [--clients 10 50 200] [--initrd-mib 32]

Per (server, N): a fresh server namespace (bridge eth1 = 10.20.17.254/24, the server on it) and
a client namespace with one veth per client carrying that client's MAC, both removed afterwards.
The clients (bench/storm_client.py, one epoll loop) run DORA with arch 0, then what pxelinux
fetches: pxelinux.0, ldlinux.c32, the menu lookups, menu.c32 + libutil.c32, the kernel (the
lab's Debian vmlinuz) and a 32 MiB initrd (random bytes). Printed: time until the last client
has everything, per-client p50/p95, failures, per-phase p50/p95, and ours/dnsmasq ratios.
Both servers log at their default level (ours INFO, dnsmasq without --log-dhcp). dnsmasq runs
with --no-ping: its default ping-before-offer costs ~3 s per new client, one client at a time
(seen in its log), which would measure that check rather than the server; --dnsmasq-ping
restores it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from storm_dnsmasq import dnsmasq_argv, materialise_tree
from storm_netns import Netns, namespaces

from sidus_appliance import bootfiles
from sidus_appliance.boot.kernels import initrd_name, kernel_name
from sidus_appliance.boot.pxelinux import render_menu
from sidus_appliance.config import load_config
from sidus_appliance.lab import testkernel, write_lab_config

HERE = Path(__file__).resolve().parent
SERVER = "10.20.17.254"
POOL = ("10.20.17.10", "10.20.17.249")
MASTER_MAC = "08:00:aa:bb:cc:dd"
INSTANCE = "lab"
PHASES = ("dhcp", "loader", "menu", "kernel", "initrd")
SERVERS = ("ours", "dnsmasq")


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# ---------------------------------------------------------------- the shared tree


class Tree:
    """One instance root + staged loaders, served by us (virtual tree) and dnsmasq (materialised)."""

    def __init__(self, work: Path, initrd_mib: int) -> None:
        kernel = testkernel.build()
        self.version = kernel.version
        self.instance_root = work / "nfsroot" / INSTANCE
        boot = self.instance_root / "boot"
        boot.mkdir(parents=True)
        self.vmlinuz = boot / f"vmlinuz-{kernel.version}"
        shutil.copyfile(kernel.vmlinuz, self.vmlinuz)
        self.initrd = boot / f"initrd.img-{kernel.version}"
        with open(self.initrd, "wb") as f:  # incompressible, like a real initrd's payload
            for _ in range(initrd_mib):
                f.write(os.urandom(1 << 20))
        self.ours_dir = work / "ours"
        self.config_path = write_lab_config(self.ours_dir, testkernel.instance_overrides(self.instance_root, INSTANCE))
        config = load_config(self.config_path)
        staged = bootfiles.install(config)  # the loaders exactly as production stages them
        if staged.missing:
            raise RuntimeError(str(staged))
        self.dnsmasq_root = work / "dnsmasq-tftp"
        kname, iname = kernel_name(self.version, INSTANCE), initrd_name(self.version, INSTANCE)
        # The seed's layout: one default file plus the master's 01-<mac>; every other lookup misses.
        menus = {
            "default": render_menu(config, None),
            "01-" + MASTER_MAC.replace(":", "-"): render_menu(config, MASTER_MAC),
        }
        materialise_tree(self.dnsmasq_root, {kname: self.vmlinuz, iname: self.initrd}, menus, config.tftp.root)


# ---------------------------------------------------------------- one run


def client_macs(n: int) -> list[str]:
    return [f"02:5a:00:00:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(1, n + 1)]


def wire(srv: Netns, cli: Netns, macs: list[str]) -> list[dict[str, str]]:
    """Bridge eth1 in srv; one veth per client, its client end (with the client's MAC) in cli."""
    for ns in (srv, cli):
        for key, value in (("net.ipv6.conf.all.disable_ipv6", 1), ("net.ipv6.conf.default.disable_ipv6", 1)):
            ns.run("sysctl", "-qw", f"{key}={value}")
    # 200 interfaces on one subnet in one namespace: each must answer ARP only for its own address
    # and accept replies for it (no reverse-path check across the siblings).
    for key, value in (("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)):
        for scope in ("all", "default"):
            cli.run("sysctl", "-qw", f"net.ipv4.conf.{scope}.{key}={value}")
    srv.bridge("eth1", f"{SERVER}/24")
    batch = []
    for i, mac in enumerate(macs):
        batch += [
            f"link add s{i} type veth peer name c{i} address {mac} netns {cli.name}",
            f"link set s{i} master eth1",
            f"link set s{i} up",
        ]
    subprocess.run(["ip", "-n", srv.name, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
    subprocess.run(
        ["ip", "-n", cli.name, "-batch", "-"], input="".join(f"link set c{i} up\n" for i in range(len(macs))),
        text=True, check=True,
    )  # fmt: skip
    return [{"ifname": f"c{i}", "mac": mac} for i, mac in enumerate(macs)]


def wait_for(path: Path, text: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout}s:\n{path.read_text(errors='replace')[-2000:]}")


def start_server(
    which: str, srv: Netns, run_dir: Path, config_path: Path, dnsmasq_root: Path, dnsmasq_ping: bool = False
) -> subprocess.Popen[Any]:
    """Ours (`serve` with config_path, fresh leases) or dnsmasq (dnsmasq_root) on eth1 in srv."""
    log_path = run_dir / f"{which}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child holds it; closed by the OS at exit
    if which == "ours":
        state = config_path.parent / "state"
        shutil.rmtree(state, ignore_errors=True)  # every client is new, as for dnsmasq
        state.mkdir()  # serve refuses a missing state_dir (it never creates one where it was told to look)
        argv = [sys.executable, "-m", "sidus_appliance.cli", "--log-level", "INFO", "serve",
                "--config", str(config_path)]  # fmt: skip
        proc = srv.popen(argv, log)
        wait_for(log_path, "ready: serving", proc)
    else:
        hosts = {MASTER_MAC: ("10.20.17.253", "master")}
        argv = dnsmasq_argv("eth1", dnsmasq_root, run_dir / "dnsmasq.leases", POOL, hosts=hosts,
                            domain="sidus.zone", log_dhcp=False, no_ping=not dnsmasq_ping)  # fmt: skip
        proc = srv.popen(argv, log)
        wait_for(log_path, "TFTP root is", proc)
    log.close()
    return proc


def run_storm(which: str, n: int, tree: Tree, work: Path, deadline: float, dnsmasq_ping: bool) -> dict[str, Any]:
    run_dir = work / f"{which}-{n}"
    run_dir.mkdir(parents=True)
    with namespaces("srv", "cli", prefix=f"storm-{which[:3]}{n}-") as (srv, cli):
        clients = wire(srv, cli, client_macs(n))
        proc = start_server(which, srv, run_dir, tree.config_path, tree.dnsmasq_root, dnsmasq_ping)
        time.sleep(0.5)  # let the bridge ports settle (forward delay 0, but links just came up)
        spec = {"server": SERVER, "clients": clients, "deadline": deadline, "tftp_timeout": 1.0, "tftp_retries": 6}
        spec_path = run_dir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        out = subprocess.run(
            cli.argv([sys.executable, str(HERE / "storm_client.py"), str(spec_path)]),
            capture_output=True, text=True, timeout=deadline + 120,
        )  # fmt: skip
        cpu = _cpu_seconds(proc.pid)
        srv.stop(proc)
        if out.returncode != 0:
            raise RuntimeError(f"storm client failed ({out.returncode}):\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout)
        result["server_cpu"] = cpu
        (run_dir / "result.json").write_text(json.dumps(result))
        return result


def _cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process we started (from /proc), before we stop it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------- report


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    ok = [c for c in result["clients"] if c["ok"]]
    failed = [c for c in result["clients"] if not c["ok"]]
    totals = [c["total"] for c in ok]
    phases = {p: [c["phases"][p] for c in ok if p in c["phases"]] for p in PHASES}
    return {
        "wall": max(totals) if totals and not failed else result["wall"],
        "ok": len(ok),
        "failed": len(failed),
        "errors": sorted({c["error"] for c in failed})[:5],
        "p50": pct(totals, 50),
        "p95": pct(totals, 95),
        "phases": {p: (pct(v, 50), pct(v, 95)) for p, v in phases.items()},
        "retransmits": sum(c["retransmits"] for c in result["clients"]),
        "gib": sum(c["bytes"] for c in result["clients"]) / 2**30,
        "client_cpu": result["client_cpu"],
        "server_cpu": result.get("server_cpu"),
    }


def report(n: int, runs: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n=== N = {n} clients (start together) ===")
    head = f"{'server':<10} {'last done':>9} {'ok':>4} {'fail':>4} {'p50':>7} {'p95':>7} {'GiB':>5} {'rexmit':>6} "
    head += f"{'srv cpu':>7} {'cli cpu':>7} {'load':>5}  " + "  ".join(f"{p + ' p50/p95':>17}" for p in PHASES)
    print(head)
    for which, rs in runs.items():
        for k, r in enumerate(rs, 1):
            srv_cpu = f"{r['server_cpu']:.1f}" if r["server_cpu"] is not None else "-"
            label = f"{which} #{k}" if len(rs) > 1 else which
            row = f"{label:<10} {r['wall']:>8.1f}s {r['ok']:>4} {r['failed']:>4} {r['p50']:>6.1f}s {r['p95']:>6.1f}s "
            row += f"{r['gib']:>5.2f} {r['retransmits']:>6} {srv_cpu:>7} {r['client_cpu']:>7.1f} {r['load']:>5.1f}  "
            row += "  ".join(f"{a:>8.2f}/{b:<8.2f}" for a, b in r["phases"].values())
            print(row)
            for e in r["errors"]:
                print(f"           failure: {e}")
    if "ours" in runs and "dnsmasq" in runs:

        def ratios(pick: Any) -> str:
            return ", ".join(
                f"{label} {pick([r[key] for r in runs['ours']]) / pick([r[key] for r in runs['dnsmasq']]):.2f}"
                for label, key in (("last done", "wall"), ("p50", "p50"), ("p95", "p95"))
            )

        if len(runs["ours"]) > 1:
            # On a shared box noise only adds time: the best run is the least disturbed estimate.
            print(f"ratio ours/dnsmasq, best runs:   {ratios(min)}  (< 1: ours faster)")
            print(f"ratio ours/dnsmasq, median runs: {ratios(lambda v: pct(v, 50))}")
        else:
            print(f"ratio ours/dnsmasq: {ratios(min)}  (< 1: ours faster)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    ap.add_argument("--initrd-mib", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1, help="runs per server and N, order alternating")
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds before unfinished clients count as failed")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, per-client JSON)")
    ap.add_argument(
        "--dnsmasq-ping", action="store_true",
        help="leave dnsmasq's ping-before-offer on (its default; ~3 s per new client, one at a time)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the storm needs root (network namespaces, packet sockets)")
    if max(args.clients) > 240:
        sys.exit("at most 240 clients: the pool is 10.20.17.10-249")
    work = Path(tempfile.mkdtemp(prefix="storm-"))
    failures = 0
    print(f"work dir {work}; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus", flush=True)
    try:
        tree = Tree(work, args.initrd_mib)
        for n in args.clients:
            runs: dict[str, list[dict[str, Any]]] = {which: [] for which in args.servers}
            for k in range(args.repeat):
                # Alternate the order: on a shared box, load drifts; neither server always goes first.
                for which in args.servers if k % 2 == 0 else reversed(args.servers):
                    print(f"--> {which}, {n} clients (run {k + 1}/{args.repeat}) ...", flush=True)
                    load = os.getloadavg()[0]
                    summary = summarise(run_storm(which, n, tree, work / f"r{k}", args.deadline, args.dnsmasq_ping))
                    summary["load"] = load
                    failures += summary["failed"]
                    runs[which].append(summary)
            report(n, runs)
    finally:
        if args.keep or failures:
            print(f"\nwork dir kept: {work} (server logs, per-client results in */result.json)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
