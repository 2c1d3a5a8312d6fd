"""Config validation: every bad config gets one clear message naming the key (and line)."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from sidus_appliance.config import (
    INFINITE_LEASE,
    ConfigError,
    check_paths,
    describe,
    load_config,
    parse_config,
    path_problems,
)
from sidus_appliance.lab import write_lab_config
from sidus_appliance.resources import EXAMPLE_CONFIG, data_path

EXAMPLE = data_path(*EXAMPLE_CONFIG)
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
    assert dict(config.dhcp.boot_files) == {
        0: "pxelinux.0",
        6: "efi32/syslinux.efi",
        7: "efi64/syslinux.efi",
        9: "efi64/syslinux.efi",
        16: "efi64/snponly.efi",
    }
    assert config.dhcp.default_boot_file == "pxelinux.0"
    assert config.tftp.root == Path("/srv/tftp")
    assert config.state_dir == Path("/var/lib/sidus-appliance")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE + "hosts:\n  - {name: m, mac: 08:00:aa:bb:cc:dd, address: 10.20.18.5}\n",
            "cfg.yaml:5: hosts[0].address: 10.20.18.5 is outside the subnet 10.20.17.0/24",
        ),
        (BASE + "gateway: 10.20.18.1\n", "cfg.yaml:4: gateway: 10.20.18.1 is outside the subnet 10.20.17.0/24"),
        (BASE + "gateway: 10.20.17.255\n", "cfg.yaml:4: gateway: 10.20.17.255 is outside the subnet"),
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


def test_check_prints_effective_settings(tmp_path: Path) -> None:
    # The example's settings, with its directories (state, boot tree) made under tmp_path.
    config_path = write_lab_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "sidus_appliance.cli", "check", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "host:        master 08:00:aa:bb:cc:dd 10.20.17.253 profile=master" in result.stdout
    assert "arch 7     -> efi64/syslinux.efi" in result.stdout
    assert "config OK" in result.stdout


def test_check_names_the_missing_directories_of_the_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidus_appliance.cli", "check", "--config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if Path("/srv/tftp").is_dir():  # a host where the appliance is installed: nothing to see here
        return
    line = next(n for n, text in enumerate(EXAMPLE.read_text().splitlines(), 1) if "root: /srv/tftp" in text)
    assert result.returncode == 2
    assert f"{EXAMPLE}:{line}: tftp.root: /srv/tftp does not exist (run sidus-appliance bootfiles" in result.stderr


def test_describe_shows_the_hardening_keys() -> None:
    config = parse_config(
        BASE + "dhcp: {fsync: false, max_quarantine_per_client: 5}\n"
        "dns: {tcp_max_connections: 64, tcp_max_per_client: 3, tcp_idle_timeout: 2.5}\n"
        "tftp: {max_transfers: 50, max_transfers_per_client: 4}\n"
    )
    text = describe(config)
    assert "journal    -> no fsync (a power cut may lose the last leases)" in text
    assert "quarantine -> at most 5 declined address(es) per client" in text
    assert "tcp        -> 64 connections, 3 per client, idle timeout 2.5s" in text
    assert "transfers  -> 50 at once, 4 per client" in text
    assert "journal    -> fsync before each ACK" in describe(parse_config(BASE))


def _paths_config(tmp_path: Path, tftp: str = "", instances: str = "") -> str:
    return (
        BASE
        + f"state_dir: {tmp_path / 'state'}\n"
        + f"tftp:\n  enabled: true\n  root: {tftp or tmp_path / 'tftp'}\n"
        + f"instances:\n{instances or '  []'}\n"
    )


def test_parse_stays_pure_and_check_paths_names_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "tftp").mkdir()
    (tmp_path / "built").mkdir()
    good = _paths_config(tmp_path, instances=f"  - {{name: built, root: {tmp_path / 'built'}}}")
    check_paths(parse_config(good, "cfg.yaml"))  # nothing missing: no error

    text = _paths_config(
        tmp_path, tftp=str(tmp_path / "nope"), instances=f"  - {{name: lab, root: {tmp_path / 'absent'}}}"
    )
    config = parse_config(text, "cfg.yaml")  # parsing never looks at the disk
    with pytest.raises(ConfigError) as caught:
        check_paths(config)
    message = str(caught.value)
    assert f"cfg.yaml:7: tftp.root: {tmp_path / 'nope'} does not exist (run sidus-appliance bootfiles" in message
    assert f"cfg.yaml:9: instances[0].root: {tmp_path / 'absent'} does not exist (build it:" in message


def test_check_paths_refuses_files_links_and_a_missing_state_dir(tmp_path: Path) -> None:
    (tmp_path / "tftp").write_text("a file, not a tree\n")
    assert path_problems(parse_config(_paths_config(tmp_path), "cfg.yaml")) == [
        f"cfg.yaml:4: state_dir: {tmp_path / 'state'} does not exist (create it, owned by root)",
        f"cfg.yaml:7: tftp.root: {tmp_path / 'tftp'} is not a directory",
    ]
    (tmp_path / "real").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "real")
    assert path_problems(parse_config(_paths_config(tmp_path), "cfg.yaml"))[0] == (
        f"cfg.yaml:4: state_dir: {tmp_path / 'state'} is a symbolic link (name the real directory)"
    )


def test_check_paths_ignores_the_boot_tree_of_a_disabled_tftp(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    text = _paths_config(tmp_path).replace("enabled: true", "enabled: false")
    assert path_problems(parse_config(text, "cfg.yaml")) == []


def test_check_paths_without_line_numbers_names_the_source(tmp_path: Path) -> None:
    config = parse_config(_paths_config(tmp_path), "cfg.yaml").with_overrides(marks=None)
    assert path_problems(config)[0].startswith(f"cfg.yaml: state_dir: {tmp_path / 'state'} does not exist")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_upstreams_are_parsed_once_into_address_and_port() -> None:
    config = parse_config(BASE + "dns:\n  upstream: [192.0.2.53, '198.51.100.7:5353', '203.0.113.1:']\n")
    assert config.dns.upstreams == (("192.0.2.53", 53), ("198.51.100.7", 5353), ("203.0.113.1", 53))
    assert parse_config(BASE).dns.upstreams == ()
    assert "upstream 192.0.2.53:53, 198.51.100.7:5353, 203.0.113.1:53, recursion for" in describe(config)
    assert "upstream none, recursion for" in describe(parse_config(BASE))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[dns.example.org]", "cfg.yaml:6: dns.upstream[0]: 'dns.example.org': 'dns.example.org' is not an IPv4"),
        ("['192.0.2.300:53']", "cfg.yaml:6: dns.upstream[0]: '192.0.2.300:53': '192.0.2.300' is not an IPv4"),
        ("[':53']", "cfg.yaml:6: dns.upstream[0]: ':53': '' is not an IPv4 address"),
        ("\n    - 192.0.2.53\n    - '192.0.2.54:dns'",
         "cfg.yaml:8: dns.upstream[1]: '192.0.2.54:dns': port 'dns' is not a whole number from 1 to 65535"),
        ("['192.0.2.53:0']", "dns.upstream[0]: '192.0.2.53:0': port '0' is not a whole number from 1 to 65535"),
        ("['192.0.2.53:65536']", "dns.upstream[0]: '192.0.2.53:65536': port '65536' is not a whole number"),
        ("['192.0.2.53:5:3']", "dns.upstream[0]: '192.0.2.53:5:3': port '5:3' is not a whole number"),
        ("['192.0.2.53:-53']", "dns.upstream[0]: '192.0.2.53:-53': port '-53' is not a whole number"),
        ("['192.0.2.53:\u00b2']", "dns.upstream[0]: '192.0.2.53:\u00b2': port '\u00b2' is not a whole number"),
        ("[[192.0.2.53]]", "cfg.yaml:6: dns.upstream[0]: ['192.0.2.53'] is not a string"),
        ("192.0.2.53", "cfg.yaml:6: dns.upstream: expected a list, got str"),
    ],
)
def test_bad_upstreams_name_the_key_and_line(entries: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + "dns:\n  port: 53\n  upstream: " + entries + "\n", "cfg.yaml")
    assert message in str(caught.value)


def test_management_defaults_to_loopback_without_token() -> None:
    management = parse_config(BASE).management
    assert (management.enabled, management.host, management.port) == (True, "127.0.0.1", 8067)
    assert (management.token, management.stuck_after, management.url) == (None, 120.0, "http://127.0.0.1:8067")
    assert "management: on 127.0.0.1:8067 (no token, this host only), boots stuck after 120s" in describe(
        parse_config(BASE)
    )
    assert load_config(EXAMPLE).management == management  # the example documents the defaults


def test_management_listen_forms_and_describe() -> None:
    config = parse_config(BASE + "management:\n  listen: '0.0.0.0:9000'\n  token: s3cret\n  stuck_after: 30\n")
    m = config.management
    assert (m.host, m.port, m.token, m.stuck_after, m.url) == ("0.0.0.0", 9000, "s3cret", 30.0, "http://127.0.0.1:9000")
    assert "management: on 0.0.0.0:9000 (token required), boots stuck after 30s" in describe(config)
    assert "s3cret" not in describe(config) and "s3cret" not in repr(config)
    ipv6 = parse_config(BASE + "management: {listen: '[::1]:8100'}\n").management
    assert (ipv6.host, ipv6.port, ipv6.listen, ipv6.url) == ("::1", 8100, "[::1]:8100", "http://[::1]:8100")
    bare = parse_config(BASE + "management: {listen: 10.20.17.254}\n")
    assert (bare.management.host, bare.management.port) == ("10.20.17.254", 8067)
    assert "(no token: anyone who reaches it sees every machine)" in describe(bare)
    assert describe(parse_config(BASE + "management: {enabled: false}\n")).endswith("management: off")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  listen: nope\n", "cfg.yaml:5: management.listen: 'nope': 'nope' is not an IP address"),
        ("  listen: '10.20.17.254:'\n", None),  # an address with an empty port: the default port
        ("  listen: '127.0.0.1:0'\n", "cfg.yaml:5: management.listen: '127.0.0.1:0': port '0' is not a whole"),
        ("  listen: '127.0.0.1:http'\n", "cfg.yaml:5: management.listen: '127.0.0.1:http': port 'http' is not"),
        ("  listen: '[::1'\n", "cfg.yaml:5: management.listen: '[::1' is not address:port (an IPv6 address"),
        ("  listen: '10.20.17.254:80'\n", "cfg.yaml:5: management.listen: port 80 on 10.20.17.254 is the boot"),
        ("  listen: '0.0.0.0:80'\n", "cfg.yaml:5: management.listen: port 80 on 0.0.0.0 is the boot files'"),
        ("  enabled: true\n  token: 'two words'\n", "cfg.yaml:6: management.token: must be a non-empty string"),
        ("  token: ''\n", "cfg.yaml:5: management.token: must be a non-empty string"),
        ("  stuck_after: 0\n", "cfg.yaml:5: management.stuck_after: 0 is out of range (1..86400)"),
        ("  stuck_after: soon\n", "cfg.yaml:5: management.stuck_after: 'soon' is not a number"),
        ("  enabled: maybe\n", "cfg.yaml:5: management.enabled: 'maybe' is not true or false"),
        ("  port: 8067\n", "cfg.yaml:5: management.port: unknown key (known keys here: enabled, listen, stuck_after"),
    ],
)
def test_bad_management_names_the_key_and_line(section: str, message: str | None) -> None:
    text = BASE + "management:\n" + section
    if message is None:
        assert parse_config(text, "cfg.yaml").management.port == 8067
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml")
    assert message in str(caught.value)


def test_management_on_the_boot_port_is_fine_when_http_is_off() -> None:
    config = parse_config(BASE + "http: {enabled: false}\nmanagement: {listen: '10.20.17.254:80'}\n")
    assert config.management.port == 80


def test_notify_defaults_to_the_single_hosts_of_transfer_allowed() -> None:
    text = BASE + "dns:\n  transfer_allowed: [10.20.17.250/32, 10.20.17.0/28, 192.0.2.7]\n"
    config = parse_config(text)
    assert config.dns.notify == (("10.20.17.250", 53), ("192.0.2.7", 53))  # a bare address is a /32
    assert "notify     -> 10.20.17.250:53, 192.0.2.7:53" in describe(config)
    assert parse_config(BASE).dns.notify == ()
    assert "notify     -> nobody" in describe(parse_config(BASE))
    told = parse_config(text + "  notify: [10.20.17.3, '10.20.17.3', '10.20.17.4:5353']\n")
    assert told.dns.notify == (("10.20.17.3", 53), ("10.20.17.4", 5353))  # duplicates told once
    assert parse_config(text + "  notify: []\n").dns.notify == ()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[10.20.17.99]", "cfg.yaml:7: dns.notify[0]: 10.20.17.99 is not in dns.transfer_allowed"),
        ("\n    - 10.20.17.250\n    - '10.20.17.250:x'",
         "cfg.yaml:9: dns.notify[1]: '10.20.17.250:x': port 'x' is not a whole number from 1 to 65535"),
        ("[secondary.example.org]", "cfg.yaml:7: dns.notify[0]: 'secondary.example.org': 'secondary.example.org' is "
                                    "not an IPv4 address"),
        ("10.20.17.250", "cfg.yaml:7: dns.notify: expected a list, got str"),
    ],
)
def test_bad_notify_targets_name_the_key_and_line(entries: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + "dns:\n  port: 53\n  transfer_allowed: [10.20.17.250/32]\n  notify: " + entries + "\n",
                     "cfg.yaml")
    assert message in str(caught.value)
