"""NOTIFY out (RFC 1996), sans-IO: the message bytes (read back with scapy, an independent
decoder), and the policy driven by an explicit clock: at once, spaced during a storm, retried
with backoff until answered, bounded, answers matched by ID, source and zone."""

from __future__ import annotations

import itertools

from dnslib import QTYPE, RCODE, RR, DNSRecord
from scapy.layers.dns import DNS

from sidus_appliance.dns.notify import NOTIFY_TRIES, Datagram, Notifier, notify_message, notify_source
from sidus_appliance.dns.zone import ZoneBuilder

from .test_dns_helpers import config

BIND, KNOT = ("10.20.17.250", 53), ("10.20.17.251", 5353)
FORWARD, REVERSE = "sidus.zone", "17.20.10.in-addr.arpa"
BUILDER = ZoneBuilder()
CONFIG = config()


def soas(serial: int, apexes: tuple[str, ...] = (FORWARD, REVERSE)) -> list[RR]:
    zone = BUILDER.build(CONFIG, (), serial)
    return [zone.soa(apex) for apex in apexes]


def notifier(targets: tuple[tuple[str, int], ...] = (BIND, KNOT), **kwargs: object) -> Notifier:
    ids = itertools.count(0x100)
    return Notifier(targets, ids=lambda: next(ids), **kwargs)  # type: ignore[arg-type]


def answer(datagram: Datagram, rcode: int = RCODE.NOERROR, *, qid: int | None = None, question: bool = True) -> bytes:
    """What a secondary sends back: the NOTIFY with QR set, its question echoed, no answer."""
    request = DNSRecord.parse(datagram.data)
    reply = request.reply()
    reply.rr = []
    reply.header.rcode = rcode
    reply.header.aa = 0
    if qid is not None:
        reply.header.id = qid
    if not question:
        reply.questions = []
    return bytes(reply.pack())


def test_notify_message_bytes() -> None:
    (soa,) = soas(2024, (FORWARD,))
    data = notify_message(0xBEEF, soa)
    assert data[:12] == bytes.fromhex("beef" "2400" "0001" "0001" "0000" "0000")  # opcode 4, AA; QD=1 AN=1
    parsed = DNS(data)  # scapy, an independent decoder
    assert (parsed.id, parsed.qr, parsed.opcode, parsed.aa, parsed.rd) == (0xBEEF, 0, 4, 1, 0)
    assert parsed.qd[0].qname == b"sidus.zone." and parsed.qd[0].qtype == QTYPE.SOA and parsed.qd[0].qclass == 1
    assert parsed.an[0].rrname == b"sidus.zone." and parsed.an[0].serial == 2024
    assert parsed.an[0].mname == b"gateway.sidus.zone."


def test_a_change_is_announced_at_once_to_every_secondary_for_every_changed_zone() -> None:
    n = notifier()
    assert n.deadline() is None and n.poll(0.0) == ([], [])
    n.changed(soas(7), now=10.0)
    assert n.deadline() == 10.0
    sent, ended = n.poll(10.0)
    assert ended == [] and sorted((d.target, d.apex, d.serial, d.attempt) for d in sent) == [
        (BIND, REVERSE, 7, 1), (BIND, FORWARD, 7, 1), (KNOT, REVERSE, 7, 1), (KNOT, FORWARD, 7, 1)]
    assert len({d.data[:2] for d in sent}) == 4  # one ID each
    assert n.poll(10.5) == ([], []) and n.deadline() == 11.0


def test_an_answer_ends_it_and_nothing_is_sent_again() -> None:
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    (sent,), _ = n.poll(0.0)
    outcome = n.received(answer(sent), BIND)
    assert outcome is not None and (outcome.result, outcome.apex, outcome.serial) == ("answered", FORWARD, 7)
    assert n.deadline() is None and n.poll(100.0) == ([], [])
    assert n.received(answer(sent), BIND) is None  # a duplicate answer: nothing in flight any more


def test_answers_missing_the_question_still_count() -> None:
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    (sent,), _ = n.poll(0.0)
    outcome = n.received(answer(sent, question=False), BIND)
    assert outcome is not None and outcome.result == "answered"


def test_unanswered_is_retried_with_backoff_then_given_up() -> None:
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    times, data = [], set()
    now = 0.0
    while (deadline := n.deadline()) is not None:
        now = deadline
        sent, ended = n.poll(now)
        times += [now] * len(sent)
        data |= {d.data for d in sent}
        if ended:
            assert [(e.result, e.target, e.serial) for e in ended] == [("unanswered", BIND, 7)]
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0] and len(times) == NOTIFY_TRIES
    assert now == 31.0 and len(data) == 1  # retransmissions are the same datagram, same ID


def test_what_is_not_the_answer_is_ignored() -> None:
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    (sent,), _ = n.poll(0.0)
    good = answer(sent)
    qid = good[0] << 8 | good[1]
    other_zone = bytearray(good)
    other_zone[13:13 + 5] = b"sidux"
    for data, source in [
        (good, ("10.20.17.9", 53)),  # another address
        (good, (BIND[0], 5353)),  # another port
        (answer(sent, qid=qid ^ 1), BIND),  # another ID
        (sent.data, BIND),  # QR clear: our own NOTIFY reflected
        (good[:2] + bytes((good[2] & 0x87,)) + good[3:], BIND),  # opcode QUERY, not NOTIFY
        (bytes(other_zone), BIND),  # another zone
        (good[:11], BIND),  # a runt
        (good[:12] + b"\xff" * 9, BIND),  # unreadable
    ]:
        assert n.received(data, source) is None
    assert n.deadline() == 1.0  # still waiting
    assert n.received(good, BIND) is not None


def test_an_error_rcode_is_reported_and_not_retried() -> None:
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    (sent,), _ = n.poll(0.0)
    outcome = n.received(answer(sent, RCODE.REFUSED), BIND)
    assert outcome is not None and (outcome.result, outcome.detail) == ("error", "REFUSED")
    assert n.deadline() is None


def test_a_storm_is_a_few_notifies_and_the_last_carries_the_final_serial() -> None:
    """50 zone rebuilds 0.1 s apart (what REBUILD_DELAY allows at most), both secondaries answering."""
    n = notifier()
    sent: list[Datagram] = []
    for step in range(50):
        now = step * 0.1
        n.changed(soas(1000 + step), now)
        while (deadline := n.deadline()) is not None and deadline <= now:
            out, _ = n.poll(now)
            sent += out
            for datagram in out:
                assert n.received(answer(datagram), datagram.target) is not None
    while (deadline := n.deadline()) is not None:
        out, _ = n.poll(deadline)
        sent += out
        for datagram in out:
            n.received(answer(datagram), datagram.target)
    for target, apex in itertools.product((BIND, KNOT), (FORWARD, REVERSE)):
        mine = [d for d in sent if (d.target, d.apex) == (target, apex)]
        assert len(mine) == 6  # at 0, 1, 2, 3, 4 and 5 s: one per NOTIFY_SPACING
        assert mine[-1].serial == 1049 and all(d.attempt == 1 for d in mine)


def test_a_change_replaces_an_unanswered_notify_spaced_and_bounded() -> None:
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    (first,), _ = n.poll(0.0)
    n.changed(soas(8, (FORWARD,)), now=0.2)
    assert n.deadline() == 1.0  # not before the spacing, whatever the retransmission timer said
    assert n.received(answer(first), BIND) is None  # superseded: its answer no longer counts
    (second,), _ = n.poll(1.0)
    assert (second.serial, second.attempt) == (8, 1) and second.data[:2] != first.data[:2]
    # A dead secondary through a 10 s storm: one datagram per spacing, then the tries of the last change.
    count, now = 0, 1.0
    for step in range(1, 100):
        now = 1.0 + step * 0.1
        n.changed(soas(8 + step, (FORWARD,)), now)
        count += len(n.poll(now)[0])
    assert count <= 10
    while (deadline := n.deadline()) is not None:
        count += len(n.poll(deadline)[0])
    assert count <= 10 + NOTIFY_TRIES


def test_spacing_counts_from_the_last_new_notify_not_from_retransmissions() -> None:
    """A secondary down when we started: retransmissions go on, a change is not held back by them."""
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    assert [d.attempt for d in n.poll(0.0)[0]] == [1]
    assert [d.attempt for d in n.poll(1.0)[0]] == [2]
    n.changed(soas(8, (FORWARD,)), now=1.2)
    assert [(d.serial, d.attempt) for d in n.poll(1.2)[0]] == [(8, 1)]


def test_reconfigured_targets() -> None:
    n = notifier((BIND,))
    n.changed(soas(7, (FORWARD,)), now=0.0)
    (sent,), _ = n.poll(0.0)
    n.configure((KNOT,))
    assert n.received(answer(sent), BIND) is None and n.deadline() is None
    n.changed(soas(8, (FORWARD,)), now=5.0)
    assert [(d.target, d.serial) for d in n.poll(5.0)[0]] == [(KNOT, 8)]


def test_notify_source_is_the_address_secondaries_know() -> None:
    assert notify_source([], "10.20.17.254") == "10.20.17.254"
    assert notify_source(["10.20.17.254", "127.0.0.1"], "10.20.17.254") == "10.20.17.254"
    assert notify_source(["0.0.0.0"], "10.20.17.254") == "10.20.17.254"
    assert notify_source(["127.0.0.1"], "10.20.17.254") == "127.0.0.1"
