"""Root's own sub-directories of `state_dir`, which the service user owns after the drop.

That user may plant `state_dir/images -> /etc` between two runs; root following it would write
its logs (or ganesha's pid and log files) wherever the link points. `private_subdir` creates
the directory 0700 if needed and opens it without following a link, refusing anything that is
not a real directory owned by us; files are then opened relative to that descriptor.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


class UnsafeDirectory(OSError):
    """A sub-directory we would have to follow a link, or trust another owner, to use."""


def private_subdir(parent: Path, name: str) -> int:
    """An O_DIRECTORY fd of `parent/name`, created 0700 if missing; the caller closes it."""
    path = parent / name
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeDirectory(exc.errno, f"{path}: not a plain directory (a link?): {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise UnsafeDirectory(f"{path}: owned by uid {st.st_uid} or writable by others; refusing to use it "
                              "(remove it, it is recreated)")
    return fd


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o640) -> int:
    """Open `name` inside `dir_fd`, never through a link."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def checked_subdir(parent: Path, name: str) -> Path:
    """`parent/name` as a path, for programs that need one (ganesha): checked as above, then
    closed. A path can be swapped after the check; the directory is ours and 0700, so only
    whoever can write `parent` can do it, and they can no longer plant it beforehand."""
    os.close(private_subdir(parent, name))
    return parent / name
