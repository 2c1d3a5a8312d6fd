"""NFS exports: one model built from the config, rendered for the kernel server or nfs-ganesha.

The model (``exports(config)``) is the seed's table:

- ``/export`` (``fsid=0``, the NFSv4 root) and ``/export/home``, read-write for the subnet;
- each instance root read-only for the subnet, and ``rw,no_root_squash`` for the single address
  of each host whose profile is ``master`` (listed first: the most specific client wins).

The read-only export keeps ``no_root_squash`` too: a diskless client's root must read root-only
files of its own root (``/etc/shadow``, ssh host keys); squashing would make them unreadable.

Backends:

- ``kernel``: ``render_kernel`` writes a managed file (``/etc/exports.d/sidus.exports``), never
  touching other exports, then ``exportfs -ra``.
- ``ganesha``: ``render_ganesha`` writes an nfs-ganesha config we own; ``apply`` starts rpcbind
  and ``ganesha.nfsd`` (or sends SIGHUP to reload when it already runs). With ``netns=NAME`` the
  servers run inside that network namespace with a private ``/run`` (tests, CI), so nothing
  leaks to the host.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from .boot.model import Profile
from .config import Config
from .safedir import checked_subdir

Log = Callable[[str], None]

ROOT_OPTIONS = ("rw", "fsid=0", "no_subtree_check", "sync")
HOME_OPTIONS = ("rw", "nohide", "no_subtree_check", "sync")
INSTANCE_RO_OPTIONS = ("ro", "no_root_squash", "no_subtree_check", "async")
MASTER_OPTIONS = ("rw", "no_root_squash", "no_subtree_check", "sync")

NFS_PROGRAM = 100003
MOUNT_PROGRAM = 100005
HEADER = "# Managed by sidus-appliance from {source}: edits here are overwritten by `exports apply`."


class NfsError(RuntimeError):
    """An NFS problem, phrased for the administrator (what failed, what to do)."""


@dataclass(frozen=True)
class Client:
    """Who may mount an export (one address or a network) and with which options."""

    who: str
    options: tuple[str, ...]

    @property
    def writable(self) -> bool:
        return "rw" in self.options

    @property
    def squash_root(self) -> bool:
        return "no_root_squash" not in self.options


@dataclass(frozen=True)
class Export:
    path: Path
    clients: tuple[Client, ...]
    role: str  # root, home or instance
    pseudo: str | None = None  # position in the NFSv4 namespace; None: NFSv3 only
    instance: str | None = None


def master_addresses(config: Config) -> list[IPv4Address]:
    return [h.address for h in config.hosts if h.profile is Profile.MASTER]


def _pseudo_under_root(config: Config, path: Path) -> str | None:
    """Where `path` sits in the NFSv4 namespace rooted at export_root (fsid=0), if it does."""
    try:
        rel = path.relative_to(config.nfs.export_root)
    except ValueError:
        return None
    return "/" + str(rel) if str(rel) != "." else "/"


def exports(config: Config) -> list[Export]:
    """The exports the config asks for, most specific client first within each export."""
    subnet = str(config.subnet)
    nfs = config.nfs
    out = [
        Export(nfs.export_root, (Client(subnet, ROOT_OPTIONS),), "root", "/"),
        Export(nfs.home, (Client(subnet, HOME_OPTIONS),), "home", _pseudo_under_root(config, nfs.home)),
    ]
    masters = tuple(Client(str(ip), MASTER_OPTIONS) for ip in master_addresses(config))
    for inst in config.instances:
        out.append(Export(
            inst.root, (*masters, Client(subnet, INSTANCE_RO_OPTIONS)), "instance",
            _pseudo_under_root(config, inst.root), inst.name,
        ))
    return out


# --------------------------------------------------------------------------- rendering


def _quote_path(path: Path) -> str:
    text = str(path)
    if any(c.isspace() for c in text) or '"' in text:
        if '"' in text:
            raise NfsError(f"export path {text!r} contains a double quote, which exports(5) cannot express")
        return f'"{text}"'
    return text


def render_kernel(config: Config, model: Sequence[Export] | None = None) -> str:
    """The managed exports(5) file: one line per export."""
    model = exports(config) if model is None else model
    lines = [HEADER.format(source=config.source)]
    for exp in model:
        clients = " ".join(f"{c.who}({','.join(c.options)})" for c in exp.clients)
        lines.append(f"{_quote_path(exp.path)} {clients}")
    return "\n".join(lines) + "\n"


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


def render(config: Config, backend: str | None = None) -> str:
    """The file `apply` would write for the configured (or given) backend."""
    backend = backend or config.nfs.backend
    if backend == "ganesha":
        return render_ganesha(config)
    if backend == "kernel":
        return render_kernel(config)
    raise NfsError(f"unknown NFS backend {backend!r} (kernel or ganesha)")


# --------------------------------------------------------------------------- applying


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _present(config: Config, log: Log) -> list[Export]:
    """Create /export and /export/home; drop instance roots not built yet, saying so."""
    model = []
    for exp in exports(config):
        if exp.role in ("root", "home"):
            exp.path.mkdir(parents=True, exist_ok=True)
        elif not exp.path.is_dir():
            log(
                f"warning: instance {exp.instance}: {exp.path} does not exist yet, not exported "
                f"(build it with `sidus-appliance image build {exp.instance}`)"
            )
            continue
        model.append(exp)
    return model


def _ns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def _run(argv: Sequence[str], netns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(_ns_argv(netns, argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise NfsError(f"{argv[0]} not found ({exc.strerror})") from None
    except subprocess.TimeoutExpired:
        raise NfsError(f"{' '.join(argv)} did not answer within {timeout:.0f}s") from None


def apply(config: Config, log: Log = print, *, netns: str | None = None, tie_to_caller: bool = False) -> None:
    """Write the backend's file and make the server serve it; raises NfsError on failure.

    ganesha with `netns`: `tie_to_caller` makes the servers end with the calling process (tests,
    the lab), so even a SIGKILLed caller leaves no NFS server behind."""
    if config.nfs.backend == "ganesha":
        apply_ganesha(config, log, netns=netns, tie_to_caller=tie_to_caller)
    else:
        apply_kernel(config, log)


def apply_kernel(config: Config, log: Log = print) -> None:
    if shutil.which("exportfs") is None:
        raise NfsError(
            "exportfs not found: install the kernel NFS server (apt-get install nfs-kernel-server), "
            "or set `nfs.backend: ganesha` where the kernel has no NFS server"
        )
    model = _present(config, log)
    path = config.nfs.exports_file
    _write_atomic(path, render_kernel(config, model))
    log(f"wrote {path} ({len(model)} exports)")
    result = _run(["exportfs", "-ra"])
    messages = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    if result.returncode != 0:
        detail = "\n  ".join(messages) or f"exit status {result.returncode}"
        raise NfsError(f"exportfs -ra failed (is nfs-kernel-server running?):\n  {detail}")
    for line in messages:
        log(f"exportfs: {line}")
    log("exports active (exportfs -ra)")


# -- ganesha ------------------------------------------------------------------------------

# Runs inside `unshare -m` in the target namespace: a private /run gives rpcbind its own socket
# (/run/rpcbind.sock), so a namespaced rpcbind never collides with the host's. With a caller PID
# ($5), a watcher ends ganesha and rpcbind once that process is gone, however it died (rpcbind
# drops to user _rpc, which clears a parent-death signal, hence the polling watcher).
_NETNS_LAUNCHER = r"""
set -e
mount -t tmpfs -o mode=0755 sidus-run /run
mkdir -p /run/rpcbind
rpcbind -f -w &
rpc=$!
echo $rpc > "$4"
i=0
while [ ! -S /run/rpcbind.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -n "$5" ]; then
    server=$$
    (
        while kill -0 "$5" 2> /dev/null && kill -0 "$server" 2> /dev/null; do sleep 0.5; done
        kill -9 "$server" "$rpc" 2> /dev/null
    ) < /dev/null > /dev/null 2>&1 &
fi
exec ganesha.nfsd -F -f "$1" -L "$2" -p "$3"
"""


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


def _rpc_programs(netns: str | None, host: str = "127.0.0.1") -> set[int]:
    try:
        result = _run(["rpcinfo", "-p", host], netns, timeout=10)
    except NfsError:
        return set()
    programs = set()
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            programs.add(int(fields[0]))
    return programs


def apply_ganesha(
    config: Config, log: Log = print, *, netns: str | None = None, timeout: float = 20, tie_to_caller: bool = False
) -> None:
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
    if netns:
        with open(paths.state / "launcher.err", "w") as errors:
            subprocess.Popen(
                ["ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private",
                 "sh", "-c", _NETNS_LAUNCHER, "sidus-ganesha",
                 str(paths.config), str(paths.log), str(paths.pidfile), str(paths.rpcbind_pidfile),
                 str(os.getpid()) if tie_to_caller else ""],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
            )
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


# --------------------------------------------------------------------------- checking


def parse_etab(text: str) -> set[tuple[str, str]]:
    """(path, client) pairs from /var/lib/nfs/etab (what the kernel server exports now)."""
    active = set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, _, rest = line.partition("\t")
        client = rest.split("(", 1)[0].strip()
        active.add((path.strip().strip('"'), client))
    return active


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


def check(config: Config, *, netns: str | None = None, etab: Path = Path("/var/lib/nfs/etab")) -> list[str]:
    """Problems with the NFS side (empty: the server runs and every built export is active)."""
    problems: list[str] = []
    model = []
    for exp in exports(config):
        if not exp.path.is_dir():
            what = {"root": "export root", "home": "home export"}.get(exp.role, f"instance {exp.instance}")
            problems.append(f"{what}: {exp.path} does not exist")
        else:
            model.append(exp)
    if config.nfs.backend == "kernel":
        if shutil.which("exportfs") is None:
            return [*problems, "exportfs not found (apt-get install nfs-kernel-server)"]
        if NFS_PROGRAM not in _rpc_programs(netns):
            problems.append("no NFS server registered with rpcbind (is nfs-kernel-server running?)")
        if not config.nfs.exports_file.exists():
            problems.append(f"{config.nfs.exports_file} missing: run `sidus-appliance exports apply`")
        try:
            active = parse_etab(etab.read_text())
        except OSError as exc:
            return [*problems, f"cannot read {etab}: {exc.strerror}"]
        for exp in model:
            for c in exp.clients:
                if (str(exp.path), c.who) not in active:
                    problems.append(f"{exp.path} is not exported to {c.who} (run `sidus-appliance exports apply`)")
        return problems
    if ganesha_pid(config) is None:
        return [*problems, "ganesha.nfsd is not running (run `sidus-appliance exports apply`)"]
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


# --------------------------------------------------------------------------- command line


def _load(args: argparse.Namespace) -> Config:
    from .config import load_config

    return load_config(args.config)


def cmd_render(args: argparse.Namespace) -> int:
    print(render(_load(args), args.backend), end="")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        apply(_load(args), netns=args.netns)
    except NfsError as exc:
        print(f"exports: {exc}")
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    problems = check(_load(args), netns=args.netns)
    for problem in problems:
        print(f"problem: {problem}")
    print("exports OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_stop(args: argparse.Namespace) -> int:
    stop_ganesha(_load(args))
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """`exports render|apply|check|stop`, for cli.py to register."""
    from .cli import _config_arg

    parser = sub.add_parser("exports", help="NFS exports: render, apply, check (kernel server or nfs-ganesha)")
    verbs = parser.add_subparsers(dest="exports_command", required=True)
    p = verbs.add_parser("render", help="print the managed exports file (or the ganesha config)")
    _config_arg(p)
    p.add_argument("--backend", choices=["kernel", "ganesha"], help="default: nfs.backend from the config")
    p.set_defaults(func=cmd_render)
    for name, func, text in (
        ("apply", cmd_apply, "write the managed file and make the NFS server serve it"),
        ("check", cmd_check, "verify the NFS server runs and every built export is active"),
        ("stop", cmd_stop, "stop the ganesha.nfsd that `apply` started (ganesha backend)"),
    ):
        p = verbs.add_parser(name, help=text)
        _config_arg(p)
        p.add_argument("--netns", help="ganesha backend: run/check inside this network namespace")
        p.set_defaults(func=func)
