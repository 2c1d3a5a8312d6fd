"""NOTIFY out (RFC 1996): secondaries hear of a new serial at once, not at their next refresh.

Sans-IO, after aioquic's `get_timer`/`handle_timer`: the service tells `changed(soas, now)` which
zones have a new SOA, sends what `poll(now)` returns whenever `deadline()` comes, and hands every
datagram of its NOTIFY socket to `received(data, source)`. Times are plain numbers (the
loop's clock), query IDs come from an injected source; nothing here touches a socket.

The whole policy, per (secondary, zone):
- a change is announced at once, unless that secondary was sent a new NOTIFY (not a
  retransmission) for that zone less than `spacing` ago: then when the spacing ends, with the
  latest SOA. A boot storm (a zone rebuild
  every 0.1 s) costs each secondary about one NOTIFY per zone per `spacing`, and the last one
  always carries the final serial (whatever it asks for, it gets the current zone anyway);
- a NOTIFY nobody answered goes again after `timeout`, doubling each time, `tries` times in all
  (1 + 2 + 4 + 8 + 16 s by default), then is given up and reported; the next change starts again.
  A new change while one is unanswered replaces it (new ID, tries counted afresh), still no
  sooner than `spacing` after the last new one: a dead secondary costs at most one datagram per
  zone per `spacing` during a storm, and `tries` datagrams per change after it;
- the answer that counts has the ID of the latest NOTIFY, comes from the secondary's address
  and port and names the zone (RFC 1996 §3.6); an error rcode in it (REFUSED, NOTAUTH: the
  secondary does not take NOTIFY from us) is reported and not retried.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

NOTIFY_SPACING = 1.0  # least time between two NOTIFYs of new serials to one secondary for one zone
NOTIFY_TIMEOUT = 1.0  # first retransmission; doubles per try
NOTIFY_TRIES = 5
NOTIFY_OPCODE = 4

Target = tuple[str, int]  # (address, port)


def notify_message(qid: int, soa: RR) -> bytes:
    """A NOTIFY for the zone whose apex SOA is `soa`: AA set, QTYPE SOA, and the new SOA in the
    answer section (the RFC 1996 §3.7 hint BIND and Knot send too)."""
    message = DNSRecord(DNSHeader(id=qid, opcode=NOTIFY_OPCODE, aa=1, rd=0), q=DNSQuestion(soa.rname, QTYPE.SOA))
    message.add_answer(soa)
    return bytes(message.pack())


@dataclass(frozen=True)
class Datagram:
    """Action: send `data` to `target` (a NOTIFY of `apex`, serial `serial`, try `attempt`)."""

    data: bytes
    target: Target
    apex: str
    serial: int
    attempt: int


@dataclass(frozen=True)
class Outcome:
    """How a NOTIFY ended: "answered", "unanswered" (tries used up) or "error" (`detail` names the rcode)."""

    target: Target
    apex: str
    serial: int
    result: str
    detail: str = ""


@dataclass
class _Announcement:
    """One secondary, one zone: the SOA still to announce (None: nothing), the NOTIFY in flight."""

    soa: RR | None = None
    serial: int = 0
    qid: int | None = None
    message: bytes = b""
    attempts: int = 0
    due: float = math.inf
    last_new: float = -math.inf  # when the last new NOTIFY (first try) left: spacing counts from it


def _serial(soa: RR) -> int:
    return soa.rdata.times[0]


def _apex(soa: RR) -> str:
    return str(soa.rname).rstrip(".").lower()


class Notifier:
    def __init__(self, targets: Iterable[Target], *, spacing: float = NOTIFY_SPACING,
                 timeout: float = NOTIFY_TIMEOUT, tries: int = NOTIFY_TRIES,
                 ids: Callable[[], int] = lambda: secrets.randbelow(0x10000)) -> None:
        self.spacing, self.timeout, self.tries, self._ids = spacing, timeout, tries, ids
        self.targets: tuple[Target, ...] = ()
        self._state: dict[tuple[Target, str], _Announcement] = {}
        self._in_flight: dict[int, tuple[Target, str]] = {}  # query ID → whose NOTIFY
        self.configure(targets)

    def configure(self, targets: Iterable[Target]) -> None:
        """New secondaries (SIGHUP): those gone are forgotten, new ones hear of the next change."""
        self.targets = tuple(dict.fromkeys(targets))
        for key in [key for key in self._state if key[0] not in self.targets]:
            self._forget_flight(self._state.pop(key))

    def changed(self, soas: Iterable[RR], now: float) -> None:
        """These zones (their new apex SOA each) have a new serial: announce it to every secondary."""
        for soa in soas:
            for target in self.targets:
                state = self._state.setdefault((target, _apex(soa)), _Announcement())
                self._forget_flight(state)  # superseded: a late answer to it no longer counts
                state.soa, state.attempts = soa, 0
                state.due = max(now, state.last_new + self.spacing)

    def deadline(self) -> float | None:
        """When `poll` has something to do next (None: nothing pending)."""
        due = min((state.due for state in self._state.values() if state.soa is not None), default=math.inf)
        return None if due == math.inf else due

    def poll(self, now: float) -> tuple[list[Datagram], list[Outcome]]:
        """What is due by `now`: NOTIFYs to send (first tries and retransmissions), and those given up."""
        out: list[Datagram] = []
        ended: list[Outcome] = []
        for (target, apex), state in self._state.items():
            if state.soa is None or state.due > now:
                continue
            if state.attempts >= self.tries:
                ended.append(Outcome(target, apex, state.serial, "unanswered", f"{state.attempts} tries"))
                self._done(state)
                continue
            if state.qid is None:  # a new NOTIFY (a retransmission keeps its ID and bytes)
                state.qid = self._new_id()
                state.serial = _serial(state.soa)
                state.message = notify_message(state.qid, state.soa)
                self._in_flight[state.qid] = (target, apex)
                state.last_new = now
            state.attempts += 1
            state.due = now + self.timeout * 2 ** (state.attempts - 1)
            out.append(Datagram(state.message, target, apex, state.serial, state.attempts))
        return out, ended

    def received(self, data: bytes, source: Target) -> Outcome | None:
        """A datagram on the NOTIFY socket: the answer to a NOTIFY in flight, or None (ignored)."""
        if len(data) < 12 or not data[2] & 0x80 or (data[2] >> 3) & 0xF != NOTIFY_OPCODE:
            return None
        key = self._in_flight.get(data[0] << 8 | data[1])
        if key is None or key[0] != source:
            return None
        target, apex = key
        try:
            reply = DNSRecord.parse(data)
            asked = [(str(q.qname).rstrip(".").lower(), q.qtype) for q in reply.questions]
        except Exception:  # not a DNS message we can read: not the answer
            return None
        if asked and asked != [(apex, QTYPE.SOA)]:  # RFC 1996 wants the question echoed; some omit it
            return None
        state = self._state[key]
        rcode = reply.header.rcode
        outcome = Outcome(target, apex, state.serial, "answered" if rcode == RCODE.NOERROR else "error",
                          "" if rcode == RCODE.NOERROR else RCODE.get(rcode, str(rcode)))
        self._done(state)
        return outcome

    def _done(self, state: _Announcement) -> None:
        self._forget_flight(state)
        state.soa, state.attempts, state.due = None, 0, math.inf

    def _forget_flight(self, state: _Announcement) -> None:
        if state.qid is not None:
            self._in_flight.pop(state.qid, None)
            state.qid = None

    def _new_id(self) -> int:
        while True:
            qid = self._ids() & 0xFFFF
            if qid not in self._in_flight:
                return qid


def notify_source(listen: Iterable[str], server_ip: str) -> str:
    """The address NOTIFYs leave from: the appliance's, which secondaries know as their primary
    (they take NOTIFY from it alone), unless DNS listens only elsewhere."""
    addresses = list(listen)
    if not addresses or server_ip in addresses or "0.0.0.0" in addresses:
        return server_ip
    return addresses[0]

