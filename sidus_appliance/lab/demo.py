"""`sidus-appliance lab up|status|boot|down|demo`: the isolated lab (cli/lab.py parses the arguments).

`up` leaves a lab running (namespace `sidus-demo-srv`, the appliance in it, started by PID and
recorded in a state file) so that `boot` and `down` can act on it later; `demo` does the whole
tour in one process and always cleans up.
"""

from __future__ import annotations

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

from .. import bootfiles
from ..boot.kernels import kernel_name
from ..config import load_config, normalize_mac
from . import qemu, testkernel
from .browser import Browser, BrowserError
from .netns import PREFIX, ApplianceProcess, Lab, run_udhcpc, write_lab_config

STATE_DIR = Path("/run/sidus-appliance-lab")
DEMO_TAG = "demo"
INSTANCE = "lab"
BOOT_TIMEOUT = 240.0  # TCG on a busy 2-core box; a healthy boot takes 20-45 s
MASTER_MAC = "08:00:aa:bb:cc:dd"
PAGE_URL = "http://127.0.0.1:8067/"  # the management page, on the lab namespace's loopback
SCREENSHOT = Path("demo-status.png")  # written in the current directory
SECURE_MAC = "52:54:00:5a:00:04"  # a stock PC with Secure Boot on: its reservation names the signed chain
# A BIOS client gets the default (overlay) menu; the UEFI one is the master and gets read-write;
# the Secure Boot one boots shim -> GRUB -> the Debian-signed kernel.
DEMO_BOOTS: tuple[tuple[qemu.Firmware, str], ...] = (
    ("bios", "52:54:00:5a:00:01"), ("uefi", MASTER_MAC), ("uefi-secure", SECURE_MAC),
)
DEMO_HOSTS = [
    {"name": "master", "mac": MASTER_MAC, "address": "10.20.17.253", "profile": "master"},
    {"name": "secure-pc", "mac": SECURE_MAC, "address": "10.20.17.250", "boot_files": {7: "efi64/shimx64.efi"}},
]
DEMO_BOOTS_ALL = (*DEMO_BOOTS, ("uefi-native", "52:54:00:5a:00:03"))


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


def prepare_workdir(workdir: Path) -> tuple[Path, testkernel.TestKernel]:
    """The lab's config, a test instance (Debian kernel + marker initramfs) and staged loaders."""
    done = _step("test instance: Debian kernel + busybox marker initramfs (cached after the first run)")
    instance_root = workdir / "nfsroot" / INSTANCE
    kernel = testkernel.publish(instance_root)
    done(kernel_name(kernel.version, INSTANCE))
    overrides = {**testkernel.instance_overrides(instance_root, INSTANCE), "hosts": DEMO_HOSTS}
    config_path = write_lab_config(workdir, overrides)
    done = _step("boot loaders staged from Debian packages (pxelinux, syslinux-efi, signed shim and GRUB, iPXE)")
    report = bootfiles.install(load_config(config_path))
    if report.missing:
        raise SystemExit(f"boot loaders missing: {report}")
    done()
    return config_path, kernel


def up(workdir_arg: str | None = None) -> int:
    if _load_state():
        print("a lab is already up; `sidus-appliance lab down` first", file=sys.stderr)
        return 2
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(workdir_arg or tempfile.mkdtemp(prefix="sidus-lab-"))
    the_lab = Lab(tag=DEMO_TAG)
    the_lab.up()
    try:
        config_path, kernel = prepare_workdir(workdir)
        done = _step("starting the appliance in namespace " + the_lab.server_ns)
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
                "kernel": str(kernel.vmlinuz),
                "temporary": not workdir_arg,
            }
        )
    )
    print(f"lab up: config {config_path}; boot a client with `sidus-appliance lab boot --firmware bios`")
    return 0


def down() -> int:
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
    workdir = Path(state.get("workdir", ""))
    if state.get("temporary") and workdir.name.startswith("sidus-lab-"):
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"lab down: removed {', '.join(state.get('namespaces', []))}")
    return 0


def _boot_one(the_lab: Lab, firmware: qemu.Firmware, mac: str, workdir: Path, kernel: Path) -> qemu.BootResult:
    """One QEMU client on a fresh tap port of the lab bridge, booted to its marker line."""
    tap = the_lab.add_tap()
    try:
        return qemu.boot(firmware, mac, tap, workdir / f"qemu-{firmware}-{mac.replace(':', '')}",
                         the_lab.server_ns, timeout=BOOT_TIMEOUT, kernel=kernel)  # fmt: skip
    finally:
        the_lab.remove_tap(tap)


def boot(firmware: qemu.Firmware, mac_arg: str) -> int:
    state = _load_state()
    if state is None:
        print("no lab is up: `sidus-appliance lab up` first", file=sys.stderr)
        return 2
    the_lab = Lab(tag=DEMO_TAG)  # the running lab: same names, nothing created here
    mac = normalize_mac(mac_arg)
    done = _step(f"booting a {firmware} client {mac} (QEMU, serial log under {state['workdir']})")
    result = _boot_one(the_lab, firmware, mac, Path(state["workdir"]), Path(state["kernel"]))
    done(result.summary())
    _table(tuple(result.row()), [tuple(result.row().values())])
    return 0 if result.ok else 1


def status() -> int:
    state = _load_state()
    if state is None:
        print("no lab is up")
        return 1
    print(json.dumps(state, indent=2))
    return 0


def demo(boots: tuple[tuple[qemu.Firmware, str], ...] = DEMO_BOOTS) -> int:
    """The newcomer's tour: an isolated lab, the appliance, real DHCP clients and real PXE
    firmware booting from it, a table; everything removed afterwards, also on failure."""
    workdir = Path(tempfile.mkdtemp(prefix="sidus-demo-"))
    appliance: ApplianceProcess | None = None
    failures = 0
    try:
        with Lab() as the_lab:
            done = _step(f"lab namespace {the_lab.server_ns}, bridge eth1 10.20.17.254/24")
            done()
            config_path, kernel = prepare_workdir(workdir)
            done = _step("starting sidus-appliance serve (config.example.yaml settings + the test instance)")
            appliance = ApplianceProcess(the_lab, config_path, workdir / "serve.log").start()
            done(f"pid {appliance.pid}")

            rows: list[tuple[str, ...]] = []
            for label, mac, arch in (("udhcpc, BIOS PXE", None, 0), ("udhcpc, plain (no PXE)", None, None)):
                done = _step(f"real DHCP client: {label}")
                client = the_lab.add_client(mac=mac)
                env = run_udhcpc(client, workdir / f"c{len(rows)}", arch=arch)
                done(f"{client.mac} -> {env['ip']}")
                lease = "infinite" if env.get("lease") == "4294967295" else env.get("lease", "-")
                rows.append((label, client.mac, env["ip"], env.get("hostname", "-"), env.get("boot_file", "-"), lease))
            print()
            _table(("DHCP client", "mac", "address", "name", "boot file", "lease"), rows)
            print()

            boot_rows: list[tuple[str, ...]] = []
            for firmware, mac in boots:
                done = _step(f"QEMU {firmware} client {mac}: PXE boot to the marker line (TCG: ~20-45 s)")
                result = _boot_one(the_lab, firmware, mac, workdir, kernel.vmlinuz)
                done(result.summary())
                failures += not result.ok
                boot_rows.append(tuple(result.row().values()))
                header = tuple(result.row())
            print()
            if boot_rows:
                _table(header, boot_rows)
            print()
            _status_page(the_lab, [mac for _, mac in boots], SCREENSHOT)
            appliance.stop()
            print()
            print("appliance log (DHCP decisions, TFTP transfers, IPv6 RAs):")
            for line in appliance.log().splitlines():
                if (" dhcp: " in line and ("ACK" in line or "NAK" in line)) or " sent " in line:
                    print("   ", line.split(": ", 1)[-1])
        return 1 if failures else 0
    finally:
        if appliance is not None:
            appliance.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _status_page(the_lab: Lab, macs: list[str], path: Path) -> None:
    """The management page after the boots, in headless Chromium inside the lab, as a PNG."""
    done = _step(f"management page {PAGE_URL} (inside the lab's namespace) in headless Chromium")
    try:
        with Browser(netns=the_lab.server_ns) as browser:
            browser.open(PAGE_URL)
            for mac in macs:
                browser.wait_for(f"document.querySelector('tr[data-mac=\"{mac}\"]') !== null", timeout=30)
            if macs:
                browser.evaluate(f"document.querySelector('tr[data-mac=\"{macs[0]}\"]').click()")
                browser.wait_for(f"document.querySelector('#timeline[data-mac=\"{macs[0]}\"]') !== null", timeout=10)
            browser.screenshot(path)
    except (BrowserError, TimeoutError, OSError) as exc:
        done(f"no screenshot: {exc}")
        return
    done(f"wrote {path}")
    print(f"    the page: {PAGE_URL} (ip netns exec {the_lab.server_ns} ...; `sidus-appliance lab up` keeps a lab"
          " running, `sidus-appliance status` prints the same table)")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
