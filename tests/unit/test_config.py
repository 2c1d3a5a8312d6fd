"""Config validation: every bad config gets one clear message naming the key (and line)."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from sidus_appliance.config import INFINITE_LEASE, ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
BASE = "interface: eth1\naddress: 10.20.17.254/24\ndomain: sidus.zone\n"


def test_example_is_the_seed_lab() -> None:
    config = load_config(EXAMPLE)
    assert config.interface == "eth1"
    assert str(config.address) == "10.20.17.254/24"
    assert str(config.subnet) == "10.20.17.0/24"
    assert config.gateway == IPv4Address("10.20.17.254")
    assert config.dns_servers == (IPv4Address("10.20.17.254"),)
    assert config.domain == "sidus.zone"
    assert config.reverse_zone == "17.20.10.in-addr.arpa"
    assert config.dhcp.lease_time == INFINITE_LEASE
    pool = config.dhcp.pool
    assert pool is not None and pool.name_for(IPv4Address("10.20.17.42")) == "dhcp-42"
    (master,) = config.hosts
    assert (master.name, master.mac, str(master.address), master.profile) == (
        "master",
        "08:00:aa:bb:cc:dd",
        "10.20.17.253",
        "master",
    )
    assert [config.dhcp.boot_file_for(a) for a in (0, 6, 7, 9, 11, None)] == [
        "pxelinux.0",
        "efi32/syslinux.efi",
        "efi64/syslinux.efi",
        "efi64/syslinux.efi",
        "pxelinux.0",
        "pxelinux.0",
    ]
    assert config.tftp.root == Path("/srv/tftp")
    assert config.state_dir == Path("/var/lib/sidus-appliance")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE + "hosts:\n  - {name: m, mac: 08:00:aa:bb:cc:dd, address: 10.20.18.5}\n",
            "cfg.yaml:5: hosts[0].address: 10.20.18.5 is outside the subnet 10.20.17.0/24",
        ),
        (
            BASE + "dhcp:\n  pool: {start: 10.20.17.10, end: 10.20.17.20}\n"
            "hosts:\n  - {name: m, mac: 08:00:aa:bb:cc:dd, address: 10.20.17.15}\n",
            "cfg.yaml:7: hosts[0].address: 10.20.17.15 lies inside the dynamic pool 10.20.17.10-10.20.17.20",
        ),
        (
            BASE + "hosts:\n  - name: m\n    mac: 08:00:aa:bb:cc\n    address: 10.20.17.5\n",
            "cfg.yaml:6: hosts[0].mac: '08:00:aa:bb:cc' is not a MAC address",
        ),
        (
            BASE + "dhcp:\n  pool: {start: 10.20.17.10, end: 10.20.17.20}\n  lease: 5\n",
            "cfg.yaml:6: dhcp.lease: unknown key",
        ),
        (BASE + "colour: blue\n", "cfg.yaml:4: colour: unknown key"),
        ("address: 10.20.17.254/24\ndomain: sidus.zone\n", "interface: is required"),
        (
            BASE + "dhcp:\n  pool: {start: 10.20.17.30, end: 10.20.17.20}\n",
            "cfg.yaml:5: dhcp.pool.end: 10.20.17.20 is before pool.start 10.20.17.30",
        ),
        (
            BASE + "dhcp:\n  pool: {start: 10.20.16.30, end: 10.20.17.20}\n",
            "cfg.yaml:5: dhcp.pool.start: 10.20.16.30 is outside the subnet 10.20.17.0/24",
        ),
        (
            BASE + "hosts:\n  - {name: a, mac: 08:00:aa:bb:cc:dd, address: 10.20.17.5}\n"
            "  - {name: b, mac: 08-00-AA-BB-CC-DD, address: 10.20.17.6}\n",
            "cfg.yaml:6: hosts[1].mac: 08:00:aa:bb:cc:dd is already reserved for a",
        ),
        (
            BASE + "hosts:\n  - {name: a, mac: 08:00:aa:bb:cc:dd, address: 10.20.17.254}\n",
            "hosts[0].address: 10.20.17.254 is the appliance's own address",
        ),
        (BASE + "dhcp:\n  port: 70000\n", "cfg.yaml:5: dhcp.port: 70000 is out of range"),
        (BASE + "tftp:\n  enabled: yes please\n", "cfg.yaml:5: tftp.enabled: 'yes please' is not true or false"),
        (
            BASE + "dns:\n  records:\n    - {name: x, type: AAAA, value: '::1'}\n",
            "cfg.yaml:6: dns.records[0].type: 'AAAA' is not supported",
        ),
        ("interface: eth1\naddress: 10.20.17.254\ndomain: sidus.zone\n", "address: needs a prefix length"),
        (BASE + "hosts: [\n", "cfg.yaml:5: invalid YAML"),
    ],
)
def test_bad_configs_name_the_key_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml")
    assert message in str(caught.value)


def test_check_command_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "hosts:\n  - {name: m, mac: zz, address: 10.20.17.5}\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidus_appliance.cli", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}:5: hosts[0].mac: 'zz' is not a MAC address" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "sidus_appliance.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "hosts[0].mac" in result.stderr
    assert "ready" not in result.stderr


def test_check_prints_effective_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidus_appliance.cli", "check", "--config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "host:        master 08:00:aa:bb:cc:dd 10.20.17.253 profile=master" in result.stdout
    assert "arch 7     -> efi64/syslinux.efi" in result.stdout
    assert "config OK" in result.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
