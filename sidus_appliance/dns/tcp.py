"""Who may hold a DNS TCP connection, and for how long (RFC 7766 lets a server close idle ones).

Sans-IO: the transport asks `admit(source, now)` when it accepts, notes each connection's waits
(`waiting`, `busy`), closes what `expired(now)` returns and `release`s what closed. The rules:

- one source holds at most `per_source` connections: beyond that a newcomer is refused;
- all sources hold at most `total`: when full, a newcomer from a source holding fewer than the
  biggest holder takes the slot of that holder's connection idle the longest; a newcomer from a
  source already among the biggest holders is refused. So a client from a new source always gets
  in, however many connections others hold, and a flood only churns its own connections;
- a wait lasts at most `timeout`: silence between messages, and the time from a message's first
  byte to its last (a client trickling one byte a second is cut off: slowloris);
- a connection lives at most `lifetime` in all: one sending a query every timeout - 1 seconds
  would otherwise keep its slot forever.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(eq=False)
class TcpConn:
    source: str
    opened: float
    since: float  # start of the current wait: idle since the last answer, or a message's first byte
    busy: bool = False  # an answer in the making (forwarded upstream): neither timed out nor evicted


@dataclass(frozen=True)
class Admission:
    conn: TcpConn | None  # None: refused
    evicted: TcpConn | None = None  # to close now, to make room for `conn`
    reason: str = ""  # why refused (for the log)


class TcpPool:
    def __init__(self, total: int, per_source: int, timeout: float, lifetime: float) -> None:
        self.configure(total, per_source, timeout, lifetime)
        self.conns: dict[TcpConn, None] = {}  # insertion-ordered set
        self.by_source: Counter[str] = Counter()

    def configure(self, total: int, per_source: int, timeout: float, lifetime: float) -> None:
        """New limits (SIGHUP); open connections stay and are judged by them from now on."""
        self.total, self.per_source, self.timeout, self.lifetime = total, per_source, timeout, lifetime

    def __len__(self) -> int:
        return len(self.conns)

    def admit(self, source: str, now: float) -> Admission:
        held = self.by_source[source]
        if held >= self.per_source:
            return Admission(None, reason=f"{held} connections open from it (tcp_max_per_client)")
        evicted = None
        if len(self.conns) >= self.total:
            evicted = self._victim(held)
            if evicted is None:
                return Admission(None, reason=f"{len(self.conns)} connections open (tcp_max_connections), "
                                              f"{held} from it")
            self.release(evicted)
        conn = TcpConn(source, now, now)
        self.conns[conn] = None
        self.by_source[source] += 1
        return Admission(conn, evicted)

    def _victim(self, newcomer_holds: int) -> TcpConn | None:
        """The longest-idle connection of the biggest holders, if the newcomer holds fewer."""
        most = max(self.by_source.values(), default=0)
        if newcomer_holds >= most:
            return None
        candidates = [c for c in self.conns if not c.busy and self.by_source[c.source] == most]
        return min(candidates, key=lambda c: c.since, default=None)

    def release(self, conn: TcpConn) -> None:
        """Forget a closed connection (idempotent: an evicted one is released before it closes)."""
        if self.conns.pop(conn, 0) is None:
            self.by_source[conn.source] -= 1
            if not self.by_source[conn.source]:
                del self.by_source[conn.source]

    def waiting(self, conn: TcpConn, now: float) -> None:
        """A new wait starts: idle after an answer, or a new message's first byte."""
        conn.since = now
        conn.busy = False

    def expired(self, now: float) -> list[TcpConn]:
        return [c for c in self.conns
                if not c.busy and (now >= c.since + self.timeout or now >= c.opened + self.lifetime)]
