"""`sidus-appliance lab up|status|boot|down|demo`: the isolated lab from the command line.

`up` leaves a lab running (namespace `sidus-demo-srv`, the appliance in it, started by PID and
recorded in a state file) so that `boot` and `down` can act on it later; `demo` does the whole
tour in one process and always cleans up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import netns

from .lab import PREFIX, ApplianceProcess, Lab, run_udhcpc, write_lab_config

STATE_DIR = Path("/run/sidus-appliance-lab")
DEMO_TAG = "demo"


def _step(message: str) -> Callable[[str], None]:
    start = time.monotonic()
    print(f"==> {message} ...", flush=True)

    def done(result: str = "ok") -> None:
        print(f"    {result} ({time.monotonic() - start:.1f}s)", flush=True)

    return done


def _state_file() -> Path:
    return STATE_DIR / "state.json"


def _load_state() -> dict[str, Any] | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def prepare_workdir(workdir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Config for the lab, plus boot files and a test instance where their modules exist."""
    config_path = write_lab_config(workdir, overrides)
    return config_path


def cmd_up(args: argparse.Namespace) -> int:
    if _load_state():
        print("a lab is already up; `sidus-appliance lab down` first", file=sys.stderr)
        return 2
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sidus-lab-"))
    the_lab = Lab(tag=DEMO_TAG)
    the_lab.up()
    try:
        done = _step("starting the appliance in namespace " + the_lab.server_ns)
        config_path = prepare_workdir(workdir)
        appliance = ApplianceProcess(the_lab, config_path, workdir / "serve.log").start()
        done(f"pid {appliance.pid}, log {workdir / 'serve.log'}")
    except BaseException:
        the_lab.down()
        raise
    _state_file().write_text(
        json.dumps(
            {
                "server_ns": the_lab.server_ns,
                "pid": appliance.pid,
                "workdir": str(workdir),
                "config": str(config_path),
                "namespaces": [the_lab.server_ns],
            }
        )
    )
    print(f"lab up: config {config_path}; run clients with `ip netns exec {the_lab.server_ns} ...`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("no lab is up")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(state["pid"]), signal.SIGTERM)
    for name in state.get("namespaces", []):
        if name.startswith(f"{PREFIX}-") and name in netns.listnetns():
            netns.remove(name)
    _state_file().unlink()
    print(f"lab down: removed {', '.join(state.get('namespaces', []))}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("no lab is up")
        return 1
    print(json.dumps(state, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The newcomer's tour: an isolated lab, the appliance, real clients, a table; cleaned up."""
    workdir = Path(tempfile.mkdtemp(prefix="sidus-demo-"))
    rows: list[tuple[str, ...]] = []
    appliance: ApplianceProcess | None = None
    try:
        with Lab() as the_lab:
            done = _step(f"lab namespace {the_lab.server_ns}, bridge eth1 10.20.17.254/24")
            done()
            done = _step("starting sidus-appliance serve (config.example.yaml settings)")
            config_path = prepare_workdir(workdir)
            appliance = ApplianceProcess(the_lab, config_path, workdir / "serve.log").start()
            done(f"pid {appliance.pid}")
            for label, mac, arch in (
                ("udhcpc BIOS PXE", None, 0),
                ("udhcpc master", "08:00:aa:bb:cc:dd", 0),
                ("udhcpc UEFI x64", None, 7),
                ("udhcpc plain", None, None),
            ):
                done = _step(f"client {label}: DHCP")
                client = the_lab.add_client(mac=mac)
                env = run_udhcpc(client, workdir / f"c{len(rows)}", arch=arch)
                done(f"{client.mac} -> {env['ip']}")
                rows.append(
                    (
                        label,
                        client.mac,
                        env["ip"],
                        env.get("hostname", "-"),
                        env.get("boot_file", "-"),
                        "infinite" if env.get("lease") == "4294967295" else env.get("lease", "-"),
                    )
                )
            appliance.stop()
            print()
            _table(("client", "mac", "address", "name", "boot file", "lease"), rows)
            print()
            print("appliance log (DHCP decisions):")
            for line in appliance.log().splitlines():
                if " dhcp: " in line:
                    print("   ", line.split(" sidus.dhcp: ", 1)[-1])
        return 0
    finally:
        if appliance is not None:
            appliance.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lab", help="an isolated lab in network namespaces (demo, experiments)")
    lab_sub = parser.add_subparsers(dest="lab_command", required=True)
    p = lab_sub.add_parser("up", help="create the lab and start the appliance in it")
    p.add_argument("--workdir", help="where config, state and boot tree live (default: a temp dir)")
    p.set_defaults(func=cmd_up)
    lab_sub.add_parser("down", help="stop the appliance and remove the lab").set_defaults(func=cmd_down)
    lab_sub.add_parser("status", help="show the running lab").set_defaults(func=cmd_status)
    lab_sub.add_parser("demo", help="the full tour, cleaned up afterwards").set_defaults(func=cmd_demo)
