"""Attacks on the DNS service of the real appliance (issue 9, cases 7 and 9):

- names dnslib parses but cannot encode again (a 64-byte label, a name over 255 bytes), over
  UDP and TCP, from a client allowed recursion (the name outside the zones is forwarded there)
  and from one that is not, then a 2,000-packet flood of them: each gets FORMERR with its ID,
  and the log stays small and free of tracebacks;
- 128 TCP connections from one address plus 200 from 20 others, each asking once every 7 s and
  coming back when closed: `dig +tcp` from another client still gets its answers meanwhile;
- a slowloris TCP client trickling one byte a second is cut off after tcp_idle_timeout;
- TCP clients arriving while the appliance is out of descriptors (EMFILE on accept, as when
  TFTP holds most of them): one log line, no traceback, and they are served once fds are back.

Each ends with a real client served DHCP, DNS and TFTP and no traceback (checks.assert_still_serves).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sidus_appliance.lab import ClientPort, Lab, end_process

from . import checks

pytestmark = pytest.mark.integration

SERVER = checks.SERVER
SCRIPT = Path(__file__).parent / "dns_attack.py"
FORMERR, SERVFAIL = 1, 2
INSIDE, OUTSIDE = "10.20.17.5", "10.20.17.6"
DEAD_UPSTREAM = "127.0.0.1:5399"  # nothing listens: forwarded queries fail at once (SERVFAIL)
BAD_KINDS = ["long-label-zone", "long-label-outside", "long-name"]


def attack(client: ClientPort, *args: str, timeout: float = 60) -> Any:
    result = client.run([sys.executable, str(SCRIPT), *args], timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def attack_lines(log: str, *needles: str) -> list[str]:
    return [line for line in log.splitlines() if any(n in line for n in needles)]


def test_unencodable_names_get_formerr_and_a_flood_leaves_the_log_small(lab: Lab, start_appliance, tmp_path: Path
                                                                        ) -> None:
    appliance = start_appliance({"dns": {"upstream": [DEAD_UPSTREAM], "recursion_allowed": [f"{INSIDE}/32"],
                                         "forward_timeout": 1.0}})
    inside = lab.add_client(address=f"{INSIDE}/24")
    outside = lab.add_client(address=f"{OUTSIDE}/24")
    for client in (inside, outside):
        for result in attack(client, "ask", SERVER, *BAD_KINDS):
            for transport in ("udp", "tcp"):
                reply = result[transport]
                sent = result["sent_id"] + (0x100 if transport == "tcp" else 0)
                where = f"{result['kind']} over {transport} from {client.address}"
                assert reply is not None, f"no reply to {where}"
                assert reply["id"] == sent and reply["qr"] == 1, where
                assert reply["rcode"] in (FORMERR, SERVFAIL), where
    size_before = len(appliance.log())
    for client in (inside, outside):
        flood = attack(client, "flood", SERVER, "1000")
        assert flood["replies"] > 0  # answered (FORMERR), not silently dropped
    time.sleep(1)
    log = appliance.log()
    lines = attack_lines(log[size_before:], INSIDE, OUTSIDE, "label", "Label", "malformed")
    assert len(lines) < 50, f"{len(lines)} log lines for 2,000 bad packets:\n" + "\n".join(lines[:20])
    assert len(log) - size_before < 50_000
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def dig_tcp(client: ClientPort) -> str:
    result = client.run(["dig", f"@{SERVER}", "+tcp", "+time=3", "+tries=1", "+short", "gateway.sidus.zone"],
                        timeout=30)
    return result.stdout + result.stderr


def test_tcp_connections_held_from_many_sources_never_keep_dig_out(lab: Lab, start_appliance, tmp_path: Path
                                                                   ) -> None:
    # The pool ends at .99 so that the attacker's 20 addresses (.100-.119) are nobody's lease.
    appliance = start_appliance({"dhcp": {"pool": {"start": "10.20.17.10", "end": "10.20.17.99"}}})
    attacker = lab.add_client(address="10.20.17.100/24")
    sources = [f"10.20.17.{100 + n}" for n in range(20)]
    for source in sources[1:]:
        attacker.run(["ip", "addr", "add", f"{source}/24", "dev", "eth0"], check=True)
    lone = lab.add_client(address="10.20.17.120/24")
    asker = lab.add_client(address="10.20.17.7/24")
    # The attack (128 connections from one address: the per-source cap, 8), and 10
    # connections from each of 20 other addresses (the total cap, 128, fills and churns).
    holders = [attacker.popen([sys.executable, str(SCRIPT), "hold", SERVER, ",".join(sources), "10", "24", "7"],
                              stdout=-1, stderr=-1),
               lone.popen([sys.executable, str(SCRIPT), "hold", SERVER, "10.20.17.120", "128", "24", "7"],
                          stdout=-1, stderr=-1)]
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline().startswith("ready")
        answers = []
        for _ in range(4):
            answers.append(dig_tcp(asker))
            time.sleep(3)
        outputs = [holder.communicate(timeout=60) for holder in holders]
    finally:
        for holder in holders:
            end_process(holder)
    held = [json.loads(stdout.splitlines()[-1]) for stdout, _ in outputs]
    assert held[0]["max_open"] >= 128 and held[0]["answers"] > 0, outputs  # the attacks were real
    assert held[1]["opened"] >= 128 and held[1]["answers"] > 0, outputs
    for n, answer in enumerate(answers):
        assert answer.split() == [SERVER], f"dig +tcp attempt {n + 1} during the attack: {answer!r} ({held})"
    log = appliance.log()
    assert len(attack_lines(log, *sources, "10.20.17.120")) < 100
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def test_slowloris_tcp_client_is_cut_off_after_the_timeout(lab: Lab, start_appliance, tmp_path: Path) -> None:
    appliance = start_appliance({"dns": {"tcp_idle_timeout": 3}})
    client = lab.add_client(address=f"{INSIDE}/24")
    result = attack(client, "slowloris", SERVER, "9")  # 3 timeouts' worth of trickle, of a ~38 s query
    assert result["cut"], f"a client trickling 1 byte/s was not cut off in 9 s (tcp_idle_timeout 3): {result}"
    assert result["bytes_sent"] < result["message_bytes"]
    assert dig_tcp(client).split() == [SERVER]  # the same client, asking properly, is served
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def test_out_of_descriptors_on_tcp_accept_is_one_line_and_no_traceback(lab: Lab, start_appliance, tmp_path: Path
                                                                       ) -> None:
    appliance = start_appliance()
    client = lab.add_client(address=f"{INSIDE}/24")
    asker = lab.add_client(address=f"{OUTSIDE}/24")  # not the flooding source: its per-source cap is full
    assert dig_tcp(asker).split() == [SERVER]
    soft, hard = resource.prlimit(appliance.pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{appliance.pid}/fd"))
    resource.prlimit(appliance.pid, resource.RLIMIT_NOFILE, (in_use + 2, hard))  # 2 fds left: accept fails soon
    try:
        attack(client, "connections", SERVER, "30", "3")
    finally:
        resource.prlimit(appliance.pid, resource.RLIMIT_NOFILE, (soft, hard))
    accept_lines = attack_lines(appliance.log(), "accept")
    assert 1 <= len(accept_lines) <= 3, accept_lines  # it did run out, and said so once
    assert dig_tcp(asker).split() == [SERVER]
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
