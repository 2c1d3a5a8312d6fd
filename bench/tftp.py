#!/usr/bin/env python3
"""TFTP benchmark: sidus-appliance, dnsmasq's TFTP and tftpd-hpa, same files, same clients, one run.

A lab made for this run (server namespace with bridge `eth1` = 10.20.17.254/24, MTU 1500,
one client namespace at 10.20.17.100/24; both removed at the end whatever happens). The
three servers run side by side in the server namespace, each on port 69 of its own address
on `eth1` (ours .254, dnsmasq .251, tftpd-hpa .250), serving the same directory, so that the
measurements can alternate server by server: on a shared 2-core box the load changes by the
second, and alternating keeps the comparison fair.
- ours: the real `sidus-appliance serve` (DHCP and DNS off), tftp.max_blksize 65464 so that
  it may, like tftpd-hpa, use blocks larger than the MTU (IP fragments) when asked;
- dnsmasq: `--port=0 --enable-tftp` (it caps blksize at the interface MTU itself);
- tftpd-hpa: `in.tftpd -L` (standalone, one forked process per transfer).
Figures (32 MiB file, written to /dev/null by the client):
- MiB/s for one curl client at --tftp-blksize 512, 1468 and 8192;
- MiB/s for one atftp client with `--option "windowsize 8"` at blksize 512 and 1468 (servers
  without RFC 7440 ignore the option and run lock-step);
- wall time for 20 curl clients (blksize 1468) fetching the 32 MiB file at once.
Each figure is the best of --rounds runs (default 3), the servers taking turns. Ratios are
ours / the best of the two C servers (>1: we are faster; for the 20-client wall time, their
time / ours).

    sudo .venv/bin/python bench/tftp.py                 # ~3-4 min on a 2-core box
    sudo .venv/bin/python bench/tftp.py --rounds 1 --skip-concurrent   # quick look
    sudo .venv/bin/python bench/tftp.py --servers ours --profile   # where our time goes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import NsProcess, load, require_root
from sidus_appliance.lab import Lab, write_lab_config

SERVER_IP = "10.20.17.254"
ADDRESSES = {"ours": "10.20.17.254", "dnsmasq": "10.20.17.251", "tftpd-hpa": "10.20.17.250"}
CLIENT_ADDRESS = "10.20.17.100/24"
MIB = 1 << 20
FILE = "big32"
SERVERS = ("ours", "dnsmasq", "tftpd-hpa")
CURL_SIZES = (512, 1468, 8192)
WINDOW_SIZES = (512, 1468)
CONCURRENT = 20


@dataclass
class Figures:
    name: str
    curl: dict[int, float] = field(default_factory=dict)  # blksize → MiB/s
    window: dict[int, float] = field(default_factory=dict)  # blksize → MiB/s (atftp windowsize 8)
    concurrent: float = 0.0  # seconds for 20 clients
    errors: list[str] = field(default_factory=list)


def listening(namespace: str, ip: str) -> bool:
    out = subprocess.run(["ip", "netns", "exec", namespace, "ss", "-Hlun", f"src {ip}:69"],
                         capture_output=True, text=True, timeout=10).stdout
    return bool(out.strip())


def start_ours(lab: Lab, work: Path, files: Path, profile: bool) -> NsProcess:
    config = write_lab_config(work, {
        "address": f"{ADDRESSES['ours']}/24",
        "dhcp": {"enabled": False}, "dns": {"enabled": False},
        "tftp": {"root": str(files), "max_blksize": 65464, "max_transfers": 1000,
                 "max_transfers_per_client": 1000},  # the 20 clients share one address here
    })
    command = [sys.executable]
    if profile:
        command += ["-m", "cProfile", "-o", str(work / "serve.prof")]
    command += ["-m", "sidus_appliance.cli", "--log-level", "INFO", "serve", "--config", str(config)]
    process = NsProcess(lab.server_ns, command, work / "serve.log")
    process.wait_ready(lambda: "ready: serving" in process.log(), timeout=60)
    return process


def start_dnsmasq(lab: Lab, work: Path, files: Path) -> NsProcess:
    command = [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
        f"--tftp-root={files}", f"--listen-address={ADDRESSES['dnsmasq']}", "--bind-interfaces", "--pid-file=",
        "--user=root", "--log-facility=-", "--tftp-max=100",
    ]
    process = NsProcess(lab.server_ns, command, work / "dnsmasq.log")
    process.wait_ready(lambda: listening(lab.server_ns, ADDRESSES["dnsmasq"]), timeout=20)
    return process


def start_tftpd_hpa(lab: Lab, work: Path, files: Path) -> NsProcess:
    command = ["in.tftpd", "-L", "-a", f"{ADDRESSES['tftpd-hpa']}:69", "-u", "root", "-s", str(files)]
    process = NsProcess(lab.server_ns, command, work / "tftpd-hpa.log")
    process.wait_ready(lambda: listening(lab.server_ns, ADDRESSES["tftpd-hpa"]), timeout=20)
    return process


def curl_mibps(lab: Lab, ip: str, blksize: int, size: int) -> float:
    client = lab.clients[0]
    command = ["curl", "-sS", "--tftp-blksize", str(blksize), "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
               f"tftp://{ip}/{FILE}"]
    result = client.run(command, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"curl blksize {blksize}: exit {result.returncode} {result.stderr.strip()}")
    got, seconds = result.stdout.split()
    if int(got) != size:
        raise RuntimeError(f"curl blksize {blksize}: got {got} bytes of {size}")
    return size / MIB / float(seconds)


def atftp_mibps(lab: Lab, ip: str, blksize: int, size: int, work: Path) -> float:
    client = lab.clients[0]
    dest = work / "atftp.out"  # atftp insists on a regular file
    command = ["atftp", "--option", "windowsize 8", "--option", f"blksize {blksize}", "-g", "-r", FILE,
               "-l", str(dest), ip]
    started = time.monotonic()
    result = client.run(command, timeout=300)
    seconds = time.monotonic() - started
    got = dest.stat().st_size if dest.exists() else -1
    dest.unlink(missing_ok=True)
    if result.returncode != 0 or got != size:
        raise RuntimeError(f"atftp windowsize 8 blksize {blksize}: exit {result.returncode}, {got} bytes "
                           f"{(result.stdout + result.stderr).strip()[-200:]}")
    return size / MIB / seconds


def concurrent_seconds(lab: Lab, ip: str, size: int) -> float:
    client = lab.clients[0]
    command = ["curl", "-sS", "--tftp-blksize", "1468", "-o", "/dev/null", "-w", "%{size_download}",
               f"tftp://{ip}/{FILE}"]
    started = time.monotonic()
    procs = [client.popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(CONCURRENT)]
    problems = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or out.strip() != str(size):
            problems.append(f"exit {proc.returncode} got {out.strip()} {err.strip()}")
    seconds = time.monotonic() - started
    if problems:
        raise RuntimeError(f"{len(problems)}/{CONCURRENT} clients failed: {problems[0]}")
    return seconds


def start(name: str, lab: Lab, work: Path, files: Path, args: argparse.Namespace) -> NsProcess:
    if name == "ours":
        return start_ours(lab, work, files, args.profile)
    if name == "dnsmasq":
        return start_dnsmasq(lab, work, files)
    return start_tftpd_hpa(lab, work, files)


def measure(results: dict[str, Figures], lab: Lab, work: Path, size: int, args: argparse.Namespace) -> None:
    """One round: every figure for every server, the servers taking turns figure by figure."""
    names = list(results)

    def each(record: Any, what: str, run: Any) -> None:
        for name in names:
            try:
                record(results[name], run(ADDRESSES[name]))
            except RuntimeError as exc:
                results[name].errors.append(f"{name}: {what}: {exc}")

    for name in names:  # warm-up, not counted: page cache, ARP, first fork
        with contextlib.suppress(RuntimeError):
            curl_mibps(lab, ADDRESSES[name], 1468, size)
    for blksize in CURL_SIZES:
        each(lambda f, v, b=blksize: f.curl.__setitem__(b, max(v, f.curl.get(b, 0.0))),
             f"curl {blksize}", lambda ip, b=blksize: curl_mibps(lab, ip, b, size))
    for blksize in WINDOW_SIZES:
        each(lambda f, v, b=blksize: f.window.__setitem__(b, max(v, f.window.get(b, 0.0))),
             f"atftp {blksize}", lambda ip, b=blksize: atftp_mibps(lab, ip, b, size, work))
    if not args.skip_concurrent:
        each(lambda f, v: setattr(f, "concurrent", min(v, f.concurrent) if f.concurrent else v),
             "20 clients", lambda ip: concurrent_seconds(lab, ip, size))


def report(results: dict[str, Figures]) -> str:
    names = list(results)
    theirs = [n for n in names if n != "ours"]
    lines = ["", f"TFTP, 32 MiB file, one client unless said, MiB/s ({load()})", ""]
    header = f"  {'':<28}" + "".join(f"{n:>12}" for n in names)
    header += "   ours/best C" if "ours" in results and theirs else ""
    lines.append(header)

    def row(label: str, get: object, higher_better: bool = True, unit: str = "") -> None:
        values = {n: get(results[n]) for n in names}  # type: ignore[operator]
        text = f"  {label:<28}" + "".join(f"{(f'{v:.1f}{unit}' if v else '-'):>12}" for v in values.values())
        best = [values[n] for n in theirs if values[n]]
        if "ours" in values and values["ours"] and best:
            ratio = values["ours"] / max(best) if higher_better else min(best) / values["ours"]
            text += f"   {ratio:.2f}x"
        lines.append(text)

    for blksize in CURL_SIZES:
        row(f"curl blksize {blksize}", lambda f, b=blksize: f.curl.get(b, 0.0))
    for blksize in WINDOW_SIZES:
        row(f"atftp windowsize 8, bs {blksize}", lambda f, b=blksize: f.window.get(b, 0.0))
    row(f"{CONCURRENT} clients x 32 MiB, wall", lambda f: f.concurrent, higher_better=False, unit=" s")
    errors = [e for f in results.values() for e in f.errors]
    if errors:
        lines += ["", "errors:"] + [f"  {e}" for e in errors]
    lines.append("")
    lines.append("  windowsize rows: dnsmasq and tftpd-hpa do not implement RFC 7440 (they run lock-step);")
    lines.append("  dnsmasq caps blksize at the MTU (1468 here), so its 8192 row is a 1468 transfer.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    parser.add_argument("--rounds", type=int, default=3, help="repeat, alternating the order; keep the best")
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--skip-concurrent", action="store_true", help="leave out the 20-client run")
    parser.add_argument("--profile", action="store_true", help="run ours under cProfile and print the top")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if any(n not in SERVERS for n in names):
        parser.error("servers: " + ", ".join(SERVERS))
    tools = ["curl", "atftp"] + (["dnsmasq"] if "dnsmasq" in names else []) + (
        ["in.tftpd"] if "tftpd-hpa" in names else [])
    require_root(tools)

    work_root = Path(tempfile.mkdtemp(prefix="sidus-bench-tftp-"))
    os.chmod(work_root, 0o755)
    files = work_root / "files"
    files.mkdir()
    size = args.size_mib * MIB
    (files / FILE).write_bytes(os.urandom(size))
    results = {n: Figures(n) for n in names}
    processes: list[NsProcess] = []
    try:
        with Lab() as lab:
            lab.add_client(address=CLIENT_ADDRESS)
            for name in names:
                if ADDRESSES[name] != SERVER_IP:
                    add = ["ip", "addr", "add", f"{ADDRESSES[name]}/24", "dev", lab.interface]
                    subprocess.run(lab.server_argv(add), check=True)
            try:
                for name in names:
                    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_root))
                    processes.append(start(name, lab, work, files, args))
                for round_number in range(args.rounds):
                    print(f"round {round_number + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                    measure(results, lab, work_root, size, args)
                    names.reverse()  # the other one goes first next time
                    results = {n: results[n] for n in names}
            finally:
                for process in processes:
                    process.stop()
            for log_path in work_root.glob("ours-*/serve.log"):
                resent = [int(m) for m in re.findall(r" (\d+) resent\)", log_path.read_text(errors="replace"))]
                print(f"ours: {len(resent)} transfers completed, {sum(resent)} windows resent "
                      f"(timeouts or partial ACKs)", file=sys.stderr)
            if args.profile:
                for prof in work_root.glob("ours-*/serve.prof"):
                    pstats.Stats(str(prof)).sort_stats("tottime").print_stats(20)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    results = {n: results[n] for n in SERVERS if n in results}
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
