"""Sans-IO TFTP request policy: what the listener does with each datagram, and which running
transfer gives its slot up. Everything that decides it lives here; no sockets, no clock (the
caller passes `now`), no files. `service.py` only carries the decisions out.

A datagram at the listener (port 69), from `addr` = (host, port):

    datagram                                              decision
    ----------------------------------------------------  ----------------------------------------
    DATA, ACK, ERROR or OACK (a stray for an old transfer) IGNORE: answering could loop
    not a valid request                                   REFUSE with the parser's error  (info)
    WRQ                                                   REFUSE: access violation       (warning)
    the same RRQ again from addr, its transfer unanswered RECHECK once, RECHECK_DELAY later
    the same RRQ again from addr, transfer running        IGNORE: the running transfer answers it
    another RRQ from addr while a transfer runs           START, cancelling the old transfer
    host already runs max_per_client transfers            REFUSE: "too many transfers"   (warning)
    max_transfers running, one ended or unanswered for    START, reclaiming its slot (an ended one
      reclaim_after seconds                                 first, else the oldest unanswered)
    max_transfers running, none reclaimable               REFUSE: "server busy"          (warning)
    otherwise                                             START

"Unanswered": the client never acknowledged anything (not the OACK, not a block). A real client
answers within a round trip; a slot held by one that does not answer is what a flood of RRQs
without ACKs is made of. Such a transfer also loses its slot on its own `first_ack_deadline`
after it started (`expired`), instead of the minute its retransmissions would last.

Why the duplicate cases: a client whose timer fired before it read our first packet sends the
same RRQ again. The transfer running for it answers (the client is connected to that transfer's
port by then; cancelling it stranded clients mid-file in the storm bench). But EDK II, after its
tsize probe, sends ERROR 8 to the old port and then the same request again: that transfer is
ending on the pump, so an unanswered one is looked at again a moment later.

"Ended": the pump thread ended it and its `finished` call is on its way to the loop; it counts
against no cap. Every refusal carries a `reason`: the caller rate-limits its log lines per
(reason, host).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from sidus_appliance.tftp import protocol

Address = tuple[str, int]
RECHECK_DELAY = 0.02  # seconds
STRAY_OPCODES = (protocol.DATA, protocol.ACK, protocol.ERROR, protocol.OACK)


class Handle(Protocol):
    """What the core needs to know of a running transfer (service._Transfer)."""

    @property
    def acknowledged(self) -> bool: ...  # the client acknowledged the OACK or a block

    @property
    def done(self) -> bool: ...  # ended; its `finished` call is on its way


class Action(enum.Enum):
    IGNORE = "ignore"
    REFUSE = "refuse"  # send ERROR(code, message) from the error port
    RECHECK = "recheck"  # call receive(..., recheck=True) again after RECHECK_DELAY
    START = "start"  # resolve the file, start the transfer, then call started()


@dataclass(frozen=True)
class Decision:
    action: Action
    request: protocol.Request | None = None
    code: int = 0
    message: str = ""  # for the client
    reason: str = ""  # rate-limit key and log wording; "" = nothing to log
    note: str = ""  # for the log
    warn: bool = True  # log level: warning, else info
    cancel: tuple[Handle, ...] = ()  # end these now: replaced by this request
    reclaim: Handle | None = None  # end this one when the transfer starts: its slot is taken


IGNORE = Decision(Action.IGNORE)
RECHECK = Decision(Action.RECHECK)


@dataclass(frozen=True)
class Policy:
    max_transfers: int = 1000
    max_per_client: int = 8
    first_ack_deadline: float = 7.0  # an unanswered transfer's slot is free after this
    reclaim_after: float = 1.0  # ...or after this when every slot is taken (one retransmission)

    @classmethod
    def from_limits(cls, max_transfers: int, max_per_client: int, timeout: float) -> Policy:
        # The first packet, then retransmissions after timeout and 2 x timeout: three chances
        # in 7 x timeout (a Session alone would keep trying for 63 x timeout).
        return cls(max_transfers, max_per_client, first_ack_deadline=7 * timeout, reclaim_after=timeout)


@dataclass
class _Entry:
    handle: Handle
    request: bytes
    started: float


class RequestCore:
    """The table of running transfers and the decisions about new requests."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.transfers: dict[Address, _Entry] = {}  # insertion order = start order
        self._by_host: dict[str, dict[Address, _Entry]] = {}
        self._unanswered: deque[tuple[float, Address, Handle]] = deque()  # by first-ACK deadline

    def __len__(self) -> int:
        return len(self.transfers)

    def running(self, host: str, besides: Address | None = None) -> int:
        """Transfers of `host` still running (ended ones whose finished() is still to come do not
        count), besides the one from `besides`."""
        entries = self._by_host.get(host, {})
        if len(entries) < self.policy.max_per_client:  # the common case: no need to look closer
            return len(entries)
        return sum(1 for addr, entry in entries.items() if addr != besides and not entry.handle.done)

    # ------------------------------------------------------------------ requests

    def receive(self, data: bytes, addr: Address, now: float, recheck: bool = False) -> Decision:
        """Decide what a datagram at the listener does."""
        if len(data) >= 2 and data[0] == 0 and data[1] in STRAY_OPCODES:
            return IGNORE
        try:
            request = protocol.parse_request(data)
        except protocol.RequestError as exc:
            return Decision(Action.REFUSE, None, exc.code, exc.message, "bad request", f"bad request: {exc.message}",
                            warn=False)
        if request.opcode == protocol.WRQ:
            return Decision(Action.REFUSE, request, protocol.ERR_ACCESS, "access violation: this server is read-only",
                            "write request", f"write request for {request.filename!r} refused")
        cancel: tuple[Handle, ...] = ()
        old = self.transfers.get(addr)
        taking_over = 0  # 1: the new transfer takes the place of an ended one from the same port
        if old is not None and old.handle.done:
            taking_over = 1
        elif old is not None:
            if old.request == data:
                return RECHECK if not recheck and not old.handle.acknowledged else IGNORE
            self._remove(addr)  # the client moved on from that port
            cancel = (old.handle,)
        running = self.running(addr[0], besides=addr)
        if running >= self.policy.max_per_client:
            return Decision(Action.REFUSE, request, protocol.ERR_UNDEFINED, "too many transfers", "too many transfers",
                            f"too many transfers: {running} running for this host, {request.filename!r} refused",
                            cancel=cancel)
        reclaim = None
        if len(self.transfers) - taking_over >= self.policy.max_transfers:
            reclaim = self._reclaimable(now)
            if reclaim is None:
                return Decision(Action.REFUSE, request, protocol.ERR_UNDEFINED, "server busy, try again", "busy",
                                f"server busy: {len(self.transfers)} transfers running, {request.filename!r} refused",
                                cancel=cancel)
        return Decision(Action.START, request, cancel=cancel, reclaim=reclaim)

    def _reclaimable(self, now: float) -> Handle | None:
        """A transfer that ended (its finished() still to come), else the oldest one never
        answered for reclaim_after seconds."""
        unanswered = None
        for entry in self.transfers.values():  # oldest first
            handle = entry.handle
            if handle.done:
                return handle
            if unanswered is None and not handle.acknowledged and now - entry.started >= self.policy.reclaim_after:
                unanswered = handle
        return unanswered

    def started(self, addr: Address, handle: Handle, request: bytes, now: float, decision: Decision) -> list[Handle]:
        """The transfer a START decision asked for runs; returns the transfers to end for it."""
        ended = []
        if decision.reclaim is not None:
            for key, entry in self.transfers.items():
                if entry.handle is decision.reclaim:
                    self._remove(key)
                    ended.append(entry.handle)
                    break
        old = self.transfers.get(addr)
        if old is not None:  # an ended transfer from the same port, its finished() still to come
            self._remove(addr)
        entry = self.transfers[addr] = _Entry(handle, request, now)
        self._by_host.setdefault(addr[0], {})[addr] = entry
        self._unanswered.append((now + self.policy.first_ack_deadline, addr, handle))
        return ended

    def finished(self, addr: Address, handle: Handle) -> bool:
        """A transfer ended; False when it had already left the table (replaced, reclaimed)."""
        entry = self.transfers.get(addr)
        if entry is None or entry.handle is not handle:
            return False
        self._remove(addr)
        return True

    def _remove(self, addr: Address) -> _Entry:
        entry = self.transfers.pop(addr)
        entries = self._by_host[addr[0]]
        del entries[addr]
        if not entries:
            del self._by_host[addr[0]]
        return entry

    # ------------------------------------------------------------------ timer

    def _current(self, addr: Address, handle: Handle) -> bool:
        entry = self.transfers.get(addr)
        return entry is not None and entry.handle is handle and not handle.acknowledged and not handle.done

    def next_deadline(self) -> float | None:
        """When `expired` has something to do next (None: nothing unanswered)."""
        queue = self._unanswered
        while queue and not self._current(queue[0][1], queue[0][2]):
            queue.popleft()
        return queue[0][0] if queue else None

    def expired(self, now: float) -> list[tuple[Address, Handle]]:
        """Unanswered transfers past their first-ACK deadline: out of the table, for the caller
        to end."""
        out = []
        queue = self._unanswered
        while queue and queue[0][0] <= now:
            _, addr, handle = queue.popleft()
            if self._current(addr, handle):
                self._remove(addr)
                out.append((addr, handle))
        return out

    def clear(self) -> list[Handle]:
        """Everything, for shutdown."""
        handles = [entry.handle for entry in self.transfers.values()]
        self.transfers.clear()
        self._by_host.clear()
        self._unanswered.clear()
        return handles
