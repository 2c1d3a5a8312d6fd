"""The lease table: in memory for lookups, an append-only JSON-lines journal for durability.

Why a journal: dnsmasq rewrites its whole lease file on every change and saturates near 380
DORA/s. Here a commit is one line appended to an O_APPEND descriptor; once `write` returns, the
bytes are in the kernel's page cache, so a SIGKILL of the process right after cannot lose them
(a power cut can, unless `fsync=True`: then `fdatasync` before anything is acknowledged). The
journal is compacted (atomic rewrite: temp file, fsync, rename, fsync of the directory) once it
has grown past a few times the live table, so its size stays proportional to the number of leases.

Group commit (the DHCP service): with `autoflush=False` a change updates the table at once (the
next packet must see it) but its journal line waits in `pending`; `write_pending()` appends a
whole burst in one write and `sync()` makes it durable, and only then are replies sent. Every
change since the last durable point is kept in an undo log: if a write or fsync fails, the
table is rolled back to what is on disk (`rollback()`), so no reply promises a lease that a
restart would not find.

A failed or partial write (full disk, EIO) never corrupts the next one: the file is truncated
back to its last complete line before anything else is appended; while that truncation fails,
nothing is appended at all.

Journal lines: {"mac", "ip", "host", "exp", "state", "chost", "by"} sets a lease, {"mac", "del": 1}
removes one. "offered" leases live in memory only (they expire within a minute); "bound" and
"declined" ones are journalled. A torn last line (killed mid-write) is ignored and cut off, so
the next append starts on a clean line.

Only one process writes a journal: it holds an flock on `<journal>.lock`. Another process
(`sidus-appliance leases` while the appliance runs) gets a read-only snapshot.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path

log = logging.getLogger("sidus.leases")



class LeaseState(StrEnum):
    """A lease's life: OFFERED (memory only, a minute at most) -> BOUND; DECLINED quarantines an address."""

    OFFERED = "offered"
    BOUND = "bound"
    DECLINED = "declined"


OFFERED, BOUND, DECLINED = LeaseState.OFFERED, LeaseState.BOUND, LeaseState.DECLINED
PERSISTED_STATES = frozenset((BOUND, DECLINED))

Subscriber = Callable[["Lease | None", "Lease | None"], None]


@dataclass(frozen=True, slots=True)
class Lease:
    mac: str  # "08:00:aa:bb:cc:dd"; quarantined (declined) addresses use "declined:<ip>"
    address: IPv4Address
    hostname: str  # the name we hand out (reservation name or pool pattern)
    expires: float | None  # epoch seconds; None = infinite
    state: LeaseState
    client_hostname: str | None = None  # option 12 as the client sent it
    declined_by: str | None = None  # quarantined address: the MAC whose DECLINE put it there

    @property
    def persisted(self) -> bool:
        return self.state in PERSISTED_STATES

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


class LeaseStoreError(RuntimeError):
    """The store cannot do what was asked (read-only snapshot, address held by another MAC)."""


def _to_line(lease: Lease) -> bytes:
    """One journal line; formatted by hand (3x faster than json.dumps on the ACK path), every
    string through json's own escaper, so a hostile client hostname cannot break a line."""
    expires = "null" if lease.expires is None else repr(float(lease.expires))
    chost = "" if lease.client_hostname is None else ',"chost":' + _quote(lease.client_hostname)
    by = "" if lease.declined_by is None else ',"by":' + _quote(lease.declined_by)
    return (
        f'{{"mac":{_quote(lease.mac)},"ip":"{lease.address}","host":{_quote(lease.hostname)},'
        f'"exp":{expires},"state":{_quote(lease.state)}{chost}{by}}}\n'
    ).encode()


def _from_record(record: dict) -> Lease:
    state = LeaseState(record["state"])  # ValueError: an unknown state
    expires = record.get("exp")
    return Lease(
        mac=str(record["mac"]),
        address=IPv4Address(record["ip"]),
        hostname=str(record.get("host", "")),
        expires=None if expires is None else float(expires),
        state=state,
        client_hostname=record.get("chost"),
        declined_by=record.get("by"),
    )


class LeaseStore:
    """Lease table keyed by MAC and by address; `path=None` keeps it in memory only (tests)."""

    def __init__(
        self,
        path: Path | str | None,
        *,
        fsync: bool = False,
        autoflush: bool = True,
        compact_factor: int = 4,
        compact_min: int = 1024,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.fsync = fsync
        # True: every change is written (and fsynced) before commit/remove return. False: the
        # caller batches with write_pending()/sync() (group commit) and rollback() on failure.
        self.autoflush = autoflush
        self.pending: list[bytes] = []  # journal lines not yet written
        self._undo: list[tuple[str, Lease | None]] = []  # (mac, lease before) since the last durable point
        self._good_size = 0  # journal size up to its last complete, written line
        self._durable_size = 0  # ... and up to the last line known durable (synced or autoflushed)
        self._durable_lines = 0
        self._torn = False  # a failed write left bytes past _good_size that are not cut yet
        self.compact_factor = compact_factor
        self.compact_min = compact_min
        self.readonly = False
        self.skipped_lines = 0  # corrupt lines found while loading (not counting a torn tail)
        self.journal_lines = 0  # lines in the journal file now, for the compaction rule
        self._retry_compact_at = 0
        self._by_mac: dict[str, Lease] = {}
        self._by_address: dict[IPv4Address, Lease] = {}
        self._subscribers: list[Subscriber] = []
        self._fd: int | None = None
        self._lock_fd: int | None = None
        if self.path is not None:
            self._open()

    # ------------------------------------------------------------------ queries

    def all(self) -> list[Lease]:
        return list(self._by_mac.values())

    def by_mac(self, mac: str) -> Lease | None:
        return self._by_mac.get(mac)

    def by_address(self, address: IPv4Address) -> Lease | None:
        return self._by_address.get(address)

    def __len__(self) -> int:
        return len(self._by_mac)

    def __bool__(self) -> bool:  # an empty table is still a store: `if leases:` must not lie
        return True

    def subscribe(self, callback: Subscriber) -> None:
        """`callback(old, new)` after every change; (None, new) added, (old, None) removed.

        Called for every state, "offered" included: a DNS zone wants `new.state == "bound"`.
        """
        self._subscribers.append(callback)

    # ------------------------------------------------------------------ changes

    def commit(self, lease: Lease) -> None:
        """Insert or replace the lease of `lease.mac`; journalled before this returns."""
        old = self._by_mac.get(lease.mac)
        holder = self._by_address.get(lease.address)
        if holder is not None and holder.mac != lease.mac:
            raise LeaseStoreError(f"{lease.address} is leased to {holder.mac}, not {lease.mac}")
        line = None
        if lease.persisted:
            line = _to_line(lease)
        elif old is not None and old.persisted:
            line = self._del_line(lease.mac)  # the journal must not resurrect `old`
        if self.autoflush and line is not None:
            self._append(line)
        self._set(lease.mac, lease)
        if not self.autoflush:
            self._undo.append((lease.mac, old))
            if line is not None:
                self.pending.append(line)
        self._notify(old, lease)
        if self.autoflush:
            self._maybe_compact()

    def remove(self, mac: str) -> Lease | None:
        """Forget the lease of `mac` (RELEASE, expiry); returns it, or None if there was none."""
        old = self._by_mac.get(mac)
        if old is None:
            return None
        if old.persisted:
            if self.autoflush:
                self._append(self._del_line(mac))
            else:
                self.pending.append(self._del_line(mac))
        self._set(mac, None)
        if not self.autoflush:
            self._undo.append((mac, old))
        self._notify(old, None)
        if self.autoflush:
            self._maybe_compact()
        return old

    # ------------------------------------------------------------------ group commit

    @property
    def durable(self) -> bool:
        """Nothing in the table that the journal would not give back after a restart."""
        return not self.pending and not self._undo

    def write_pending(self) -> tuple[int, int, int]:
        """Append every pending line in one write (not yet fsynced). Raises OSError on failure;
        the caller then calls rollback(). Returns the mark to give mark_durable() once synced:
        changes made after this call (while the fsync runs) are not covered by it."""
        if self.pending:
            self._append(b"".join(self.pending), count=len(self.pending))
            self.pending.clear()
        return len(self._undo), self._good_size, self.journal_lines

    def sync(self) -> None:
        """fdatasync the journal if `fsync` is set (safe from a worker thread: no table access)."""
        if self.fsync and self._fd is not None and self.path is not None:
            os.fdatasync(self._fd)

    def mark_durable(self, mark: tuple[int, int, int]) -> None:
        """What write_pending() wrote is on disk: forget its part of the undo log; compact now
        if the journal grew and nothing else is waiting."""
        undo_count, self._durable_size, self._durable_lines = mark
        del self._undo[:undo_count]
        if self.durable:
            self._maybe_compact()

    def rollback(self) -> int:
        """Undo every change since the last durable point (a write or fsync failed): the table
        is again what the journal holds. Cuts the journal back to its last durable size.
        Returns how many changes were undone."""
        undone = len(self._undo)
        self.pending.clear()
        self._discard_unsynced()
        while self._undo:
            mac, before = self._undo.pop()
            now = self._by_mac.get(mac)
            if before is not None:
                holder = self._by_address.get(before.address)
                if holder is not None and holder.mac != mac:  # cannot happen when undone in order
                    self._set(holder.mac, None)
            self._set(mac, before)
            self._notify(now, before)
        return undone

    def compact(self) -> None:
        """Rewrite the journal with the live persisted leases only, atomically."""
        if self.path is None or self.readonly:
            return
        if not self.durable:
            raise LeaseStoreError("compaction with changes not yet durable")
        lines = [_to_line(lease) for lease in self._by_mac.values() if lease.persisted]
        data = b"".join(lines)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # never write through whatever sits there (a planted link)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        self._fsync_dir()
        # Appends must go to the new file: the old descriptor points at the replaced inode.
        new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        old_fd, self._fd = self._fd, new_fd
        if old_fd is not None:
            os.close(old_fd)
        self.journal_lines = self._durable_lines = len(lines)
        self._good_size = self._durable_size = len(data)
        self._torn = False
        log.debug("leases: journal compacted to %d lines", len(lines))

    def close(self) -> None:
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    def __enter__(self) -> LeaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _del_line(mac: str) -> bytes:
        return json.dumps({"mac": mac, "del": 1}, separators=(",", ":")).encode() + b"\n"

    def _set(self, mac: str, lease: Lease | None) -> None:
        old = self._by_mac.pop(mac, None)
        if old is not None and self._by_address.get(old.address) is old:
            del self._by_address[old.address]
        if lease is not None:
            self._by_mac[mac] = lease
            self._by_address[lease.address] = lease

    def _append(self, data: bytes, count: int = 1) -> None:
        """Append whole lines or nothing: a partial write is cut off before this raises."""
        if self.path is None:
            return
        if self._fd is None:
            raise LeaseStoreError(f"{self.path} is open read-only (another process owns it)")
        if self._torn:
            self._cut_torn()  # raises while the torn bytes cannot be removed: append nothing
        try:
            _write_all(self._fd, data)
            if self.autoflush and self.fsync:
                os.fdatasync(self._fd)
        except OSError:
            self._torn = True
            with contextlib.suppress(OSError):
                self._cut_torn()
            raise
        self._good_size += len(data)
        self.journal_lines += count
        if self.autoflush:
            self._durable_size, self._durable_lines = self._good_size, self.journal_lines

    def _cut_torn(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, self._good_size)
        self._torn = False
        log.warning("leases: cut %s back to its last complete line (%d bytes) after a failed write",
                    self.path, self._good_size)

    def _discard_unsynced(self) -> None:
        """After a failed fsync, lines written since the last durable point are not promised:
        cut them so that a restart cannot resurrect a lease we rolled back."""
        if self.path is None or self._fd is None:
            return
        if self._durable_size < self._good_size:
            self._good_size, self.journal_lines = self._durable_size, self._durable_lines
            self._torn = True
            with contextlib.suppress(OSError):
                self._cut_torn()

    def _notify(self, old: Lease | None, new: Lease | None) -> None:
        for callback in self._subscribers:
            try:
                callback(old, new)
            except Exception:  # a broken subscriber (DNS) must not stop DHCP
                log.exception("leases: subscriber %r failed", callback)

    def _maybe_compact(self) -> None:
        threshold = self.compact_factor * max(len(self._by_mac), self.compact_min)
        if self.journal_lines <= max(threshold, self._retry_compact_at):
            return
        try:
            self.compact()
        except OSError as exc:  # the append already made the change durable; compaction can wait
            self._retry_compact_at = 2 * self.journal_lines
            log.warning("leases: cannot compact %s: %s", self.path, exc)

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.readonly = True
            log.info("leases: %s is in use by another process; reading a snapshot", self.path)
        with contextlib.suppress(FileNotFoundError):
            self._load()
        if self.readonly:
            return
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._good_size = self._durable_size = os.fstat(self._fd).st_size
        self._durable_lines = self.journal_lines
        if created:
            self._fsync_dir()
        self._maybe_compact()

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):
            # Killed in the middle of a write: drop the partial line (only the owner may cut it).
            log.warning("leases: ignoring a torn last line in %s (%d bytes)", self.path, len(data) - good_end)
            if not self.readonly:
                os.truncate(self.path, good_end)
        lines = 0
        for number, raw in enumerate(data[:good_end].splitlines(), 1):
            if not raw.strip():
                continue
            lines += 1
            try:
                self._replay(json.loads(raw))
            except (ValueError, KeyError, TypeError) as exc:
                self.skipped_lines += 1
                log.warning("leases: %s:%d: skipping a corrupt line (%s)", self.path, number, exc)
        self.journal_lines = lines

    def _replay(self, record: dict) -> None:
        mac = record["mac"]
        old = self._by_mac.pop(mac, None)
        if old is not None:
            self._by_address.pop(old.address, None)
        if record.get("del"):
            return
        lease = _from_record(record)
        holder = self._by_address.get(lease.address)
        if holder is not None:  # cannot happen unless the file was edited: the newest line wins
            self._by_mac.pop(holder.mac, None)
        self._by_mac[mac] = lease
        self._by_address[lease.address] = lease

    def _fsync_dir(self) -> None:
        assert self.path is not None
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class InMemoryLeaseStore(LeaseStore):
    """Same API, nothing on disk: for unit tests of the policy core."""

    def __init__(self) -> None:
        super().__init__(None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
