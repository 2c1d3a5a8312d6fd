"""Zone transfers out: the journal of changes between successive zones, and the records of an
IXFR answer (RFC 1995).

Pure data, no I/O. The core (`server.py`) hands the journal every zone it swaps in; `Journal`
keeps the records each swap deleted and added (a lease change touches a handful, whatever the
zone's size). An IXFR from a serial the journal still reaches gets one condensed difference
sequence (RFC 1995 section 4 allows condensing): the current SOA, the client's SOA, what to
delete, the current SOA, what to add, the current SOA. From an older serial (the appliance
restarted, the journal was trimmed, the config changed the apexes) the answer is the whole zone
in AXFR form, which section 4 also allows; a client as new as us gets our SOA alone.

The old SOA must be the very one the secondary holds (BIND deletes it exactly, like every other
deleted record), so each journal entry keeps the SOA RRs of the zone it replaced.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dnslib import QTYPE, RR

from .zone import Content, Rec, Zone

MAX_DELTAS = 256  # zone versions an IXFR can start from (a boot storm makes ~10 a second)
MAX_RECORDS = 200_000  # records kept in all deltas; the oldest go first


def serial_newer(a: int, b: int) -> bool:
    """`a` comes after `b` in serial number arithmetic (RFC 1982): the SOA serial wraps."""
    return a != b and (a - b) & 0xFFFFFFFF < 0x80000000


def content_changes(old: Content, new: Content) -> tuple[set[Rec], set[Rec]]:
    """(deleted, added): the records of `old` that `new` lacks, and the other way round.

    With the same config part (every lease change), only the leases' records and the pool PTRs
    they hide can differ, so the cost follows the leases, not the pool: for 60,000 bound leases
    (a /16) about what the rebuild's own equality test costs (~0.1-0.2 s on our loaded box, where
    building that content takes ~1 s)."""
    if old.static is not new.static:
        before, after = set(old), set(new)
        return before - after, after - before
    # Lookups, not item-view set operations: those hash every (key, ttl) pair again (~10x slower).
    before, after = old.dynamic, new.dynamic
    deleted = {(key[0], key[1], ttl, key[2]) for key, ttl in before.items() if after.get(key) != ttl}
    added = {(key[0], key[1], ttl, key[2]) for key, ttl in after.items() if before.get(key) != ttl}
    index = old.static.index
    for owner in new.hidden - old.hidden:  # a lease's name took the place of the pool name's PTR
        deleted.update(index.get(owner, {}).get(QTYPE.PTR, ()))
    for owner in old.hidden - new.hidden:  # and gave it back
        added.update(index.get(owner, {}).get(QTYPE.PTR, ()))
    return deleted, added


@dataclass(frozen=True)
class Delta:
    """One zone swap: serials, each apex's SOA before it, the records it deleted and added."""

    old_serial: int
    new_serial: int
    old_soa: dict[str, RR]
    deleted: frozenset[Rec]
    added: frozenset[Rec]

    @property
    def size(self) -> int:
        return len(self.deleted) + len(self.added)


@dataclass(frozen=True)
class Changes:
    """The net difference from a past serial to the current zone (one apex or both)."""

    old_soa: dict[str, RR]
    deleted: set[Rec]
    added: set[Rec]


class Journal:
    """The last zone swaps, in order, each starting where the one before it ended."""

    def __init__(self, max_deltas: int = MAX_DELTAS, max_records: int = MAX_RECORDS) -> None:
        self.max_deltas, self.max_records = max_deltas, max_records
        self._deltas: deque[Delta] = deque()
        self._records = 0

    def __len__(self) -> int:
        return len(self._deltas)

    def clear(self) -> None:
        self._deltas.clear()
        self._records = 0

    def record(self, old: Zone, new: Zone) -> frozenset[str]:
        """Note the swap old → new; returns the apexes whose records changed. A swap the journal
        cannot express (other apexes, a serial not after the last) empties it: every apex then
        counts as changed, and IXFR answers with whole zones until new swaps accumulate."""
        if new is old:
            return frozenset()
        if (old.apexes != new.apexes or not serial_newer(new.serial, old.serial)
                or (self._deltas and self._deltas[-1].new_serial != old.serial)):
            self.clear()
            return frozenset(new.apexes)
        deleted, added = content_changes(old.content, new.content)
        delta = Delta(old.serial, new.serial, {apex: old.soa(apex) for apex in old.apexes},
                      frozenset(deleted), frozenset(added))
        if delta.size > self.max_records:
            self.clear()  # a history we cannot keep whole is no history: whole zones from here on
        else:
            self._deltas.append(delta)
            self._records += delta.size
            while len(self._deltas) > self.max_deltas or self._records > self.max_records:
                self._records -= self._deltas.popleft().size
        touched = {new.apex_of(rec[0]) for rec in deleted | added}
        return frozenset(apex for apex in new.apexes if apex in touched)

    def since(self, serial: int, current: int) -> Changes | None:
        """The net changes from `serial` to `current`, or None when the journal does not reach back."""
        start = next((i for i, d in enumerate(self._deltas) if d.old_serial == serial), None)
        if start is None or self._deltas[-1].new_serial != current:
            return None
        deltas = list(self._deltas)[start:]
        deleted: set[Rec] = set()
        added: set[Rec] = set()
        for delta in deltas:  # condensed: a record added then deleted again never shows
            for rec in delta.deleted:
                if rec in added:
                    added.discard(rec)
                else:
                    deleted.add(rec)
            for rec in delta.added:
                if rec in deleted:
                    deleted.discard(rec)
                else:
                    added.add(rec)
        return Changes(deltas[0].old_soa, deleted, added)


def ixfr_records(zone: Zone, apex: str, client_serial: int | None, journal: Journal) -> tuple[str, list[RR]]:
    """What an IXFR for `apex` from `client_serial` gets, and which kind of answer it is:
    "current" (our SOA alone), "incremental" or "full" (AXFR form). No client serial (an IXFR
    without its SOA, as some tools send) gets the whole zone."""
    soa = zone.soa(apex)
    if client_serial is not None and not serial_newer(zone.serial, client_serial):
        return "current", [soa]  # as new as ours, or newer (then it waits for our serial to pass it)
    changes = journal.since(client_serial, zone.serial) if client_serial is not None else None
    if changes is None:
        return "full", zone.transfer(apex)
    if len(changes.deleted) + len(changes.added) >= len(zone.content):
        return "full", zone.transfer(apex)  # the difference outweighs the zones themselves
    deleted = sorted(rec for rec in changes.deleted if zone.apex_of(rec[0]) == apex)
    added = sorted(rec for rec in changes.added if zone.apex_of(rec[0]) == apex)
    return "incremental", [soa, changes.old_soa[apex], *map(zone.rr, deleted), soa, *map(zone.rr, added), soa]
