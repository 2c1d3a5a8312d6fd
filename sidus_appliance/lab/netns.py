"""An isolated lab: network namespaces, a bridge, veth and tap ports (demo, tests, benches).

The appliance never serves DHCP on a real network from here: everything lives in namespaces
this module creates and always removes (context manager, plus a sweep of namespaces left by
runs that were SIGKILLed). Namespace names carry the creating PID so that concurrent runs
(several test sessions, a bench beside a test) never collide, and so that a sweep removes
only namespaces whose creator is dead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import NetNS, netns

from .. import resources
from ..resources import data_path

log = logging.getLogger("sidus.lab")

PREFIX = "sidus"
BRIDGE_MAC = "02:53:49:44:55:fe"  # locally administered, fixed for the lab's whole life
_counter = itertools.count(1)


@dataclass
class ClientPort:
    """A client namespace whose `eth0` is a veth port on the lab bridge."""

    namespace: str
    interface: str
    mac: str
    address: IPv4Interface | None = None

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *command]

    def run(
        self, command: Sequence[str], timeout: float = 60, check: bool = False, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            **kwargs,  # type: ignore[arg-type]
        )

    def popen(self, command: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(command), text=True, **kwargs)  # type: ignore[call-overload]


@dataclass
class Lab:
    """Server namespace with a bridge named like the config's interface, carrying `address`."""

    interface: str = "eth1"
    address: IPv4Interface = field(default_factory=lambda: IPv4Interface("10.20.17.254/24"))
    tag: str = ""
    server_ns: str = ""
    clients: list[ClientPort] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.address = IPv4Interface(self.address)
        self.tag = self.tag or f"{os.getpid()}x{next(_counter)}"
        self.server_ns = f"{PREFIX}-{self.tag}-srv"

    # -- life cycle ---------------------------------------------------------------------

    def up(self) -> Lab:
        sweep_stale()
        self._create_ns(self.server_ns)
        with NetNS(self.server_ns) as ns:
            _link_up(ns, "lo")
            ns.link("add", ifname=self.interface, kind="bridge")
            # Forward-delay 0: ports forward at once, as a PXE client will not wait 15 s.
            index = ns.link_lookup(ifname=self.interface)[0]
            ns.link("set", index=index, kind="bridge", br_forward_delay=0)
            # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports, so plugging in
            # a client can change the appliance's MAC under the ARP caches of the other clients
            # (their packets to 10.20.17.254 then vanish until the entry goes stale).
            ns.link("set", index=index, address=BRIDGE_MAC)
            ns.addr("add", index=index, address=str(self.address.ip), prefixlen=self.address.network.prefixlen)
            ns.link("set", index=index, state="up")
        log.info("lab %s: bridge %s %s", self.server_ns, self.interface, self.address)
        return self

    def down(self) -> None:
        for name in reversed(self._namespaces):
            with contextlib.suppress(Exception):
                netns.remove(name)
        self._namespaces.clear()
        self.clients.clear()
        self.taps.clear()

    def __enter__(self) -> Lab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- ports --------------------------------------------------------------------------

    def add_client(self, mac: str | None = None, address: str | None = None) -> ClientPort:
        """A new client namespace plugged into the bridge; `address` (CIDR) is set statically."""
        n = len(self.clients) + 1
        name = f"{PREFIX}-{self.tag}-c{n}"
        self._create_ns(name)
        port = f"vc{n}"
        with NetNS(self.server_ns) as ns:
            ns.link("add", ifname=port, kind="veth", peer={"ifname": f"{port}p"})
            peer = ns.link_lookup(ifname=f"{port}p")[0]
            ns.link("set", index=peer, net_ns_fd=name)
            bridge = ns.link_lookup(ifname=self.interface)[0]
            index = ns.link_lookup(ifname=port)[0]
            ns.link("set", index=index, master=bridge)
            ns.link("set", index=index, state="up")
        with NetNS(name) as cns:
            _link_up(cns, "lo")
            index = cns.link_lookup(ifname=f"{port}p")[0]
            changes: dict[str, object] = {"ifname": "eth0"}
            if mac:
                changes["address"] = mac
            cns.link("set", index=index, **changes)
            cns.link("set", index=index, state="up")
            if address:
                iface = IPv4Interface(address)
                cns.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            actual_mac = cns.get_links(index)[0].get_attr("IFLA_ADDRESS")
        client = ClientPort(name, "eth0", actual_mac, IPv4Interface(address) if address else None)
        self.clients.append(client)
        return client

    def add_tap(self) -> str:
        """A tap port on the bridge, for a QEMU guest started in the server namespace.

        The name is the first free `tapN` in the namespace, so that several processes (`lab
        boot` against a lab that `lab up` made) can add ports to the same bridge."""
        with NetNS(self.server_ns) as ns:
            taken = {link.get_attr("IFLA_IFNAME") for link in ns.get_links()}
        name = next(f"tap{n}" for n in itertools.count() if f"tap{n}" not in taken)
        subprocess.run(self.server_argv(["ip", "tuntap", "add", "dev", name, "mode", "tap"]), check=True)
        subprocess.run(self.server_argv(["ip", "link", "set", name, "master", self.interface, "up"]), check=True)
        self.taps.append(name)
        return name

    def remove_tap(self, name: str) -> None:
        subprocess.run(self.server_argv(["ip", "link", "del", name]), check=False, capture_output=True)
        if name in self.taps:
            self.taps.remove(name)

    def server_argv(self, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns, *command]

    def _create_ns(self, name: str) -> None:
        netns.create(name)
        self._namespaces.append(name)


def end_process(process: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """End a process we started, by PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _link_up(ns: NetNS, ifname: str) -> None:
    ns.link("set", index=ns.link_lookup(ifname=ifname)[0], state="up")


def _owner_alive(name: str) -> bool:
    parts = name.split("-")
    if len(parts) < 3 or parts[0] != PREFIX:
        return True  # not ours: never touch it
    pid = parts[1].split("x")[0]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove lab namespaces whose creating process is gone (a SIGKILLed run)."""
    removed = []
    for name in netns.listnetns():
        if name.startswith(f"{PREFIX}-") and not _owner_alive(name):
            with contextlib.suppress(Exception):
                netns.remove(name)
                removed.append(name)
    if removed:
        log.info("removed stale lab namespaces: %s", " ".join(removed))
    return removed


@contextlib.contextmanager
def lab(**kwargs: object) -> Iterator[Lab]:
    with Lab(**kwargs) as the_lab:  # type: ignore[arg-type]
        yield the_lab


# --------------------------------------------------------------------------- the appliance


EXAMPLE_CONFIG = data_path(*resources.EXAMPLE_CONFIG)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_lab_config(workdir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The example config, with state and boot tree moved under `workdir`, plus overrides."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data = _merge(
        data,
        {
            "state_dir": str(workdir / "state"),
            "tftp": {"root": str(workdir / "tftp")},
            "nfs": {"instances_dir": str(workdir / "nfsroot"), "exports_file": str(workdir / "sidus.exports")},
        },
    )
    data = _merge(data, overrides or {})
    # serve refuses a config whose state_dir or boot tree is missing (it creates neither);
    # instance roots are the test's business: one may want a missing root.
    Path(data["state_dir"]).mkdir(parents=True, exist_ok=True)
    Path(data["tftp"]["root"]).mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class ApplianceProcess:
    """`sidus-appliance serve` running in the lab's server namespace, started and ended by PID."""

    def __init__(self, the_lab: Lab, config_path: Path, log_path: Path) -> None:
        self.lab = the_lab
        self.config_path = config_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def serve_argv(self) -> list[str]:
        """`serve` with this interpreter (so a test runs the code it imports)."""
        return [sys.executable, "-m", "sidus_appliance.cli", "--log-level", "DEBUG", "serve",
                "--config", str(self.config_path)]

    def argv(self) -> list[str]:
        """The whole command line, namespace entry included."""
        return self.lab.server_argv(self.serve_argv())

    def environment(self) -> dict[str, str] | None:
        return None  # ours

    def start(self, timeout: float = 30) -> ApplianceProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(self.argv(), stdout=log_file, stderr=subprocess.STDOUT,
                                            env=self.environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready: serving" in self.log(since_start=True):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"appliance exited with {self.process.returncode}:\n{self.log(since_start=True)}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"appliance not ready after {timeout}s:\n{self.log(since_start=True)}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return data[self._log_offset :].decode(errors="replace") if since_start else data.decode(errors="replace")

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 10) -> int | None:
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log_text = self.log()
            if text in log_text:
                return log_text
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in appliance log after {timeout}s:\n{self.log()}")


# --------------------------------------------------------------------------- real DHCP clients

# The client scripts record what the client was told, one KEY=VALUE a line, and configure
# nothing: the namespace's address is the test's business, not the client's.
_RECORD_SCRIPT = """#!/bin/sh
env | sort > "{out}.$$"
mv "{out}.$$" "{out}.${{reason:-$1}}"
exit 0
"""
# With configure=True, udhcpc's script also puts the address on the interface, as a real
# client would, so that DNS and TFTP can be reached from the namespace afterwards.
_CONFIGURE_SCRIPT = """#!/bin/sh
if [ "$1" = bound ] || [ "$1" = renew ]; then
  ip addr flush dev "$interface"
  ip addr add "$ip/${{mask:-24}}" dev "$interface"
fi
env | sort > "{out}.$$"
mv "{out}.$$" "{out}.${{reason:-$1}}"
exit 0
"""


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


def run_udhcpc(
    client: ClientPort,
    workdir: Path,
    arch: int | None = None,
    vendor: str | None = None,
    hostname: str | None = None,
    timeout: float = 30,
    extra: Sequence[str] = (),
    configure: bool = False,
) -> dict[str, str]:
    """busybox udhcpc, once, in the client's namespace; returns the script's environment on `bound`."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "udhcpc"
    script = workdir / "udhcpc.sh"
    script.write_text((_CONFIGURE_SCRIPT if configure else _RECORD_SCRIPT).format(out=out))
    script.chmod(0o755)
    command = ["udhcpc", "-i", client.interface, "-f", "-q", "-n", "-t", "5", "-T", "2", "-s", str(script)]
    if arch is not None:
        command += ["-x", f"0x5d:{arch:04x}"]
    if vendor:
        command += ["-V", vendor]
    if hostname:
        command += ["-x", f"hostname:{hostname}"]
    command += list(extra)
    result = client.run(command, timeout=timeout)
    bound = Path(f"{out}.bound")
    if result.returncode != 0 or not bound.exists():
        raise RuntimeError(f"udhcpc got no lease (rc {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return _read_env(bound)


def run_dhclient(
    client: ClientPort,
    workdir: Path,
    arch: int | None = None,
    hostname: str | None = None,
    timeout: float = 30,
    release: bool = False,
) -> dict[str, str]:
    """isc dhclient, one exchange, foreground; returns the script's environment on BOUND/REBOOT."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "dhclient"
    script = workdir / "dhclient.sh"
    script.write_text(_RECORD_SCRIPT.format(out=out))
    script.chmod(0o755)
    conf = [
        "option pxe-client-arch code 93 = unsigned integer 16;",
        "option tftp-server code 66 = text;",
        "option boot-file code 67 = text;",
        "request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name,"
        " tftp-server, boot-file;",
        "timeout 20;",
        "retry 1;",
    ]
    if arch is not None:
        conf.append(f"send pxe-client-arch {arch};")
        conf.append(f'send vendor-class-identifier "PXEClient:Arch:{arch:05d}:UNDI:002001";')
    if hostname:
        conf.append(f'send host-name "{hostname}";')
    (workdir / "dhclient.conf").write_text("\n".join(conf) + "\n")
    lease_file = workdir / "dhclient.leases"
    base = [
        "dhclient",
        "-cf",
        str(workdir / "dhclient.conf"),
        "-lf",
        str(lease_file),
        "-pf",
        str(workdir / "dhclient.pid"),
        "-sf",
        str(script),
    ]
    # -1: try once; -d: foreground, so we own the process. dhclient stays to renew once
    # bound, so we end it ourselves when the script has recorded BOUND.
    process = client.popen(
        [*base, "-1", "-d", "-v", client.interface], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout
    bound = None
    try:
        while time.monotonic() < deadline and bound is None:
            for reason in ("BOUND", "REBOOT", "RENEW"):
                candidate = Path(f"{out}.{reason}")
                if candidate.exists():
                    bound = candidate
                    break
            if process.poll() is not None and bound is None:
                break
            time.sleep(0.05)
    finally:
        process.terminate()
        try:
            output = process.communicate(timeout=5)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
    if bound is None:
        raise RuntimeError(f"dhclient got no lease:\n{output}")
    env = _read_env(bound)
    if release:
        client.run([*base, "-r", client.interface], timeout=timeout)
    return env
