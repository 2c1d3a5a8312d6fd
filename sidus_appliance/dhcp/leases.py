"""The lease table: in memory for lookups, an append-only JSON-lines journal for durability.

Why a journal: dnsmasq rewrites its whole lease file on every change and saturates near 380
DORA/s. Here a commit is one `os.write` of one line to an O_APPEND descriptor; once `write`
returns, the bytes are in the kernel's page cache, so a SIGKILL of the process right after
cannot lose them (a power cut can, unless `fsync=True`). The journal is compacted (atomic
rewrite: temp file, fsync, rename, fsync of the directory) once it has grown past a few times
the live table, so its size stays proportional to the number of leases.

Journal lines: {"mac", "ip", "host", "exp", "state", "chost"} sets a lease, {"mac", "del": 1}
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
from ipaddress import IPv4Address
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path

log = logging.getLogger("sidus.leases")

OFFERED, BOUND, DECLINED = "offered", "bound", "declined"
STATES = (OFFERED, BOUND, DECLINED)
PERSISTED_STATES = frozenset((BOUND, DECLINED))

Subscriber = Callable[["Lease | None", "Lease | None"], None]


@dataclass(frozen=True, slots=True)
class Lease:
    mac: str  # "08:00:aa:bb:cc:dd"; quarantined (declined) addresses use "declined:<ip>"
    address: IPv4Address
    hostname: str  # the name we hand out (reservation name or pool pattern)
    expires: float | None  # epoch seconds; None = infinite
    state: str  # "offered" | "bound" | "declined"
    client_hostname: str | None = None  # option 12 as the client sent it

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
    return (
        f'{{"mac":{_quote(lease.mac)},"ip":"{lease.address}","host":{_quote(lease.hostname)},'
        f'"exp":{expires},"state":{_quote(lease.state)}{chost}}}\n'
    ).encode()


def _from_record(record: dict) -> Lease:
    state = record["state"]
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    expires = record.get("exp")
    return Lease(
        mac=str(record["mac"]),
        address=IPv4Address(record["ip"]),
        hostname=str(record.get("host", "")),
        expires=None if expires is None else float(expires),
        state=state,
        client_hostname=record.get("chost"),
    )


class LeaseStore:
    """Lease table keyed by MAC and by address; `path=None` keeps it in memory only (tests)."""

    def __init__(
        self,
        path: Path | str | None,
        *,
        fsync: bool = False,
        compact_factor: int = 4,
        compact_min: int = 1024,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.fsync = fsync
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
        if lease.persisted:
            self._append(_to_line(lease))
        elif old is not None and old.persisted:
            self._append(self._del_line(lease.mac))  # the journal must not resurrect `old`
        if old is not None and old.address != lease.address:
            del self._by_address[old.address]
        self._by_mac[lease.mac] = lease
        self._by_address[lease.address] = lease
        self._notify(old, lease)
        self._maybe_compact()

    def remove(self, mac: str) -> Lease | None:
        """Forget the lease of `mac` (RELEASE, expiry); returns it, or None if there was none."""
        old = self._by_mac.get(mac)
        if old is None:
            return None
        if old.persisted:
            self._append(self._del_line(mac))
        del self._by_mac[mac]
        del self._by_address[old.address]
        self._notify(old, None)
        self._maybe_compact()
        return old

    def compact(self) -> None:
        """Rewrite the journal with the live persisted leases only, atomically."""
        if self.path is None or self.readonly:
            return
        lines = [_to_line(lease) for lease in self._by_mac.values() if lease.persisted]
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            _write_all(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._fsync_dir()
        # Appends must go to the new file: the old descriptor points at the replaced inode.
        new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        old_fd, self._fd = self._fd, new_fd
        if old_fd is not None:
            os.close(old_fd)
        self.journal_lines = len(lines)
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

    def _append(self, line: bytes) -> None:
        if self.path is None:
            return
        if self._fd is None:
            raise LeaseStoreError(f"{self.path} is open read-only (another process owns it)")
        _write_all(self._fd, line)
        if self.fsync:
            os.fdatasync(self._fd)
        self.journal_lines += 1

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
