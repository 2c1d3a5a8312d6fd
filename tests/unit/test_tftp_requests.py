"""The sans-IO request policy: the decision table, caps, reclaiming, the first-ACK deadline."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from sidus_appliance.tftp import protocol as p
from sidus_appliance.tftp.requests import Action, Policy, RequestCore

POLICY = Policy(max_transfers=6, max_per_client=3, first_ack_deadline=7.0, reclaim_after=1.0)


@dataclass(eq=False)
class FakeTransfer:
    acknowledged: bool = False
    done: bool = False


def rrq(name: str = "f", opcode: int = p.RRQ, **options: object) -> bytes:
    body = name.encode() + b"\0octet\0" + b"".join(f"{k}\0{v}\0".encode() for k, v in options.items())
    return struct.pack("!H", opcode) + body


def start(core: RequestCore, addr: tuple[str, int], now: float = 0.0, data: bytes | None = None,
          ) -> tuple[FakeTransfer, list]:
    """A request that must start a transfer; the service's part done by hand."""
    data = data or rrq()
    decision = core.receive(data, addr, now)
    assert decision.action is Action.START, decision
    transfer = FakeTransfer()
    return transfer, core.started(addr, transfer, data, now, decision)


@pytest.fixture
def core() -> RequestCore:
    return RequestCore(POLICY)


A = ("10.0.0.1", 1000)
B = ("10.0.0.2", 2000)


@pytest.mark.parametrize("opcode", [p.DATA, p.ACK, p.ERROR, p.OACK])
def test_strays_for_old_transfers_are_ignored_silently(core, opcode):
    decision = core.receive(struct.pack("!HH", opcode, 1), A, 0.0)
    assert decision.action is Action.IGNORE and not decision.reason


def test_write_requests_are_refused(core):
    decision = core.receive(rrq("upload", opcode=p.WRQ), A, 0.0)
    assert decision.action is Action.REFUSE and decision.code == p.ERR_ACCESS
    assert decision.reason == "write request" and decision.warn and "'upload'" in decision.note
    assert not core.transfers


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x01", b"\x00\x01f\x00", b"\x00\x09x\x00octet\x00",
                                  b"\x00\x01f\x00mail\x00"])
def test_bad_requests_are_refused_with_the_parser_error(core, data):
    decision = core.receive(data, A, 0.0)
    assert decision.action is Action.REFUSE and decision.reason == "bad request" and not decision.warn
    assert decision.code in (p.ERR_ILLEGAL, p.ERR_ACCESS)


def test_a_request_starts_a_transfer(core):
    transfer, ended = start(core, A)
    assert ended == [] and core.transfers[A].handle is transfer and core.running(A[0]) == 1


def test_same_request_again_is_rechecked_once_while_unanswered(core):
    transfer, _ = start(core, A)
    assert core.receive(rrq(), A, 0.1).action is Action.RECHECK
    assert core.receive(rrq(), A, 0.12, recheck=True).action is Action.IGNORE
    transfer.acknowledged = True
    assert core.receive(rrq(), A, 0.2).action is Action.IGNORE  # the running transfer answers it


def test_same_request_again_after_its_transfer_ended_starts_anew(core):
    """EDK II: tsize probe, ERROR 8 to the old port, the same request again."""
    transfer, _ = start(core, A)
    assert core.receive(rrq(), A, 0.1).action is Action.RECHECK
    transfer.done = True  # the pump ended it (the client's ERROR)
    decision = core.receive(rrq(), A, 0.12, recheck=True)
    assert decision.action is Action.START and decision.cancel == ()
    again = FakeTransfer()
    core.started(A, again, rrq(), 0.12, decision)
    assert core.transfers[A].handle is again and core.running(A[0]) == 1
    assert not core.finished(A, transfer)  # the old one's end comes late: it is no longer listed
    assert core.transfers[A].handle is again


def test_another_request_from_the_same_port_replaces_the_transfer(core):
    old, _ = start(core, A)
    decision = core.receive(rrq("g"), A, 0.5)
    assert decision.action is Action.START and decision.cancel == (old,)
    assert A not in core.transfers  # gone at once: the client moved on, even if g is missing
    new = FakeTransfer()
    core.started(A, new, rrq("g"), 0.5, decision)
    assert core.transfers[A].handle is new and core.running(A[0]) == 1


def test_per_client_cap(core):
    for port in range(3):
        start(core, ("10.0.0.1", port))
    decision = core.receive(rrq(), ("10.0.0.1", 99), 0.0)
    assert decision.action is Action.REFUSE and decision.message == "too many transfers"
    assert decision.reason == "too many transfers" and decision.warn
    start(core, B)  # another host is not affected
    # a transfer that ended (its finished() on its way) does not count against its host
    core.transfers[("10.0.0.1", 0)].handle.done = True
    start(core, ("10.0.0.1", 99))


def test_a_replaced_transfer_does_not_count_against_the_cap(core):
    for port in range(3):
        start(core, ("10.0.0.1", port))
    assert core.receive(rrq("other"), ("10.0.0.1", 0), 0.0).action is Action.START


def test_total_cap_reclaims_the_oldest_unanswered_transfer(core):
    hosts = [(f"10.0.1.{n}", 1) for n in range(6)]
    transfers = [start(core, addr, now=float(n) / 10)[0] for n, addr in enumerate(hosts)]
    transfers[0].acknowledged = True  # a live client is never reclaimed
    decision = core.receive(rrq(), B, 0.5)
    assert decision.action is Action.REFUSE and decision.reason == "busy"  # none older than 1 s
    decision = core.receive(rrq(), B, 1.15)  # hosts[1] started at 0.1: the oldest unanswered
    assert decision.action is Action.START and decision.reclaim is transfers[1]
    newcomer = FakeTransfer()
    assert core.started(B, newcomer, rrq(), 1.15, decision) == [transfers[1]]
    assert hosts[1] not in core.transfers and len(core) == 6
    assert not core.finished(hosts[1], transfers[1])


def test_total_cap_prefers_an_ended_transfer(core):
    transfers = [start(core, (f"10.0.1.{n}", 1))[0] for n in range(6)]
    transfers[4].done = True
    decision = core.receive(rrq(), B, 5.0)
    assert decision.reclaim is transfers[4]


def test_total_cap_busy_when_every_transfer_is_alive(core):
    for n in range(6):
        start(core, (f"10.0.1.{n}", 1))[0].acknowledged = True
    decision = core.receive(rrq(), B, 100.0)
    assert decision.action is Action.REFUSE and decision.message == "server busy, try again"


def test_a_refused_request_reclaims_nothing(core):
    """The reclaim happens only once the new transfer runs (a missing file frees no slot)."""
    transfers = [start(core, (f"10.0.1.{n}", 1))[0] for n in range(6)]
    decision = core.receive(rrq("missing"), B, 5.0)
    assert decision.reclaim is transfers[0] and len(core) == 6  # the service found no file: no started()


def test_first_ack_deadline(core):
    quiet, _ = start(core, A, now=0.0)
    talker, _ = start(core, B, now=1.0)
    talker.acknowledged = True
    assert core.next_deadline() == 7.0
    assert core.expired(6.9) == []
    assert core.expired(7.0) == [(A, quiet)]
    assert A not in core.transfers and B in core.transfers
    assert core.next_deadline() is None  # the talker answered: not on the clock
    assert core.expired(100.0) == []


def test_deadline_of_a_transfer_that_left_is_dropped(core):
    first, _ = start(core, A, now=0.0)
    assert core.finished(A, first)
    second, _ = start(core, A, now=3.0)  # same port, a later transfer
    assert core.next_deadline() == 10.0
    assert core.expired(7.0) == []  # the first one's deadline does not end the second
    assert core.expired(10.0) == [(A, second)]


def test_policy_from_limits():
    policy = Policy.from_limits(1000, 8, 1.0)
    assert (policy.first_ack_deadline, policy.reclaim_after) == (7.0, 1.0)


def test_clear(core):
    transfers = [start(core, (f"10.0.1.{n}", 1))[0] for n in range(3)]
    assert core.clear() == transfers and not core.transfers and core.next_deadline() is None
