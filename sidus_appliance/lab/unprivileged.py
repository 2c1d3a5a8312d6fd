"""`serve` as the systemd unit runs it, without systemd: in the lab namespace, as a non-root
user holding only the unit's capabilities (ambient, bounding set cut to them, no new privileges),
with NOTIFY_SOCKET pointing wherever the test listens.

The user must reach the interpreter, the code and the config. On a development box they may
sit below a directory it cannot enter (a pyenv under /root, pytest's 0700 temporary
directory): the process then starts in a private mount namespace where each such directory is
covered by an empty tmpfs that holds bind mounts of just the entries on the way (the same
trick as systemd's TemporaryFileSystem= with BindReadOnlyPaths=). Nothing changes outside that
namespace, which ends with the process.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sidus_appliance

from ..systemd_unit import CAPABILITIES, Account, lookup_account, permission_bits
from .netns import ApplianceProcess, Lab

UNIT_CAPABILITIES = tuple(CAPABILITIES)  # what the unit grants: CAP_NET_BIND_SERVICE, ...


def setpriv_caps(capabilities: Iterable[str]) -> str:
    """`-all,+net_bind_service,...`: exactly these, whatever the caller had."""
    return ",".join(["-all", *("+" + name.removeprefix("CAP_").lower() for name in capabilities)])


def closed_directories(paths: Iterable[Path], account: Account) -> dict[Path, set[str]]:
    """Directories `account` cannot enter on the way to `paths`, outermost first, each with the
    entries below it that lead there."""
    closed: dict[Path, set[str]] = {}
    for path in paths:
        path = Path(os.path.realpath(path))
        for directory in reversed(path.parents):
            if not permission_bits(directory.stat(), account) & stat.S_IXOTH:
                closed.setdefault(directory, set()).add(path.relative_to(directory).parts[0])
    return dict(sorted(closed.items(), key=lambda item: len(item[0].parts)))


def exposing_script(closed: dict[Path, set[str]], stage: Path) -> list[str]:
    """Shell lines (run as root in a private mount namespace) opening a way through `closed`."""
    lines = ["set -e", f"mount -t tmpfs -o mode=0700 sidus-stage {shlex.quote(str(stage))}"]
    for i, (directory, entries) in enumerate(closed.items()):  # outermost first: inner ones are bound back by then
        held = stage / str(i)
        lines += [f"mkdir {shlex.quote(str(held))}",
                  f"mount --bind {shlex.quote(str(directory))} {shlex.quote(str(held))}",
                  f"mount -t tmpfs -o mode=0755 sidus-open {shlex.quote(str(directory))}"]
        for entry in sorted(entries):
            source, target = shlex.quote(str(held / entry)), shlex.quote(str(directory / entry))
            lines.append(f"if [ -d {source} ]; then mkdir {target}; else touch {target}; fi")
            lines.append(f"mount --bind {source} {target}")
    return lines


class UnprivilegedAppliance(ApplianceProcess):
    """The appliance started by `setpriv` as `user` with the unit's capabilities only."""

    def __init__(self, the_lab: Lab, config_path: Path, log_path: Path, user: str = "nobody",
                 notify_socket: str | None = None, capabilities: Iterable[str] = UNIT_CAPABILITIES) -> None:
        super().__init__(the_lab, config_path, log_path)
        self.capabilities = tuple(capabilities)
        account = lookup_account(user)
        if account is None:
            raise ValueError(f"user {user!r} does not exist")
        self.account = account
        self.notify_socket = notify_socket
        self._stage = Path(tempfile.mkdtemp(prefix="sidus-stage-"))  # /tmp: never below a closed directory

    def needed(self) -> list[Path]:
        code = Path(sidus_appliance.__file__).parent.parent
        paths = [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix), code, self.config_path]
        if self.notify_socket is not None and self.notify_socket.startswith("/"):
            paths.append(Path(self.notify_socket))
        return paths

    def argv(self) -> list[str]:
        self._stage.mkdir(exist_ok=True)  # again after a stop()
        caps = setpriv_caps(self.capabilities)
        setpriv = ["setpriv", f"--reuid={self.account.uid}", f"--regid={self.account.gid}", "--clear-groups",
                   f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={caps}", "--no-new-privs",
                   "--", *self.serve_argv()]
        script = [*exposing_script(closed_directories(self.needed(), self.account), self._stage),
                  "exec " + shlex.join(setpriv)]
        return self.lab.server_argv(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                     "\n".join(script)])

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        code = str(Path(sidus_appliance.__file__).parent.parent)
        env["PYTHONPATH"] = code + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # as under ProtectSystem=strict: nothing written beside the code
        env.pop("NOTIFY_SOCKET", None)
        if self.notify_socket is not None:
            env["NOTIFY_SOCKET"] = self.notify_socket
        return env

    def stop(self, timeout: float = 10) -> int | None:
        code = super().stop(timeout)
        with contextlib.suppress(OSError):
            self._stage.rmdir()  # empty here: its tmpfs lived in the process's own mount namespace
        return code
