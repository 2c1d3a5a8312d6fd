"""The privilege drop and state_dir: root hands the service user its own files and nothing
else, whatever that user planted in state_dir between two runs; the open-files limit."""

from __future__ import annotations

import asyncio
import os
import pwd
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidus_appliance import runtime
from sidus_appliance.config import parse_config
from sidus_appliance.dhcp.leases import LeaseStore
from sidus_appliance.runtime import LEASES_FILE, ServiceUser, StartupError, StateDir

from ..conftest import require

NOBODY = pwd.getpwnam("nobody")
USER = ServiceUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid, ())
SECRET_TEXT = "root:$y$not-a-real-hash:19000:0:99999:7:::\n"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state_dir owned by the service user, next to a root-only `secret` it must never get."""
    require("chown to another user")
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    os.chown(directory, USER.uid, USER.gid)
    secret = tmp_path / "secret"
    secret.write_text(SECRET_TEXT)
    secret.chmod(0o600)
    yield directory


def owner(path: Path) -> tuple[int, int]:
    info = os.stat(path, follow_symlinks=False)
    return info.st_uid, info.st_gid


def test_hand_over_gives_our_files_and_the_directory_and_nothing_else(state: Path) -> None:
    secret = state.parent / "secret"
    (state / "x").symlink_to(secret)  # what the old drop followed: chown("x") chowned the secret
    (state / "notes").write_text("root's\n")
    held = StateDir(state, USER).open()
    try:
        assert owner(state) == (0, 0)  # while root checks and opens, only root may change entries
        held.check_entries()
        LeaseStore(state / LEASES_FILE).close()  # creates the journal and its lock, as root
        held.hand_over()
    finally:
        held.close()
    assert owner(state) == (USER.uid, USER.gid)
    assert owner(state / LEASES_FILE) == (USER.uid, USER.gid)
    assert owner(state / (LEASES_FILE + ".lock")) == (USER.uid, USER.gid)
    assert owner(secret) == (0, 0) and secret.read_text() == SECRET_TEXT
    assert owner(state / "x") == (0, 0)  # the link itself is not ours either
    assert owner(state / "notes") == (0, 0)


@pytest.mark.parametrize("name", [LEASES_FILE, LEASES_FILE + ".lock", LEASES_FILE + ".tmp"])
@pytest.mark.parametrize(
    ("plant", "refusal"),
    [
        (lambda path, secret: path.symlink_to(secret), "is a symbolic link"),
        (lambda path, secret: os.link(secret, path), "has 2 hard links"),
        (lambda path, secret: os.mkfifo(path), "is not a regular file"),
        (lambda path, secret: path.mkdir(), "is not a regular file"),
    ],
    ids=["symlink", "hardlink", "fifo", "directory"],
)
def test_planted_entries_are_refused_and_the_directory_given_back(state: Path, name: str, plant, refusal: str) -> None:
    secret = state.parent / "secret"
    plant(state / name, secret)
    held = StateDir(state, USER).open()
    with pytest.raises(StartupError) as caught:
        held.check_entries()
    held.close()
    assert str(caught.value).startswith(f"state_dir: {state / name} {refusal}")
    assert owner(state) == (USER.uid, USER.gid)  # a refused start leaves the directory as it was
    assert owner(secret) == (0, 0) and secret.read_text() == SECRET_TEXT


def test_hand_over_rechecks_the_inode_it_chowns(state: Path) -> None:
    # Root itself is the only one who can change entries once open() took the directory;
    # still, hand_over checks the descriptor it chowns, not the earlier look at the name.
    secret = state.parent / "secret"
    held = StateDir(state, USER).open()
    try:
        held.check_entries()
        os.link(secret, state / LEASES_FILE)
        with pytest.raises(StartupError, match="has 2 hard links"):
            held.hand_over()
    finally:
        held.close()
    assert owner(secret) == (0, 0)


def test_a_running_appliances_directory_is_not_taken(state: Path) -> None:
    # The first appliance runs as the user and holds the journal's flock; a second start
    # must refuse before making the directory root's (the first could not compact then).
    with LeaseStore(state / LEASES_FILE):
        for entry in (state / LEASES_FILE, state / (LEASES_FILE + ".lock")):
            os.chown(entry, USER.uid, USER.gid)
        with pytest.raises(StartupError, match="is locked by another running appliance"):
            StateDir(state, USER).open()
        assert owner(state) == (USER.uid, USER.gid)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.symlink_to(d.parent / "real"), "is a symbolic link"),
        (lambda d: d.write_text("file"), "is not a directory"),
        (lambda d: (d.mkdir(), os.chown(d, 4242, 4242)), "is owned by uid 4242, not uid 0 or uid 65534"),
        (lambda d: (d.mkdir(), os.chmod(d, 0o777)), "is writable by other users (mode 777)"),
        (lambda d: (d.mkdir(), os.chown(d, 0, 4242), os.chmod(d, 0o775)), "is writable by other users"),
    ],
    ids=["missing", "symlink", "file", "foreign-owner", "world-writable", "foreign-group-writable"],
)
def test_state_dir_itself_is_refused(tmp_path: Path, make, message: str) -> None:
    require("chown to another user")
    (tmp_path / "real").mkdir()
    directory = tmp_path / "state"
    make(directory)
    with pytest.raises(StartupError) as caught:
        StateDir(directory, USER).open()
    assert str(caught.value).startswith(f"state_dir: {directory} {message}")


def test_staying_root_accepts_roots_directory_and_changes_nothing(tmp_path: Path) -> None:
    require("root")
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    held = StateDir(directory, None).open()
    held.check_entries()
    held.close()
    assert owner(directory) == (0, 0)
    os.chown(directory, USER.uid, USER.gid)  # a former service user's directory: root must not write there
    with pytest.raises(StartupError, match="is owned by uid 65534, not uid 0"):
        StateDir(directory, None).open()


def test_drop_privileges_sets_groups_then_gid_then_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    for name in ("setgroups", "setgid", "setuid"):
        monkeypatch.setattr(runtime.os, name, lambda value, name=name: calls.append((name, value)))
    runtime.drop_privileges(ServiceUser("svc", 990, 991, (992,)))
    assert calls == [("setgroups", [992]), ("setgid", 991), ("setuid", 990)]


def test_unknown_user_is_refused() -> None:
    config = parse_config("interface: eth1\naddress: 10.20.17.254/24\ndomain: sidus.zone\nuser: no-such-user-here\n")
    with pytest.raises(StartupError, match="user: 'no-such-user-here' does not exist"):
        runtime.service_user(config)


def _quiet_config(state: Path) -> str:
    """No service at all: Appliance.run does the state_dir work, the drop, and waits."""
    return (
        "interface: eth1\naddress: 10.20.17.254/24\ndomain: sidus.zone\nuser: nobody\n"
        f"state_dir: {state}\ndhcp: {{enabled: false}}\ndns: {{enabled: false}}\ntftp: {{enabled: false}}\n"
        "http: {enabled: false}\nmanagement: {enabled: false}\n"
    )


def _run(appliance: runtime.Appliance) -> None:
    async def main() -> None:
        asyncio.get_running_loop().call_later(0.05, appliance.stopping.set)
        await appliance.run()

    asyncio.run(main())


def test_run_hands_over_then_drops(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[ServiceUser] = []
    monkeypatch.setattr(runtime, "drop_privileges", dropped.append)
    monkeypatch.setattr(runtime.gc, "freeze", lambda: None)
    (state / "x").symlink_to(state.parent / "secret")
    _run(runtime.Appliance(parse_config(_quiet_config(state))))
    assert [u.name for u in dropped] == ["nobody"]
    assert owner(state / LEASES_FILE) == (USER.uid, USER.gid)
    assert owner(state.parent / "secret") == (0, 0)


def test_run_refuses_a_planted_lock_link_before_the_store_creates_its_target(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease store opens `<journal>.lock` with O_CREAT as root: through a link that would
    # create (and later hand over) any file the service user names.
    target = state.parent / "created-by-root"
    (state / (LEASES_FILE + ".lock")).symlink_to(target)
    dropped: list[ServiceUser] = []
    monkeypatch.setattr(runtime, "drop_privileges", dropped.append)
    with pytest.raises(StartupError, match="is a symbolic link"):
        _run(runtime.Appliance(parse_config(_quiet_config(state))))
    assert not target.exists() and dropped == []
    assert owner(state) == (USER.uid, USER.gid)


def test_open_files_soft_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard != resource.RLIM_INFINITY and hard > 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert runtime.raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))



def test_started_as_the_service_user_there_is_nothing_to_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The systemd unit starts serve as its user with ambient capabilities: `user:` may stay set."""
    monkeypatch.setattr(runtime.os, "geteuid", lambda: USER.uid)
    text = "interface: eth1\naddress: 10.20.17.254/24\ndomain: sidus.zone\nuser: {}\n"
    assert runtime.service_user(parse_config(text.format("nobody"))) is None
    with pytest.raises(StartupError, match="user: root is set, but serve does not run as root"):
        runtime.service_user(parse_config(text.format("root")))
