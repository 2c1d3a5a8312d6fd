"""Open untrusted files beneath a trusted directory: in one step, never following a link out of
it, never blocking, and never opening anything but a regular file (or a directory, for lists).

Instance roots are written by root on the master over NFS, so anything under them may be a
symlink out of the root, a FIFO or a device node, and may change between two system calls.
Checking a path and then opening it is a race (`realpath` then `open` served a file from outside
the instance when `boot/` was swapped with a symlink in between), and a plain `open` of a FIFO
blocks until a writer comes (it froze the whole event loop). So:

1. The path is resolved once, by the kernel, relative to a descriptor of the jail's root:
   `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` (Linux >= 5.6). Symlinks that stay inside
   are followed; one that leads out (absolute, or `..` above the root) fails with EXDEV. Where
   openat2 is missing (ENOSYS), a walk does the same in user space: one component at a time with
   O_NOFOLLOW from held directory descriptors, `..` popping our own stack of descriptors, and
   symlink targets spliced into the remaining path (an absolute one is refused like openat2 does).
2. It is opened with O_PATH: no open of the object itself happens (a FIFO's open cannot block, a
   device driver's open is never called), we only get a handle on the inode.
3. fstat on that handle; anything but a regular file is refused here.
4. Only then the very same inode is opened for reading, through `/proc/self/fd/N`. This reopen
   resolves no path of the jail, so nothing can be swapped in between: the O_PATH descriptor pins
   the inode, and an inode's type never changes. (The alternative, opening the name again from
   its parent directory and comparing st_dev/st_ino afterwards, would already have opened
   whatever a racer put there: exactly the device open we must not do.) O_NONBLOCK makes a file
   lease held by someone else an EAGAIN instead of a wait.

Errors are OSError with the errno that says what happened (EXDEV: leaves the jail; ELOOP: too
many links or a magic link; ENOENT/ENOTDIR: not there; EMFILE/ENFILE: out of descriptors), and
NotRegularFile for a FIFO, socket, device node (or a directory where a file was wanted).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from collections import deque
from collections.abc import Sequence

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}  # only where we know the number; elsewhere: the walk
MAX_SYMLINKS = 40  # as the kernel's own limit (ELOOP past it)
EAGAIN_RETRIES = 3  # openat2 BENEATH says EAGAIN when a rename raced a `..`: try again, a little
PROC_FD = "/proc/self/fd/{}"

_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class NotRegularFile(OSError):
    """The name leads to something we do not open: a FIFO, socket, device node or directory."""

    def __init__(self, mode: int) -> None:
        super().__init__(errno.EACCES, f"not a regular file ({stat.filemode(mode)[0]})")
        self.mode = mode

    @property
    def is_directory(self) -> bool:
        return stat.S_ISDIR(self.mode)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """openat2(2) through libc's syscall(); `available` turns False for good on ENOSYS."""

    def __init__(self) -> None:
        number = SYS_OPENAT2.get(platform.machine())
        self.available = number is not None
        self.number = number or 0
        self._syscall = None
        if self.available:
            syscall = ctypes.CDLL(None, use_errno=True).syscall
            syscall.restype = ctypes.c_long
            syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
            self._syscall = syscall

    def __call__(self, dirfd: int, path: bytes, flags: int, resolve: int) -> int:
        how = _OpenHow(flags, 0, resolve)
        for _ in range(EAGAIN_RETRIES):
            assert self._syscall is not None
            fd = self._syscall(self.number, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
            if fd >= 0:
                return int(fd)
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                self.available = False  # old kernel or a seccomp filter: the walk from now on
            if err not in (errno.EAGAIN, errno.EINTR):
                break
        raise OSError(err, os.strerror(err), os.fsdecode(path))


openat2 = _Openat2()


def _walk(root_fd: int, path: bytes, flags: int) -> int:
    """RESOLVE_BENEATH in user space: the O_PATH descriptor of `path` beneath `root_fd`."""
    stack = [os.dup(root_fd)]  # the directories we stand in; stack[0] is the root
    todo = deque(path.split(b"/"))
    links = 0
    try:
        while todo:
            name = todo.popleft()
            if name in (b"", b"."):
                continue
            if name == b"..":
                if len(stack) == 1:
                    raise OSError(errno.EXDEV, "path leads out of its root")
                os.close(stack.pop())
                continue
            fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=stack[-1])
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, "too many levels of symbolic links")
                    target = os.readlink(b"", dir_fd=fd)  # this very link, not the name again
                    if target.startswith(b"/"):
                        raise OSError(errno.EXDEV, "absolute symlink leads out of its root")
                    todo.extendleft(reversed(target.split(b"/")))
                    continue
                if not any(part not in (b"", b".") for part in todo):
                    result, fd = fd, -1
                    return result
                if not stat.S_ISDIR(mode):
                    raise OSError(errno.ENOTDIR, "not a directory")
                stack.append(fd)
                fd = -1
            finally:
                if fd >= 0:
                    os.close(fd)
        return os.dup(stack[-1])  # the path ended on a directory (`sub/..`, `.`)
    finally:
        for fd in stack:
            os.close(fd)


def open_path(root_fd: int, parts: Sequence[str]) -> int:
    """An O_PATH descriptor for `parts` beneath `root_fd`; OSError (EXDEV...) otherwise."""
    try:
        path = os.fsencode("/".join(parts)) or b"."
    except UnicodeError:
        raise OSError(errno.EINVAL, "file name not encodable") from None
    if b"\0" in path:  # ctypes would cut the path there, os.open would raise ValueError
        raise OSError(errno.EINVAL, "NUL byte in file name")
    if openat2.available:
        try:
            return openat2(root_fd, path, _PATH_FLAGS, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
    return _walk(root_fd, path, _PATH_FLAGS)


def _reopen(path_fd: int, flags: int) -> int:
    """Open the inode an O_PATH descriptor holds, without resolving any path again."""
    try:
        return os.open(PROC_FD.format(path_fd), flags)
    except FileNotFoundError:
        raise OSError(errno.EOPNOTSUPP, "cannot reopen through /proc/self/fd: is /proc mounted?") from None


def open_beneath(
    root: os.PathLike[str] | str, parts: Sequence[str], directory: bool = False
) -> tuple[int, os.stat_result]:
    """Open `root/parts...` for reading, jailed beneath `root` (trusted: the config names it).

    Returns (descriptor, its stat). A regular file, or a directory with `directory=True`;
    NotRegularFile for anything else, found without opening it."""
    root_fd = os.open(root, _PATH_FLAGS | os.O_DIRECTORY)
    try:
        path_fd = open_path(root_fd, parts)
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(path_fd)
        wanted = stat.S_ISDIR if directory else stat.S_ISREG
        if not wanted(st.st_mode):
            raise NotRegularFile(st.st_mode)
        fd = _reopen(path_fd, _READ_FLAGS | (os.O_DIRECTORY if directory else 0))
    finally:
        os.close(path_fd)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):  # cannot happen; cheap to be sure
            raise OSError(errno.ESTALE, "reopened a different file")
    except BaseException:
        os.close(fd)
        raise
    return fd, opened


def list_beneath(root: os.PathLike[str] | str, parts: Sequence[str]) -> list[str]:
    """The names in the directory `root/parts...`, jailed like open_beneath."""
    fd, _ = open_beneath(root, parts, directory=True)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)
