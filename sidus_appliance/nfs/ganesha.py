"""The nfs-ganesha backend: a config we own (FSAL VFS), rpcbind and ganesha.nfsd started and
reloaded (SIGHUP) by PID, checked through rpcbind and showmount.

Used where the kernel has no NFS server (our CI, containers). The lab starts the same servers
inside a network namespace through a `launcher` (sidus_appliance/lab/ganesha.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..safedir import checked_subdir
from .exports import (
    HEADER,
    MOUNT_PROGRAM,
    NFS_PROGRAM,
    Export,
    Log,
    NfsError,
    _present,
    _rpc_programs,
    _run,
    _write_atomic,
    exports,
)


def export_id(exp: Export) -> int:
    """A stable Export_Id: ganesha reloads treat a changed id/path pair as remove + add."""
    if exp.role == "root":
        return 1
    if exp.role == "home":
        return 2
    return 1000 + zlib.crc32(str(exp.path).encode()) % 60000


def ganesha_state_dir(config: Config) -> Path:
    return config.state_dir / "ganesha"


def checked_ganesha_state_dir(config: Config) -> Path:
    """The ganesha state dir, created 0700 and checked not to be a planted link (state_dir belongs
    to the service user after a privilege drop, and ganesha runs as root)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return checked_subdir(config.state_dir, "ganesha")


def _ganesha_str(text: str) -> str:
    if '"' in text:
        raise NfsError(f"{text!r} contains a double quote, which a ganesha config cannot express")
    return f'"{text}"'


def render_ganesha(config: Config, model: Sequence[Export] | None = None, state_dir: Path | None = None) -> str:
    """The same model as an nfs-ganesha config (FSAL VFS), kernel semantics preserved.

    `/export` is the NFSv4 root (Pseudo "/"), like fsid=0; exports outside it are NFSv3 only,
    as with the kernel server. NLM is off: the seed's clients mount with `nolock`.
    """
    model = exports(config) if model is None else model
    state = state_dir or ganesha_state_dir(config)
    out = [
        HEADER.format(source=config.source),
        "NFS_CORE_PARAM {",
        "    Protocols = 3, 4;",
        "    Enable_NLM = false;",
        "    Enable_RQUOTA = false;",
        "    mount_path_pseudo = false;",
        "}",
        "NFSV4 {",
        "    Graceless = true;",
        f"    RecoveryRoot = {_ganesha_str(str(state / 'recovery'))};",
        "}",
        "EXPORT_DEFAULTS {",
        "    SecType = sys;",
        "    Access_Type = None;",
        "}",
    ]
    used: set[int] = set()
    for exp in model:
        ident = export_id(exp)
        while ident in used:
            ident += 1
        used.add(ident)
        out += [
            f"# {exp.role}{' ' + exp.instance if exp.instance else ''}",
            "EXPORT {",
            f"    Export_Id = {ident};",
            f"    Path = {_ganesha_str(str(exp.path))};",
        ]
        if exp.pseudo is not None:
            out += [f"    Pseudo = {_ganesha_str(exp.pseudo)};", "    Protocols = 3, 4;"]
        else:
            out += ["    Protocols = 3;"]
        out += ["    Squash = root_squash;", "    FSAL { Name = VFS; }"]
        for c in exp.clients:
            access = "RW" if c.writable else "RO"
            squash = "root_squash" if c.squash_root else "no_root_squash"
            out.append(f"    CLIENT {{ Clients = {c.who}; Access_Type = {access}; Squash = {squash}; }}")
        out.append("}")
    return "\n".join(out) + "\n"


def _pid_alive(pidfile: Path, comm: str) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if name == comm[:15] else None


@dataclass(frozen=True)
class GaneshaPaths:
    config: Path
    state: Path

    @property
    def pidfile(self) -> Path:
        return self.state / "ganesha.pid"

    @property
    def rpcbind_pidfile(self) -> Path:
        return self.state / "rpcbind.pid"

    @property
    def log(self) -> Path:
        return self.state / "ganesha.log"


def ganesha_paths(config: Config) -> GaneshaPaths:
    return GaneshaPaths(config.nfs.ganesha_config, ganesha_state_dir(config))


def ganesha_pid(config: Config) -> int | None:
    return _pid_alive(ganesha_paths(config).pidfile, "ganesha.nfsd")


Launcher = Callable[[GaneshaPaths], None]  # starts rpcbind + ganesha.nfsd somewhere other than here


def apply_ganesha(
    config: Config, log: Log = print, *, launcher: Launcher | None = None, netns: str | None = None,
    timeout: float = 20,
) -> None:
    """Write the config and start ganesha.nfsd (SIGHUP when it runs already) on this host, or with
    `launcher` elsewhere (the lab's namespace); `netns` is where to look for its rpcbind then."""
    for binary in ("ganesha.nfsd", "rpcbind", "rpcinfo"):
        if shutil.which(binary) is None:
            raise NfsError(f"{binary} not found: apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind")
    paths = GaneshaPaths(config.nfs.ganesha_config, checked_ganesha_state_dir(config))
    (paths.state / "recovery").mkdir(parents=True, exist_ok=True)
    model = _present(config, log)
    _write_atomic(paths.config, render_ganesha(config, model, paths.state))
    log(f"wrote {paths.config} ({len(model)} exports)")
    pid = ganesha_pid(config)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        log(f"ganesha.nfsd (pid {pid}) reloading its exports (SIGHUP)")
        return
    with contextlib.suppress(FileNotFoundError):
        paths.pidfile.unlink()
    if launcher is not None:
        launcher(paths)
    else:
        if NFS_PROGRAM in _rpc_programs(None):
            raise NfsError("another NFS server is registered with rpcbind on this host; stop it first")
        if not _rpc_programs(None):
            result = _run(["rpcbind", "-w"])
            if result.returncode != 0:
                raise NfsError(f"rpcbind failed to start: {result.stderr.strip()}")
            log("started rpcbind")
        result = _run(["ganesha.nfsd", "-f", str(paths.config), "-L", str(paths.log), "-p", str(paths.pidfile)])
        if result.returncode != 0:
            raise NfsError(f"ganesha.nfsd failed to start: {result.stderr.strip()} (see {paths.log})")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if {NFS_PROGRAM, MOUNT_PROGRAM} <= _rpc_programs(netns) and ganesha_pid(config):
            log(f"ganesha.nfsd serving (pid {ganesha_pid(config)}{', netns ' + netns if netns else ''})")
            return
        time.sleep(0.2)
    tail = ""
    with contextlib.suppress(OSError):
        tail = "\n  ".join(paths.log.read_text(errors="replace").splitlines()[-15:])
    stop_ganesha(config)
    raise NfsError(f"ganesha.nfsd did not register NFS with rpcbind within {timeout:.0f}s; log {paths.log}:\n  {tail}")


def stop_ganesha(config: Config, log: Log = print) -> None:
    """Stop the ganesha.nfsd (and a namespaced rpcbind) that `apply` started, by PID."""
    paths = ganesha_paths(config)
    for pidfile, comm in ((paths.pidfile, "ganesha.nfsd"), (paths.rpcbind_pidfile, "rpcbind")):
        pid = _pid_alive(pidfile, comm)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if _pid_alive(pidfile, comm) is None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        log(f"stopped {comm} (pid {pid})")
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()


def parse_showmount(text: str) -> dict[str, set[str]]:
    """`showmount -e` output → {path: {clients}}."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            out[fields[0]] = set(fields[1].split(","))
    return out


def _normal_client(who: str) -> str:
    return who if "/" in who else f"{who}/32"


def check_ganesha(config: Config, model: Sequence[Export], netns: str | None) -> list[str]:
    """Problems of ganesha: running, NFS and mountd registered, every export listed by showmount."""
    problems: list[str] = []
    if ganesha_pid(config) is None:
        return ["ganesha.nfsd is not running (run `sidus-appliance exports apply`)"]
    programs = _rpc_programs(netns)
    for prog, name in ((NFS_PROGRAM, "nfs"), (MOUNT_PROGRAM, "mountd")):
        if prog not in programs:
            problems.append(f"{name} ({prog}) is not registered with rpcbind")
    # ganesha lists only the exports the asking address may mount: ask from the subnet.
    result = _run(["showmount", "-e", str(config.server_ip)], netns)
    if result.returncode != 0:
        return [*problems, f"showmount -e failed: {result.stderr.strip()}"]
    listed = parse_showmount(result.stdout)
    for exp in model:
        clients = {_normal_client(w) for w in listed.get(str(exp.path), set())}
        for c in exp.clients:
            if _normal_client(c.who) not in clients:
                problems.append(f"{exp.path} is not exported to {c.who}")
    return problems
