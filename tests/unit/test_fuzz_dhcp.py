"""Fuzzing the DHCP core with hypothesis: no byte string, however crafted, raises out of it."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidus_appliance.config import parse_config
from sidus_appliance.dhcp.codec import parse
from sidus_appliance.dhcp.leases import InMemoryLeaseStore
from sidus_appliance.dhcp.server import DhcpServer

CONFIG = parse_config("""
interface: eth1
address: 10.20.17.254/24
domain: sidus.zone
dhcp:
  pool: {start: 10.20.17.10, end: 10.20.17.14}
hosts:
  - {name: master, mac: "08:00:aa:bb:cc:dd", address: 10.20.17.253, profile: master}
""")
MAGIC = b"\x63\x82\x53\x63"

option = st.tuples(st.integers(1, 254), st.binary(max_size=40)).map(lambda o: bytes((o[0], len(o[1]))) + o[1])
message_type = st.integers(0, 20).map(lambda t: b"\x35\x01" + bytes((t,)))
# Structurally plausible packets: a real header with random fields, the magic cookie, options
# that mostly parse (types, lengths, PXE options, truncation, no END), to go past the codec.
plausible = st.builds(
    lambda op, xid, flags, ciaddr, giaddr, hops, mac, opts, end: (
        struct.pack("!BBBBIHH4s4s4s4s", op, 1, 6, hops, xid, 0, flags, ciaddr, b"\0" * 4, b"\0" * 4, giaddr)
        + mac + bytes(10) + bytes(192) + MAGIC + b"".join(opts) + end
    ),
    st.sampled_from([1, 1, 1, 2]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 0x8000]),
    st.sampled_from([b"\0" * 4, bytes([10, 20, 17, 12]), bytes([192, 0, 2, 1])]),
    st.sampled_from([b"\0" * 4, bytes([10, 20, 17, 1]), bytes([198, 51, 100, 1])]),
    st.integers(0, 255),
    st.sampled_from([bytes.fromhex("525400000001"), bytes.fromhex("080000aabbccdd"[:12]), bytes(6)]),
    st.lists(st.one_of(message_type, option, st.just(b"\x5d\x02\x00\x07"), st.just(b"\x32\x04\x0a\x14\x11\x0a"),
                       st.just(b"\x36\x04\x0a\x14\x11\xfe")), max_size=12),
    st.sampled_from([b"\xff", b"", b"\xff\x00\x00"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=700), plausible), st.floats(0, 2**33, allow_nan=False))
def test_no_input_raises_out_of_the_core(data: bytes, now: float) -> None:
    server = DhcpServer(CONFIG, InMemoryLeaseStore())
    replies, decision = server.handle(data, now)
    assert not decision.error, decision.reason  # a crafted packet is a decision, never a bug
    for reply in replies:
        parse(reply.data)  # what we send is itself well formed


@settings(max_examples=200, deadline=None)
@given(st.lists(plausible, min_size=1, max_size=30))
def test_sequences_keep_the_lease_table_consistent(packets: list[bytes]) -> None:
    store = InMemoryLeaseStore()
    server = DhcpServer(CONFIG, store)
    for n, data in enumerate(packets):
        _, decision = server.handle(data, 1_700_000_000.0 + n)
        assert not decision.error, decision.reason
    by_address = {lease.address: lease.mac for lease in store.all()}
    assert len(by_address) == len(store.all()), "two leases share an address"

