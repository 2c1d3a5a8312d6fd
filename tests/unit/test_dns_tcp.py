"""The DNS TCP budget (sans-IO, time passed in): per-source cap, total cap with eviction of the
biggest holder's longest-idle connection, per-wait timeout (slowloris) and bounded lifetime."""

from __future__ import annotations

from sidus_appliance.dns.tcp import TcpConn, TcpPool


def pool(total: int = 4, per_source: int = 2, timeout: float = 10.0, lifetime: float = 30.0) -> TcpPool:
    return TcpPool(total, per_source, timeout, lifetime)


def admitted(p: TcpPool, source: str, now: float = 0.0) -> TcpConn:
    admission = p.admit(source, now)
    assert admission.conn is not None, admission.reason
    return admission.conn


def test_per_source_cap_refuses_the_next_one_and_frees_on_release() -> None:
    p = pool(per_source=2)
    first, _ = admitted(p, "a"), admitted(p, "a")
    refused = p.admit("a", 0.0)
    assert refused.conn is None and refused.evicted is None and "tcp_max_per_client" in refused.reason
    p.release(first)
    p.release(first)  # idempotent: an evicted connection is released before it reports its close
    assert p.by_source["a"] == 1 and len(p) == 1
    admitted(p, "a")


def test_full_pool_makes_room_for_a_new_source_from_the_biggest_holder() -> None:
    p = pool(total=4, per_source=3)
    a1 = admitted(p, "a", now=1.0)
    a2 = admitted(p, "a", now=2.0)
    a3 = admitted(p, "a", now=3.0)
    admitted(p, "b", now=4.0)
    p.waiting(a1, 5.0)  # a1 just answered a query: a2 is now the one idle the longest
    admission = p.admit("c", 6.0)
    assert admission.conn is not None and admission.evicted is a2
    assert p.by_source == {"a": 2, "b": 1, "c": 1} and len(p) == 4
    assert a3 in p.conns and a2 not in p.conns


def test_full_pool_refuses_a_newcomer_already_among_the_biggest_holders() -> None:
    p = pool(total=4, per_source=4)
    for source in "abcd":
        admitted(p, source)
    refused = p.admit("a", 1.0)  # everyone holds one: taking another's slot would only churn
    assert refused.conn is None and "tcp_max_connections" in refused.reason
    assert len(p) == 4


def test_many_sources_flooding_never_keep_a_new_client_out() -> None:
    """Attackers from 20 sources reconnect as fast as they are closed (7 each, 140 > 128); each
    newcomer of theirs may only displace their own, and a new client gets a slot and keeps it."""
    p = pool(total=128, per_source=8)
    attackers = [f"10.0.0.{n}" for n in range(20)]
    clock = 0.0
    for n in range(1000):
        clock += 0.01
        p.admit(attackers[n % 20], clock)
    assert len(p) == 128
    clock += 0.01
    dig = admitted(p, "10.20.17.7", clock)
    for n in range(1000):  # the flood goes on while dig waits for its answer
        clock += 0.01
        p.admit(attackers[n % 20], clock)
    assert dig in p.conns and len(p) == 128 and max(p.by_source.values()) <= 7


def test_a_new_source_gets_in_even_when_every_slot_has_its_own_source() -> None:
    p = pool(total=16, per_source=8)
    for n in range(16):
        admitted(p, f"10.0.0.{n}", now=float(n))
    admission = p.admit("10.20.17.7", 20.0)
    assert admission.conn is not None and admission.evicted is not None
    assert admission.evicted.source == "10.0.0.0"  # the one idle the longest


def test_busy_connections_are_not_evicted_nor_timed_out() -> None:
    p = pool(total=2, per_source=2)
    a1, a2 = admitted(p, "a"), admitted(p, "a")
    a1.busy = a2.busy = True  # both waiting for an upstream answer
    assert p.admit("b", 1.0).conn is None
    assert p.expired(100.0) == []
    p.waiting(a1, 100.0)  # answered: the timers apply again, and it lived past its lifetime
    assert p.expired(100.0) == [a1]


def test_slowloris_trickle_does_not_extend_the_wait() -> None:
    """`waiting` is called at a message's first byte and after an answer, never per byte."""
    p = pool(timeout=10.0, lifetime=30.0)
    conn = admitted(p, "a", now=0.0)
    p.waiting(conn, 1.0)  # first byte of a message at t=1; one byte a second follows, no call
    assert p.expired(10.9) == []
    assert p.expired(11.0) == [conn]


def test_a_query_every_seven_seconds_holds_a_slot_no_longer_than_the_lifetime() -> None:
    p = pool(timeout=10.0, lifetime=30.0)
    conn = admitted(p, "a", now=0.0)
    expired_at = None
    for step in range(1, 10):
        now = 7.0 * step
        if conn in p.expired(now):
            expired_at = now
            break
        p.waiting(conn, now)  # a query arrived and was answered
    assert expired_at == 35.0  # the first check after 30 s of life
