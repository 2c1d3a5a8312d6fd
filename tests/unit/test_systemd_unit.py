"""The systemd unit as `service install` renders and installs it (under a temporary root)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidus_appliance.cli import main
from sidus_appliance.config import parse_config
from sidus_appliance.runtime import LEASES_FILE
from sidus_appliance.systemd_unit import (
    CAPABILITIES,
    UNIT_NAME,
    Account,
    first_denied,
    render_unit,
    service_problems,
    unit_word,
    useradd_argv,
)

from ..conftest import require

NOBODY = pwd.getpwnam("nobody")
ACCOUNT = Account("nobody", NOBODY.pw_uid, NOBODY.pw_gid, "nogroup")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everyone may enter (pytest's tmp_path sits below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="sidus-unit-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def settings(unit: str) -> dict[str, list[str]]:
    """Every `Key=value` of the unit, values in order (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_rendered_unit_fills_every_field() -> None:
    unit = render_unit(Path("/etc/sidus-appliance/config.yaml"), Path("/var/lib/sidus-appliance"), "sidus",
                       "sidus", ["/opt/sidus/bin/sidus-appliance"])
    assert not re.search(r"@[A-Z_]+@", unit)  # no field left unfilled
    s = settings(unit)
    assert s["ExecStart"] == ["/opt/sidus/bin/sidus-appliance serve --config /etc/sidus-appliance/config.yaml"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert (s["User"], s["Group"]) == (["sidus"], ["sidus"])
    assert s["ReadWritePaths"] == ["/var/lib/sidus-appliance"]
    assert s["ProtectSystem"] == ["strict"]
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert s[key] == ["yes"], key


def test_capabilities_are_exactly_the_three_serve_uses() -> None:
    s = settings(render_unit(Path("/c.yaml"), Path("/s"), "u", "u", ["/x"]))
    assert set(CAPABILITIES) == {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert s["AmbientCapabilities"][0].split() == list(CAPABILITIES)
    assert s["CapabilityBoundingSet"][0].split() == list(CAPABILITIES)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("/etc/sidus/config.yaml", "/etc/sidus/config.yaml"),
        ("/srv/my lab/config.yaml", '"/srv/my lab/config.yaml"'),
        ("/srv/100%/c.yaml", "/srv/100%%/c.yaml"),  # %: a specifier unless doubled
        ("/srv/$HOME/c.yaml", "/srv/$$HOME/c.yaml"),  # $: a variable unless doubled
        ('/srv/a"b', '"/srv/a\\"b"'),
    ],
)
def test_paths_are_escaped_for_the_unit(text: str, word: str) -> None:
    assert unit_word(text) == word


def test_useradd_makes_a_system_user_without_login() -> None:
    argv = useradd_argv("sidus", Path("/var/lib/sidus-appliance"), Path("/"))
    assert argv[:2] == ["useradd", "--system"] and argv[-1] == "sidus"
    assert "--root" not in argv and argv[argv.index("--shell") + 1] == "/usr/sbin/nologin"
    assert useradd_argv("sidus", Path("/s"), Path("/img"))[-3:] == ["--root", "/img", "sidus"]


def config_file(tmp_path: Path, state_dir: str = "/var/lib/sidus-appliance", extra: str = "") -> Path:
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("interface: eth1\naddress: 10.20.17.254/24\ndomain: sidus.zone\n"
                    f"state_dir: {state_dir}\ntftp: {{enabled: false}}\nhttp: {{enabled: false}}\n{extra}")
    return path


def test_install_under_a_root_writes_the_unit_and_hands_state_dir_over(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    require("chown to another user")
    root = tmp_path / "root"
    state = root / "var/lib/sidus-appliance"
    state.mkdir(parents=True)
    (state / LEASES_FILE).write_text("")  # left by a serve that ran as root: the user must own it now
    config = config_file(tmp_path)
    assert main(["service", "install", "--config", str(config), "--root", str(root), "--user", "nobody"]) in (0, 1)
    unit = (root / "etc/systemd/system" / UNIT_NAME).read_text()
    s = settings(unit)
    assert s["User"] == ["nobody"] and s["ReadWritePaths"] == ["/var/lib/sidus-appliance"]
    assert s["ExecStart"][0].endswith(f"serve --config {config}")
    for path in (state, state / LEASES_FILE):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), path
    out = capsys.readouterr().out
    assert "daemon-reload: skipped" in out


def test_install_creates_a_missing_state_dir_mode_750(tmp_path: Path) -> None:
    require("chown to another user")
    root = tmp_path / "root"
    main(["service", "install", "--config", str(config_file(tmp_path)), "--root", str(root), "--user", "nobody"])
    info = (root / "var/lib/sidus-appliance").stat()
    assert (info.st_uid, oct(info.st_mode & 0o777)) == (NOBODY.pw_uid, "0o750")


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    main(["service", "install", "--config", str(config_file(tmp_path)), "--root", str(root),
          "--user", "no-such-user-here", "--dry-run"])
    assert not root.exists()
    out = capsys.readouterr().out
    assert "would run: useradd --system" in out and "ExecStart=" in out and "would create" in out


def test_install_refuses_a_state_dir_owned_by_another_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require("chown to another user")
    root = tmp_path / "root"
    state = root / "var/lib/sidus-appliance"
    state.mkdir(parents=True)
    os.chown(state, 4242, 4242)
    code = main(["service", "install", "--config", str(config_file(tmp_path)), "--root", str(root),
                 "--user", "nobody"])
    assert code == 2 and "owned by uid 4242" in capsys.readouterr().out
    assert state.stat().st_uid == 4242


def test_problems_name_paths_the_service_could_not_reach(tmp_path: Path, open_dir: Path) -> None:
    secret = open_dir / "secret.yaml"
    secret.write_text("x")
    secret.chmod(0o600)
    config = parse_config(config_file(tmp_path, extra="user: sidus\n").read_text())
    problems = service_problems(config, secret, ["/usr/bin/true"], ACCOUNT)
    assert any(p.startswith(f"config: {secret}") and "nobody cannot read it" in p for p in problems), problems
    assert any("remove `user:` from the config" in p for p in problems), problems
    home = service_problems(config, Path("/root/config.yaml"), ["/usr/bin/true"], None)
    assert any("ProtectHome=yes hides" in p for p in home), home


def test_first_denied_names_the_directory_that_cannot_be_entered(open_dir: Path) -> None:
    closed = open_dir / "closed"
    (closed / "inner").mkdir(parents=True)
    (closed / "inner" / "f").write_text("x")
    closed.chmod(0o700)
    denied = first_denied(closed / "inner" / "f", ACCOUNT)
    assert denied is not None and denied[0] == closed and denied[1].endswith("nobody cannot enter it")
    closed.chmod(0o711)  # enter, not list: enough to reach a known name
    assert first_denied(closed / "inner" / "f", ACCOUNT) is None
    assert first_denied(Path("/usr/bin/true"), ACCOUNT, execute=True) is None
