"""Attacks on the TFTP service of the real appliance: planted FIFOs and device nodes, a symlink
race out of an instance root, one host taking every transfer slot, netascii memory blow-up.

The "master" plants files in an instance root (on the host file system, as root on the master
would over NFS); clients attack from their own namespaces. Each test ends with a real client
being served DHCP, DNS and TFTP, and no traceback in the log (checks.assert_still_serves).
"""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidus_appliance.config import load_config
from sidus_appliance.lab import ApplianceProcess, ClientPort, Lab, end_process

from . import checks

pytestmark = pytest.mark.integration

SERVER = checks.SERVER
HERE = Path(__file__).parent
INSTANCE = {"instances": [{"name": "inst", "label": "x"}]}
CURLE_TFTP_PERM = 69  # curl: the server answered "access violation"
MIB = 1 << 20


def instance_boot(tmp_path: Path) -> Path:
    """`boot/` of instance `inst` under the workdir start_appliance uses, made before it starts."""
    boot = tmp_path / "appliance" / "nfsroot" / "inst" / "boot"
    boot.mkdir(parents=True)
    return boot


def tftp_root(appliance: ApplianceProcess) -> Path:
    return load_config(appliance.config_path).tftp.root


def curl(client: ClientPort, name: str, dest: str = "/dev/null") -> subprocess.CompletedProcess[str]:
    return client.run(["curl", "-sS", "--max-time", "10", "-o", dest, f"tftp://{SERVER}/{name}"], timeout=30)


def tool(client: ClientPort, *args: str, timeout: float = 60) -> dict[str, object]:
    result = client.run([sys.executable, str(HERE / "tftp_client.py"), *args], timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@contextlib.contextmanager
def fifo_writer(path: Path) -> Iterator[threading.Event]:
    """A writer blocked in open(O_WRONLY) on the FIFO: the event is set the moment anybody opens
    it for reading (that is what releases the writer), i.e. if the appliance ever opened it."""
    opened = threading.Event()
    fds: list[int] = []

    def write_side() -> None:
        fds.append(os.open(path, os.O_WRONLY))
        opened.set()

    thread = threading.Thread(target=write_side, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        seen = opened.is_set()
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # releases the writer if still blocked
        thread.join(5)
        for fd in (reader, *fds):
            os.close(fd)
        if seen:
            opened.set()


def test_fifo_and_device_node_in_instance_boot_are_refused_without_opening_them(
        lab: Lab, start_appliance, tmp_path: Path) -> None:
    """A FIFO opened for reading blocked the event loop (DHCP, DNS, TFTP and SIGTERM) until a
    writer came; a device node was opened as root before being refused."""
    boot = instance_boot(tmp_path)
    os.mkfifo(boot / "vmlinuz-fifo")
    os.mkfifo(boot / "vmlinuz-watched")
    os.mknod(boot / "vmlinuz-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    appliance = start_appliance(INSTANCE)
    client = lab.add_client(address="10.20.17.3/24")
    for name in ("vmlinuz-fifo@inst", "efi64/vmlinuz-fifo@inst", "vmlinuz-dev@inst"):
        result = curl(client, name)
        assert result.returncode == CURLE_TFTP_PERM, f"{name}: curl {result.returncode} {result.stderr!r}"
    with fifo_writer(boot / "vmlinuz-watched") as opened:
        result = curl(client, "vmlinuz-watched@inst")
        assert result.returncode == CURLE_TFTP_PERM, result.stderr
        assert not opened.is_set(), "the appliance opened the planted FIFO for reading"
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


@dataclasses.dataclass
class SwapRace:
    """The master's race: `boot/` of instance `inst` swapped with a link to `outside/` again and again."""

    boot: Path
    inside: bytes
    secret: bytes
    decoy: Path

    @classmethod
    def plant(cls, tmp_path: Path, secret: bytes) -> SwapRace:
        boot = instance_boot(tmp_path)
        (boot / "vmlinuz-x").write_bytes(b"inside kernel\n")
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "vmlinuz-x").write_bytes(secret)
        decoy = boot.parent / "boot.decoy"
        os.symlink(outside, decoy)
        return cls(boot, b"inside kernel\n", secret, decoy)

    def run(self, attack: Callable[[], dict[str, object]]) -> dict[bytes, int]:
        """Swap for 10 s while `attack` fetches; the payloads it got, checked: never the outside file."""
        racer = subprocess.Popen([sys.executable, str(HERE / "tftp_swap.py"), str(self.boot), str(self.decoy),
                                  "--seconds", "10"], stdout=subprocess.PIPE, text=True)
        try:
            result = attack()
            swaps, _ = racer.communicate(timeout=30)
        finally:
            end_process(racer)
        assert racer.returncode == 0 and int(swaps) > 0
        payloads = {bytes.fromhex(k): n for k, n in result["payloads"].items()}  # type: ignore[attr-defined]
        assert self.secret not in payloads, f"served the outside file {payloads[self.secret]} times: {result}"
        assert set(payloads) <= {self.inside} and payloads.get(self.inside, 0) > 0, result
        assert self.boot.is_dir() and not self.boot.is_symlink()
        return payloads


def test_symlink_swap_race_never_serves_a_byte_from_outside(lab: Lab, start_appliance, tmp_path: Path) -> None:
    """The master swaps `boot/` with a symlink to a directory outside the instance, atomically
    and again and again, while a client asks for boot/vmlinuz-x hundreds of times: a check of the
    path followed by an open of the path (realpath, then open) served the outside file."""
    race = SwapRace.plant(tmp_path, b"OUTSIDE SECRET, not for TFTP\n")
    appliance = start_appliance(INSTANCE)
    client = lab.add_client(address="10.20.17.3/24")
    outcome: dict[str, object] = {}

    def attack() -> dict[str, object]:
        outcome.update(tool(client, "fetch", SERVER, "vmlinuz-x@inst", "--count", "600", "--seconds", "10"))
        return outcome

    race.run(attack)
    assert outcome["errors"], f"the race was not exercised: {outcome}"
    # every refusal is a warning, but a flood of them is not a flood of log lines
    assert appliance.log().count("refused 'vmlinuz-x@inst'") <= 2
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def test_one_host_cannot_take_every_transfer_slot(lab: Lab, start_appliance, tmp_path: Path) -> None:
    """1,000 RRQs that never ACK, from one address, used to take all max_transfers (1000) for a
    minute: every other client got "server busy"."""
    appliance = start_appliance()
    (tftp_root(appliance) / "flood.bin").write_bytes(os.urandom(100_000))
    attacker = lab.add_client(address="10.20.17.4/24")
    command = [sys.executable, str(HERE / "tftp_client.py"), "flood", SERVER, "flood.bin", "--count", "1000",
               "--hold", "20"]
    flood = attacker.popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        summary = json.loads(flood.stdout.readline())  # printed once the first replies are in; it holds on
        victim = lab.add_client(address="10.20.17.7/24")
        dest = tmp_path / "victim.bin"
        result = curl(victim, "flood.bin", str(dest))
        assert result.returncode == 0, f"the other client was refused: {result.stderr!r}"
        assert filecmp.cmp(dest, tftp_root(appliance) / "flood.bin", shallow=False)
    finally:
        end_process(flood)
    replies = summary["replies"]
    per_client = load_config(appliance.config_path).tftp.max_transfers_per_client
    assert replies.get("data", 0) <= per_client, summary
    assert replies.get("error: too many transfers", 0) >= 1000 - per_client - summary["silent"], summary
    assert appliance.log().count("too many transfers") <= 2  # rate-limited, not one line per packet
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def test_idle_transfers_are_reclaimed_when_every_slot_is_taken(lab: Lab, start_appliance, tmp_path: Path) -> None:
    """Three hosts fill every slot (8 each, the per-client cap) with RRQs they never ACK: a new
    client gets the slot of the oldest of them instead of "server busy"."""
    appliance = start_appliance({"tftp": {"max_transfers": 24}})
    (tftp_root(appliance) / "idle.bin").write_bytes(os.urandom(50_000))
    holders = []
    for address in ("10.20.17.251/24", "10.20.17.252/24", "10.20.17.3/24"):
        attacker = lab.add_client(address=address)
        command = [sys.executable, str(HERE / "tftp_client.py"), "flood", SERVER, "idle.bin", "--count", "8",
                   "--hold", "20"]
        holders.append(attacker.popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        summaries = [json.loads(h.stdout.readline()) for h in holders]
        assert sum(s["replies"].get("data", 0) for s in summaries) == 24, summaries
        time.sleep(1.5)  # older than a retransmission interval: unanswered, fair game
        victim = lab.add_client(address="10.20.17.7/24")
        result = curl(victim, "idle.bin")
        assert result.returncode == 0, f"refused while idle transfers held every slot: {result.stderr!r}"
    finally:
        for holder in holders:
            end_process(holder)
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def netascii_text(size: int) -> bytes:
    line = b"menu line with a bare CR \r here, and a CR LF pair\r\n then LF\n"
    return (line * (size // len(line) + 1))[:size]


def test_netascii_requests_do_not_copy_whole_files(lab: Lab, start_appliance, tmp_path: Path) -> None:
    """60 netascii RRQs for an 8 MiB file took the appliance from 42 to 542 MB: each converted
    the whole file in memory. Converted block by block, memory stays flat; the bytes are exact."""
    appliance = start_appliance({"tftp": {"max_transfers_per_client": 100}})  # all 60 from one host
    text = netascii_text(8 * MIB)
    (tftp_root(appliance) / "text8m").write_bytes(text)
    before = vm_kib(appliance.pid, "VmHWM")
    attacker = lab.add_client(address="10.20.17.4/24")
    summary = tool(attacker, "flood", SERVER, "text8m", "--count", "60", "--mode", "netascii", "--hold", "1")
    assert summary["replies"] == {"data": 60}, summary  # every transfer admitted and started
    grown = vm_kib(appliance.pid, "VmHWM") - before
    assert grown < 100 * 1024, f"peak RSS grew by {grown // 1024} MiB for 60 netascii transfers"
    reader = lab.add_client(address="10.20.17.7/24")
    dest = tmp_path / "text8m.ascii"
    result = reader.run(["tftp", SERVER, "-m", "ascii", "-c", "get", "text8m", str(dest)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dest.read_bytes() == text  # tftp-hpa turns CR LF back into LF and CR NUL into CR
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
