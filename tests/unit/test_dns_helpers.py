"""Shared helpers for the DNS unit tests (no tests here): configs from the example, queries."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import yaml
from dnslib import EDNS0, QTYPE, DNSHeader, DNSQuestion, DNSRecord

from sidus_appliance.config import Config, parse_config
from sidus_appliance.dhcp.leases import Lease
from sidus_appliance.resources import EXAMPLE_CONFIG, data_path

EXAMPLE = data_path(*EXAMPLE_CONFIG)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config(**overrides: Any) -> Config:
    data = _merge(yaml.safe_load(EXAMPLE.read_text()), overrides)
    return parse_config(yaml.safe_dump(data), "test-config")


def lease(ip: str, hostname: str, client: str | None = None, state: str = "bound", mac: str | None = None) -> Lease:
    octet = int(ip.split(".")[3])
    return Lease(mac or f"52:54:00:00:00:{octet:02x}", IPv4Address(ip), hostname, None, state, client)


def query(name: str, qtype: str | int = "A", *, edns: int | None = None, do: bool = False, rd: bool = True,
          qid: int = 0x1234) -> bytes:
    rtype = qtype if isinstance(qtype, int) else getattr(QTYPE, qtype)
    record = DNSRecord(DNSHeader(id=qid, rd=int(rd)), q=DNSQuestion(name, rtype))
    if edns is not None:
        record.add_ar(EDNS0(udp_len=edns, flags="do" if do else ""))
    return bytes(record.pack())


def answers(reply: bytes) -> list[tuple[str, str, str]]:
    parsed = DNSRecord.parse(reply)
    return [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in parsed.rr]
