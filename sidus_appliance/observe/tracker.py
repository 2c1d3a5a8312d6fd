"""The boot tracker, sans-IO: DHCP and transfer events in, each machine's boot out.

No clock, no I/O, no logging: times come in the events and in `poll(now)`, so a whole classroom
boot is unit-tested by feeding events. The management page, its server-sent events, the metrics
and `sidus-appliance status` read `snapshot()`, `changed_since()` and the counters.

A boot runs through PHASES: PXE_DHCP (the firmware's or iPXE's DHCP), LOADER (boot loaders and
their modules), MENU (generated configs), KERNEL, INITRD, SYSTEM_DHCP (the booted system's own
DHCP; its ACK means BOOTED). A phase records its first start, last end, bytes sent, retransmits
and transport; a phase met again (a menu read twice, iPXE's DHCP after the firmware's) merges.
A transfer spans [time - seconds, time]: its event comes when it ends.

Bounded memory, because every event may stem from a crafted packet: at most `max_machines` MACs
(the least recently seen is forgotten), `boots_kept` boots each, six phases a boot; a machine
exists only once a network-boot client was answered (OFFER or ACK), so DROPs, IGNOREs and the
plain DHCP of machines booted before the appliance started create nothing.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from .events import DhcpEvent, TransferEvent, Transport


class Phase(StrEnum):
    PXE_DHCP = "pxe-dhcp"
    LOADER = "loader"
    MENU = "menu"
    KERNEL = "kernel"
    INITRD = "initrd"
    SYSTEM_DHCP = "system-dhcp"


PHASES = tuple(Phase)  # order on the page
_RANK = {phase: rank for rank, phase in enumerate(PHASES)}


class State(StrEnum):
    BOOTING = "booting"
    BOOTED = "booted"
    STUCK = "stuck"


# ---------------------------------------------------------------------------------------------
# Everything that affects the state machine lives here: what an event means (Signal, phase_of),
# where the machine's current boot stands (Stage), and the table of what follows (TRANSITIONS).

BOOT_CLIENTS = frozenset({"pxe", "ipxe", "http"})  # DhcpEvent.client of network-boot firmware/iPXE
ANSWERED = frozenset({"OFFER", "ACK"})  # DHCP actions that answer a client (the others change nothing)


class Signal(Enum):
    BOOT_DHCP = "boot-dhcp"  # a pxe/ipxe/http client was answered (OFFER, ACK)
    TRANSFER = "transfer"  # a loader, menu, kernel or initrd transfer ended, complete or not
    SYSTEM_OFFER = "system-offer"  # a plain client (the booted system) was offered an address
    SYSTEM_ACK = "system-ack"  # ... and acknowledged
    OTHER = "other"  # any other DHCP event: NAK, IGNORE, DROP, RELEASE, QUARANTINE


class Stage(Enum):
    NONE = "none"  # the machine is not tracked (yet)
    EARLY = "early"  # booting, nothing past the loader
    MENU = "menu"  # booting, a menu read, no kernel yet
    LATE = "late"  # booting, kernel or initrd (or the system's DHCP) reached
    STUCK = "stuck"  # stuck before the kernel
    STUCK_LATE = "stuck-late"  # stuck after the kernel or initrd
    BOOTED = "booted"


class Effect(Enum):
    NEW_BOOT = "new-boot"  # start a boot at PXE_DHCP; one still BOOTING is left STUCK where it stopped
    PROGRESS = "progress"  # record the event in its phase; the boot is BOOTING (again, if it was STUCK)
    FINISH = "finish"  # record it in SYSTEM_DHCP; the boot is BOOTED
    SEEN = "seen"  # last_seen and identity only (nothing at all for an untracked machine)


_N, _P, _F, _S = Effect.NEW_BOOT, Effect.PROGRESS, Effect.FINISH, Effect.SEEN
_STAGES = (Stage.NONE, Stage.EARLY, Stage.MENU, Stage.LATE, Stage.STUCK, Stage.STUCK_LATE, Stage.BOOTED)
# Why: a PXE DHCP past the loader, or after a boot that ended (booted or stuck), is a reboot; before
# it, iPXE chain-loaded by the firmware doing its own DHCP. Transfers of a booted system (a script
# fetching a file over HTTP) are not a boot. The system's DHCP counts only after a kernel: a plain
# ACK earlier is a machine that left for its local disk.
_TABLE = {
    #                    NONE  EARLY MENU  LATE  STUCK STUCK_LATE BOOTED
    Signal.BOOT_DHCP:    (_N,  _P,   _N,   _N,   _N,   _N,        _N),
    Signal.TRANSFER:     (_S,  _P,   _P,   _P,   _P,   _P,        _S),
    Signal.SYSTEM_OFFER: (_S,  _S,   _S,   _P,   _S,   _P,        _S),
    Signal.SYSTEM_ACK:   (_S,  _S,   _S,   _F,   _S,   _F,        _S),
    Signal.OTHER:        (_S,  _S,   _S,   _S,   _S,   _S,        _S),
}  # fmt: skip
TRANSITIONS: dict[tuple[Signal, Stage], Effect] = {
    (signal, stage): effect
    for signal, row in _TABLE.items()
    for stage, effect in zip(_STAGES, row, strict=True)
}


def signal_of(event: DhcpEvent | TransferEvent) -> Signal:
    if isinstance(event, TransferEvent):
        return Signal.TRANSFER
    if event.action not in ANSWERED:
        return Signal.OTHER
    if event.client in BOOT_CLIENTS:
        return Signal.BOOT_DHCP
    if event.client == "plain":
        return Signal.SYSTEM_ACK if event.action == "ACK" else Signal.SYSTEM_OFFER
    return Signal.OTHER  # a client kind we do not know


def phase_of(event: DhcpEvent | TransferEvent) -> Phase:
    if isinstance(event, DhcpEvent):
        return Phase.PXE_DHCP if event.client in BOOT_CLIENTS else Phase.SYSTEM_DHCP
    if event.kind == "menu":
        return Phase.MENU
    if event.kind == "kernel" and event.name.startswith("vmlinuz-"):
        return Phase.KERNEL
    if event.kind == "kernel" and event.name.startswith("initrd.img-"):
        return Phase.INITRD
    return Phase.LOADER


def stage_of(boot: _Boot | None) -> Stage:
    if boot is None:
        return Stage.NONE
    if boot.state is State.BOOTED:
        return Stage.BOOTED
    reached = max(_RANK[phase] for phase in boot.spans)
    if reached >= _RANK[Phase.KERNEL]:
        return Stage.STUCK_LATE if boot.state is State.STUCK else Stage.LATE
    if boot.state is State.STUCK:
        return Stage.STUCK
    return Stage.MENU if reached >= _RANK[Phase.MENU] else Stage.EARLY


# ---------------------------------------------------------------------------------------------

# Phase and boot durations for the metrics: boot phases last from milliseconds (a menu) to minutes
# (a kernel over a slow link, 30 machines at once).
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, math.inf)
Histogram = tuple[list[tuple[float, int]], float, int]  # cumulative (le, count) buckets, sum, count


class _Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def export(self) -> Histogram:
        buckets, total = [], 0
        for bound, n in zip(BUCKETS, self.counts, strict=True):
            total += n
            buckets.append((bound, total))
        return buckets, self.sum, self.count


@dataclass(slots=True)
class _Span:
    """One phase of one boot."""

    start: float
    end: float
    bytes: int = 0
    retransmits: int = 0
    transport: Transport | None = None


@dataclass(slots=True)
class _Boot:
    spans: dict[Phase, _Span] = field(default_factory=dict)  # never empty once recorded
    phase: Phase = Phase.PXE_DHCP  # the phase of the latest event: what the machine is doing
    state: State = State.BOOTING
    stuck_at: Phase | None = None
    progress: float = -math.inf  # time of the latest event recorded (STUCK after stuck_after without one)
    booted_at: float | None = None

    @property
    def started(self) -> float:
        return min(span.start for span in self.spans.values())


@dataclass(slots=True)
class _Machine:
    mac: str
    boots: deque[_Boot]
    name: str | None = None
    address: str | None = None
    firmware: str | None = None
    arch: int | None = None
    loader: str | None = None
    profile: str = "default"
    last_seen: float = -math.inf


class BootTracker:
    def __init__(self, stuck_after: float = 120.0, max_machines: int = 4096, boots_kept: int = 5) -> None:
        if not stuck_after > 0 or max_machines < 1 or boots_kept < 1:
            raise ValueError("stuck_after must be > 0, max_machines and boots_kept >= 1")
        self.stuck_after = stuck_after
        self.max_machines = max_machines
        self.boots_kept = boots_kept
        self._machines: OrderedDict[str, _Machine] = OrderedDict()  # least recently seen first
        self._by_ip: dict[str, str] = {}  # address -> MAC, from ACKs; only tracked machines
        self._booting: dict[str, None] = {}  # MACs whose last boot is BOOTING (poll looks at these only)
        self._changed: OrderedDict[str, int] = OrderedDict()  # MAC -> version of its last change, oldest first
        self._version = 0
        self._ignored = 0
        self._completed = 0
        self._phase_histograms = {phase: _Histogram() for phase in PHASES}
        self._boot_histogram = _Histogram()

    # -- input -------------------------------------------------------------------------------

    def feed(self, event: DhcpEvent | TransferEvent) -> None:
        if not math.isfinite(event.time):
            self._ignored += 1
            return
        if isinstance(event, TransferEvent):
            mac = self._by_ip.get(event.client)
            if mac is None:  # no ACK seen for that address: whose transfer it is, we cannot tell
                self._ignored += 1
                return
        else:
            mac = event.mac
        machine = self._machines.get(mac)
        boot = machine.boots[-1] if machine is not None else None
        effect = TRANSITIONS[signal_of(event), stage_of(boot)]
        if machine is None:
            if effect is not Effect.NEW_BOOT:
                return
            machine = self._admit(mac)
        if effect is Effect.NEW_BOOT:
            boot = self._new_boot(machine)
        if boot is not None and effect is not Effect.SEEN:
            self._record(boot, phase_of(event), event)
            if effect is Effect.FINISH:
                self._finish(boot, event.time)
        if isinstance(event, DhcpEvent):
            self._learn(machine, event)
        machine.last_seen = max(machine.last_seen, event.time)
        self._machines.move_to_end(mac)
        if machine.boots[-1].state is State.BOOTING:
            self._booting[mac] = None
        else:
            self._booting.pop(mac, None)
        self._touch(mac)

    def poll(self, now: float) -> None:
        """Mark STUCK each boot without progress for `stuck_after` seconds."""
        for mac in [mac for mac in self._booting if now - self._machines[mac].boots[-1].progress >= self.stuck_after]:
            boot = self._machines[mac].boots[-1]
            boot.state, boot.stuck_at = State.STUCK, boot.phase
            del self._booting[mac]
            self._touch(mac)

    # -- output ------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Bumped on every change of a row."""
        return self._version

    @property
    def ignored(self) -> int:
        """Events that could not be used: transfers from an address no ACK mapped to a MAC (or a time that
        is not a finite number)."""
        return self._ignored

    @property
    def tracked(self) -> int:
        """Machines tracked now (at most max_machines)."""
        return len(self._machines)

    def changed_since(self, version: int) -> list[str]:
        """MACs of tracked machines changed after `version`, oldest change first. A version this tracker
        never gave (newer than `version`) gets them all. Forgotten machines are not listed."""
        if version > self._version:
            return list(self._changed)
        changed = []
        for mac, at in reversed(self._changed.items()):
            if at <= version:
                break
            changed.append(mac)
        changed.reverse()
        return changed

    def snapshot(self, now: float, macs: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One JSON-ready row per machine (its last boot): those of `macs` that are tracked, in that order,
        else all of them by MAC."""
        chosen = sorted(self._machines) if macs is None else dict.fromkeys(macs)
        return [_row(machine, machine.boots[-1], now) for mac in chosen if (machine := self._machines.get(mac))]

    def boots(self, mac: str, now: float) -> list[dict[str, Any]]:
        """Every kept boot of `mac`, oldest first, as snapshot rows; [] for an untracked MAC."""
        machine = self._machines.get(mac)
        return [] if machine is None else [_row(machine, boot, now) for boot in machine.boots]

    def boots_completed(self) -> int:
        """Boots that reached BOOTED since the tracker started."""
        return self._completed

    def histogram(self, phase: Phase | str) -> Histogram:
        """Durations (end - start) of `phase` in the boots completed since start."""
        return self._phase_histograms[Phase(phase)].export()

    def boot_histogram(self) -> Histogram:
        """Durations of the boots completed since start (start to the system's DHCP ACK)."""
        return self._boot_histogram.export()

    # -- the steps ---------------------------------------------------------------------------

    def _admit(self, mac: str) -> _Machine:
        while len(self._machines) >= self.max_machines:
            old_mac, old = self._machines.popitem(last=False)
            if old.address is not None and self._by_ip.get(old.address) == old_mac:
                del self._by_ip[old.address]
            self._booting.pop(old_mac, None)
            self._changed.pop(old_mac, None)
        machine = self._machines[mac] = _Machine(mac, deque(maxlen=self.boots_kept))
        return machine

    def _new_boot(self, machine: _Machine) -> _Boot:
        if machine.boots and (last := machine.boots[-1]).state is State.BOOTING:
            last.state, last.stuck_at = State.STUCK, last.phase  # reset mid-boot: it stopped there
        boot = _Boot()
        machine.boots.append(boot)
        return boot

    def _record(self, boot: _Boot, phase: Phase, event: DhcpEvent | TransferEvent) -> None:
        start = end = event.time
        if isinstance(event, TransferEvent):
            seconds = event.seconds if math.isfinite(event.seconds) else 0.0
            start = end - max(0.0, seconds)
        span = boot.spans.get(phase)
        if span is None:
            span = boot.spans[phase] = _Span(start, end)
        else:
            span.start, span.end = min(span.start, start), max(span.end, end)
        if isinstance(event, TransferEvent):
            span.bytes += max(0, event.sent)
            span.retransmits += max(0, event.retransmits)
            span.transport = event.transport
        if event.time >= boot.progress:  # events may arrive slightly out of order: the latest one tells
            boot.progress, boot.phase = event.time, phase
        boot.state, boot.stuck_at = State.BOOTING, None

    def _finish(self, boot: _Boot, time: float) -> None:
        boot.state, boot.phase, boot.booted_at = State.BOOTED, Phase.SYSTEM_DHCP, time
        self._completed += 1
        for phase, span in boot.spans.items():
            self._phase_histograms[phase].observe(span.end - span.start)
        self._boot_histogram.observe(max(0.0, time - boot.started))

    def _learn(self, machine: _Machine, event: DhcpEvent) -> None:
        """Identity from what the appliance answered: name, profile, firmware, arch, loader, address."""
        if event.action not in ANSWERED:
            return
        machine.profile = event.profile
        if event.hostname is not None:
            machine.name = event.hostname
        if event.client in BOOT_CLIENTS:  # the booted system's DHCP says nothing of the firmware
            machine.firmware = str(event.client)
            if event.arch is not None:
                machine.arch = event.arch
            if event.loader is not None:
                machine.loader = event.loader
        if event.action == "ACK" and event.address:
            self._map_address(machine, event.address)

    def _map_address(self, machine: _Machine, address: str) -> None:
        if machine.address != address:
            if machine.address is not None and self._by_ip.get(machine.address) == machine.mac:
                del self._by_ip[machine.address]
            machine.address = address
        owner = self._by_ip.get(address)
        if owner is not None and owner != machine.mac:  # the lease moved: the other row loses it
            self._machines[owner].address = None
            self._touch(owner)
        self._by_ip[address] = machine.mac

    def _touch(self, mac: str) -> None:
        self._version += 1
        self._changed[mac] = self._version
        self._changed.move_to_end(mac)


def _row(machine: _Machine, boot: _Boot, now: float) -> dict[str, Any]:
    started = boot.started
    if boot.state is State.BOOTED:
        until = boot.booted_at if boot.booted_at is not None else started
    elif boot.state is State.STUCK:
        until = max(span.end for span in boot.spans.values())
    else:
        until = now
    return {
        "mac": machine.mac,
        "name": machine.name,
        "address": machine.address,
        "firmware": machine.firmware,
        "arch": machine.arch,
        "loader": machine.loader,
        "profile": machine.profile,
        "state": boot.state.value,
        "phase": boot.phase.value,
        "stuck_at": None if boot.stuck_at is None else boot.stuck_at.value,
        "started": started,
        "duration": max(0.0, until - started),
        "last_seen": machine.last_seen,
        "phases": [
            {"phase": phase.value, "start": span.start, "end": span.end, "bytes": span.bytes,
             "retransmits": span.retransmits, "transport": None if span.transport is None else str(span.transport)}
            for phase in PHASES if (span := boot.spans.get(phase)) is not None
        ],
    }
