"""The jail: files beneath a root, in one step, regular files only, nothing opened on the way.

Every test runs twice: with openat2(RESOLVE_BENEATH) and with the user-space walk that replaces
it where the kernel lacks openat2."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sidus_appliance import jail
from sidus_appliance.jail import NotRegularFile, list_beneath, open_beneath

from ..conftest import require


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(jail.openat2, "available", False)
    else:
        require("openat2 (Linux >= 5.6 on x86_64/aarch64)", root=False, ok=jail.openat2.available)
    return request.param


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An instance root with a boot/ and, outside it, a secret."""
    inst = tmp_path / "inst"
    (inst / "boot").mkdir(parents=True)
    (inst / "boot" / "vmlinuz-1").write_bytes(b"kernel 1")
    (inst / "other").mkdir()
    (inst / "other" / "file").write_bytes(b"other file")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "vmlinuz-1").write_bytes(b"SECRET")
    return inst


def read(root: Path, *parts: str) -> bytes:
    fd, st = open_beneath(root, parts)
    try:
        assert stat.S_ISREG(st.st_mode)
        return os.pread(fd, 1000, 0)
    finally:
        os.close(fd)


def error_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as exc:
        call()
    return exc.value.errno


def finishes(call: Callable[[], object], seconds: float = 5.0) -> BaseException | None:
    """Run `call` in a thread: it must return (or raise) within `seconds`, not block."""
    outcome: list[BaseException | None] = []

    def body() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return outcome[0]


def test_regular_files_and_links_that_stay_inside(root, mode):
    assert read(root, "boot", "vmlinuz-1") == b"kernel 1"
    os.symlink("vmlinuz-1", root / "boot" / "vmlinuz")  # Debian's own kind of link
    os.symlink("../other/file", root / "boot" / "up-and-down")
    os.symlink("boot", root / "alias")
    assert read(root, "boot", "vmlinuz") == b"kernel 1"
    assert read(root, "boot", "up-and-down") == b"other file"
    assert read(root, "alias", "vmlinuz-1") == b"kernel 1"


def test_links_out_of_the_root_are_refused(root, mode):
    outside = root.parent / "outside"
    os.symlink(outside / "vmlinuz-1", root / "boot" / "absolute")
    os.symlink("../../outside/vmlinuz-1", root / "boot" / "relative")
    os.symlink("/", root / "slash")
    os.symlink("/proc/self/fd/0", root / "boot" / "magic")
    for parts in (("boot", "absolute"), ("boot", "relative"), ("slash", "etc", "passwd"), ("boot", "magic"),
                  ("..", "outside", "vmlinuz-1")):
        assert error_of(lambda parts=parts: open_beneath(root, parts)) == errno.EXDEV, parts


def test_a_directory_swapped_for_a_link_out_is_refused(root, mode):
    real = root.parent / "real-boot"
    os.rename(root / "boot", real)
    os.symlink(root.parent / "outside", root / "boot")
    assert error_of(lambda: open_beneath(root, ["boot", "vmlinuz-1"])) == errno.EXDEV
    os.unlink(root / "boot")
    os.symlink("../outside", root / "boot")
    assert error_of(lambda: open_beneath(root, ["boot", "vmlinuz-1"])) == errno.EXDEV


def test_misses(root, mode):
    assert error_of(lambda: open_beneath(root, ["boot", "nothing"])) == errno.ENOENT
    assert error_of(lambda: open_beneath(root, ["boot", "vmlinuz-1", "x"])) == errno.ENOTDIR
    assert error_of(lambda: open_beneath(root.parent / "nowhere", ["boot"])) == errno.ENOENT
    os.symlink("loop", root / "loop")
    assert error_of(lambda: open_beneath(root, ["loop"])) == errno.ELOOP
    assert error_of(lambda: open_beneath(root, ["a\0b"])) == errno.EINVAL
    assert error_of(lambda: open_beneath(root, ["\ud800"])) == errno.EINVAL


def test_a_directory_is_not_a_file(root, mode):
    with pytest.raises(NotRegularFile) as exc:
        open_beneath(root, ["boot"])
    assert exc.value.is_directory


def test_a_fifo_is_refused_without_blocking(root, mode):
    """A plain open of a FIFO waits for a writer: it froze the appliance's event loop."""
    os.mkfifo(root / "boot" / "vmlinuz-fifo")
    exc = finishes(lambda: open_beneath(root, ["boot", "vmlinuz-fifo"]))
    assert isinstance(exc, NotRegularFile) and not exc.is_directory


def test_a_device_node_is_never_opened(root, mode, monkeypatch):
    """Refused from an O_PATH handle's fstat: every open on the way carries O_PATH, and the
    reopen for reading (/proc/self/fd/N) never happens."""
    os.mknod(root / "boot" / "vmlinuz-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    opens: list[tuple[str, int]] = []
    real_open, real_openat2 = os.open, jail.openat2

    def recording_open(path, flags, *args, **kwargs):
        opens.append((os.fsdecode(path), flags))
        return real_open(path, flags, *args, **kwargs)

    class RecordingOpenat2:
        available = real_openat2.available

        def __call__(self, dirfd: int, path: bytes, flags: int, resolve: int) -> int:
            opens.append((os.fsdecode(path), flags))
            return real_openat2(dirfd, path, flags, resolve)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(jail, "openat2", RecordingOpenat2())
    with pytest.raises(NotRegularFile):
        open_beneath(root, ["boot", "vmlinuz-dev"])
    assert opens and all(flags & os.O_PATH for _, flags in opens), opens
    assert not any(path.startswith("/proc/self/fd") for path, _ in opens)
    opens.clear()
    assert read(root, "boot", "vmlinuz-1") == b"kernel 1"  # the same code does reopen a regular file
    assert [flags & os.O_PATH for path, flags in opens if path.startswith("/proc/self/fd")] == [0]


def test_the_walk_keeps_its_directory_while_the_master_swaps_it(root, monkeypatch):
    """Between two components of the walk the master swaps boot/ for a link out: the walk goes
    on from the directory it holds, so it serves the inside file, never the outside one."""
    monkeypatch.setattr(jail.openat2, "available", False)
    decoy = root / "boot.decoy"
    os.symlink(root.parent / "outside", decoy)
    libc = ctypes.CDLL(None, use_errno=True)
    real_open = os.open
    swapped = []

    def open_then_swap(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if path == b"boot" and not swapped:
            assert libc.renameat2(-100, bytes(root / "boot"), -100, bytes(decoy), 2) == 0  # RENAME_EXCHANGE
            swapped.append(True)
        return fd

    monkeypatch.setattr(os, "open", open_then_swap)
    assert read(root, "boot", "vmlinuz-1") == b"kernel 1"
    assert swapped and (root / "boot").is_symlink()
    monkeypatch.setattr(os, "open", real_open)
    assert error_of(lambda: open_beneath(root, ["boot", "vmlinuz-1"])) == errno.EXDEV  # and now: out


def test_reopen_needs_proc(root, mode, monkeypatch):
    monkeypatch.setattr(jail, "PROC_FD", "/nonexistent/{}")
    assert error_of(lambda: open_beneath(root, ["boot", "vmlinuz-1"])) == errno.EOPNOTSUPP


def test_the_root_itself_may_be_a_link(root, mode):
    """The root comes from the config (trusted): a link to it is followed."""
    link = root.parent / "current"
    os.symlink(root, link)
    assert read(link, "boot", "vmlinuz-1") == b"kernel 1"


def test_list_beneath(root, mode):
    os.mkfifo(root / "boot" / "fifo")
    assert sorted(list_beneath(root, ["boot"])) == ["fifo", "vmlinuz-1"]
    with pytest.raises(NotRegularFile):
        list_beneath(root, ["boot", "fifo"])
    os.rename(root / "boot", root / "old-boot")
    os.symlink(root.parent / "outside", root / "boot")
    assert error_of(lambda: list_beneath(root, ["boot"])) == errno.EXDEV


def test_no_descriptor_leaks(root, mode):
    before = len(os.listdir("/proc/self/fd"))
    os.mkfifo(root / "boot" / "fifo")
    os.symlink("/", root / "out")
    for parts in (["boot", "vmlinuz-1"], ["boot", "fifo"], ["out", "x"], ["boot"], ["nothing"], ["boot", "x", "y"]):
        try:
            fd, _ = open_beneath(root, parts)
            os.close(fd)
        except OSError:
            pass
    assert len(os.listdir("/proc/self/fd")) == before
