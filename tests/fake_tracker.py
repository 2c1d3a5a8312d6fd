"""A stand-in for observe.tracker.BootTracker with the methods the management endpoint uses
(observe-spec.md): rows set by the test, a version bumped on every change."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

Row = dict[str, Any]
PHASES = ("pxe-dhcp", "loader", "menu", "kernel", "initrd", "system-dhcp")
SIZES = {"loader": 42_379, "menu": 1_214, "kernel": 7_937_312, "initrd": 31_822_080}  # bytes a boot fetches
GAP = 0.3  # seconds between one phase's last event and the next one's first


def boot_row(mac: str, *, name: str, address: str, started: float, reached: int, booted: bool = False,
             stuck: bool = False, durations: Sequence[float] = (2.0,) * 6, firmware: str = "pxe", arch: int = 0,
             loader: str = "pxelinux.0", profile: str = "default", retransmits: int = 0) -> Row:
    """A row whose boot reached the first `reached` phases, lasting `durations` seconds each."""
    phases, at = [], started
    for phase, seconds in zip(PHASES[:reached], durations, strict=False):
        phases.append({"phase": phase, "start": at, "end": at + seconds, "bytes": SIZES.get(phase, 0),
                       "retransmits": retransmits if phase in ("kernel", "initrd") else 0,
                       "transport": "tftp" if phase in SIZES else None})
        at += seconds + GAP
    last = phases[-1]["end"] if phases else started
    state = "booted" if booted else "stuck" if stuck else "booting"
    return {
        "mac": mac, "name": name, "address": address, "firmware": firmware, "arch": arch, "loader": loader,
        "profile": profile, "state": state, "phase": phases[-1]["phase"] if phases else None,
        "stuck_at": phases[-1]["phase"] if stuck else None, "started": started, "duration": last - started,
        "last_seen": last, "phases": phases,
    }


class FakeTracker:
    def __init__(self, rows: Iterable[Row] = ()) -> None:
        self.rows: dict[str, Row] = {row["mac"]: row for row in rows}
        self._version = 0
        self._changes: list[tuple[int, str]] = []  # (version, mac)
        self.polls: list[float] = []

    @property
    def version(self) -> int:
        return self._version

    def put(self, row: Row) -> None:
        self.rows[row["mac"]] = row
        self._bump(row["mac"])

    def forget(self, mac: str) -> None:
        del self.rows[mac]
        self._bump(mac)

    def _bump(self, mac: str) -> None:
        self._version += 1
        self._changes.append((self._version, mac))

    def changed_since(self, version: int) -> list[str]:
        return list(dict.fromkeys(mac for v, mac in self._changes if v > version))

    def snapshot(self, now: float, macs: Iterable[str] | None = None) -> list[Row]:
        wanted = self.rows if macs is None else [m for m in macs if m in self.rows]
        return [copy.deepcopy(self.rows[mac]) for mac in wanted]

    def poll(self, now: float) -> None:
        self.polls.append(now)
