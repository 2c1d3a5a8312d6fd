"""The systemd unit: rendered from package data, installed by `sidus-appliance service install`.

The unit starts `serve` as its own system user with three ambient capabilities (the table
below says why each), a read-only file system but for `state_dir`, and `Type=notify` (serve
reports readiness itself, see sdnotify.py). Under the unit `serve` never runs as root, so
`user:` in the config is not needed (a `user:` naming the unit's user is accepted).

Installing writes the unit, creates the user (`useradd --system`) and `state_dir` owned by it,
and runs `systemctl daemon-reload` when systemd runs here. It never enables or starts the
service: that is the administrator's `systemctl enable --now sidus-appliance`. `root` writes
under another directory instead of `/` (an image being prepared, a test).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .resources import SYSTEMD_UNIT, data_path
from .runtime import ServiceUser, StartupError, StateDir

UNIT_NAME = "sidus-appliance.service"
UNIT_DIR = Path("etc/systemd/system")  # below the root: the administrator's units
DEFAULT_USER = "sidus"
# What serve does with each capability; nothing else is granted (CapabilityBoundingSet too).
CAPABILITIES = {
    "CAP_NET_BIND_SERVICE": "ports below 1024: DNS 53, DHCP 67, TFTP 69, HTTP 80",
    "CAP_NET_ADMIN": "ARP entries (SIOCSARP), so a DHCP reply reaches a client without an address by unicast",
    "CAP_NET_RAW": "the RA quench's raw ICMPv6 socket; SO_BINDTODEVICE on kernels before 5.7",
}
# ProtectHome=yes: the service sees none of these; nothing it reads may live there.
HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    group: str
    groups: frozenset[int] = frozenset()


def entry_point() -> list[str]:
    """How systemd should start us: the console script beside this interpreter (a venv's, or
    /usr/bin's), else the one on PATH, else the interpreter with `-m`."""
    beside = Path(sys.executable).parent / "sidus-appliance"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("sidus-appliance")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "sidus_appliance.cli"]


def unit_word(text: str) -> str:
    """One command-line word or path for a unit file: specifiers and variables escaped, quoted
    when it holds blanks or quotes (systemd.service(5), "Command lines")."""
    text = text.replace("%", "%%").replace("$", "$$")
    if any(c in text for c in " \t\"'\\;"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render_unit(config_path: Path, state_dir: Path, user: str, group: str, exec_argv: Iterable[str]) -> str:
    """The packaged unit with its @FIELDS@ filled in."""
    template = data_path(*SYSTEMD_UNIT).read_text()
    values = {
        "@EXEC@": " ".join(unit_word(word) for word in exec_argv),
        "@CONFIG@": unit_word(str(config_path)),
        "@STATE_DIR@": unit_word(str(state_dir)),
        "@USER@": unit_word(user),
        "@GROUP@": unit_word(group),
    }
    for key, value in values.items():
        template = template.replace(key, value)
    return template


# --------------------------------------------------------------------------- accounts


def lookup_account(name: str, root: Path = Path("/")) -> Account | None:
    """`name` in the account database of `root` (its etc/passwd if it has one, else the host's)."""
    passwd, group_file = root / "etc/passwd", root / "etc/group"
    if root == Path("/") or not passwd.exists():
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        groups = frozenset(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
        return Account(name, entry.pw_uid, entry.pw_gid, grp.getgrgid(entry.pw_gid).gr_name, groups)
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name:
            uid, gid = int(fields[2]), int(fields[3])
            group = str(gid)
            if group_file.exists():
                for gline in group_file.read_text().splitlines():
                    gfields = gline.split(":")
                    if len(gfields) >= 3 and gfields[2] == str(gid):
                        group = gfields[0]
            return Account(name, uid, gid, group)
    return None


def useradd_argv(name: str, state_dir: Path, root: Path) -> list[str]:
    """A system user with no login and no home of its own (state_dir stands in for one)."""
    argv = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(state_dir),
            "--shell", "/usr/sbin/nologin", "--comment", "sidus-appliance"]
    if root != Path("/"):
        argv += ["--root", str(root)]
    return [*argv, name]


# --------------------------------------------------------------------------- readability


def permission_bits(info: os.stat_result, account: Account) -> int:
    """rwx (as 0o7) that apply to `account`: the owner's, the group's or everyone's."""
    if info.st_uid == account.uid:
        return (info.st_mode >> 6) & 0o7
    if info.st_gid == account.gid or info.st_gid in account.groups:
        return (info.st_mode >> 3) & 0o7
    return info.st_mode & 0o7


def first_denied(path: Path, account: Account, execute: bool = False) -> tuple[Path, str] | None:
    """The first component of `path` that `account` cannot enter (a directory above it) or read
    (or run, with `execute`), judged from the permission bits, with what it cannot do; None if
    nothing stops it."""
    chain = [*reversed(path.parents), path]
    for i, part in enumerate(chain):
        try:
            info = part.stat()
        except OSError as exc:
            return part, exc.strerror or "cannot stat"
        last = i == len(chain) - 1
        if not last:
            need, verb = stat.S_IXOTH, "enter"
        elif stat.S_ISDIR(info.st_mode):
            need, verb = stat.S_IROTH | stat.S_IXOTH, "read"
        else:
            need, verb = (stat.S_IROTH | stat.S_IXOTH, "run") if execute else (stat.S_IROTH, "read")
        if permission_bits(info, account) & need != need:
            mode = stat.S_IMODE(info.st_mode)
            return part, f"mode {mode:o}, owner uid {info.st_uid}: {account.name} cannot {verb} it"
    return None


def unreadable(path: Path, account: Account, execute: bool = False) -> str | None:
    """Why `account` could not read (or run) `path`; None if it can."""
    denied = first_denied(path, account, execute)
    return None if denied is None else f"{denied[0]} ({denied[1]})"


def hidden_by_protect_home(path: Path) -> Path | None:
    for hidden in HIDDEN_BY_PROTECT_HOME:
        if path == hidden or hidden in path.parents:
            return hidden
    return None


def service_problems(config: Config, config_path: Path, exec_argv: list[str], account: Account | None) -> list[str]:
    """What would keep the unit from starting: files under /home or /root (ProtectHome=yes
    hides them), files the service user cannot read."""
    wanted: list[tuple[str, Path, bool]] = [
        ("ExecStart", Path(exec_argv[0]), True),
        ("interpreter", Path(os.path.realpath(sys.executable)), True),
        ("Python's standard library", Path(sys.base_prefix), False),  # a venv's copied python needs it
        ("Python environment", Path(sys.prefix), False),
        ("package", Path(__file__).parent, False),  # an editable install: the source tree
        ("config", config_path, False),
    ]
    if config.tftp.enabled or config.http.enabled:
        wanted.append(("tftp.root", config.tftp.root, False))
    wanted += [(f"instance {inst.name}", inst.root, False) for inst in config.instances]
    problems = []
    for what, path, execute in wanted:
        hidden = hidden_by_protect_home(Path(os.path.realpath(path)))
        if hidden is not None:
            problems.append(f"{what}: {path} is under {hidden}, which ProtectHome=yes hides from the service; "
                            "install sidus-appliance with a Python outside /home and /root "
                            "(e.g. Debian's python3 and a venv in /opt/sidus-appliance)")
            continue
        reason = unreadable(path, account, execute) if account is not None else None
        if reason is not None:
            problems.append(f"{what}: {reason}")
    if config.user is not None and account is not None and config.user != account.name:
        problems.append(f"user: the config drops to {config.user!r}, but the unit runs as {account.name!r}; "
                        "remove `user:` from the config (the unit never starts serve as root)")
    return problems


# --------------------------------------------------------------------------- install


@dataclass
class Install:
    """The install, step by step: each step printed as done, or as planned with --dry-run."""

    config: Config
    config_path: Path
    user: str
    root: Path = Path("/")
    dry_run: bool = False
    say: Callable[[str], None] = print
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] = field(
        default=lambda argv: subprocess.run(argv, capture_output=True, text=True, check=False))

    def under_root(self, path: Path) -> Path:
        return self.root / path.relative_to("/") if path.is_absolute() else self.root / path

    @property
    def unit_path(self) -> Path:
        return self.root / UNIT_DIR / UNIT_NAME

    def execute(self) -> int:
        exec_argv = entry_point()
        account = self.ensure_user()
        group = account.group if account is not None else self.user
        unit = render_unit(self.config_path, self.config.state_dir, self.user, group, exec_argv)
        self.write_unit(unit)
        self.ensure_state_dir(account)
        self.daemon_reload()
        problems = service_problems(self.config, self.config_path, exec_argv, account)
        for problem in problems:
            self.say(f"problem: {problem}")
        self.say(f"next: systemctl enable --now {UNIT_NAME.removesuffix('.service')}"
                 if not problems else f"{len(problems)} problem(s): the service would not start as it is")
        return 1 if problems else 0

    def ensure_user(self) -> Account | None:
        account = lookup_account(self.user, self.root)
        if account is not None:
            self.say(f"user: {self.user} exists (uid {account.uid})")
            return account
        argv = useradd_argv(self.user, self.config.state_dir, self.root)
        if self.dry_run:
            self.say(f"would run: {' '.join(argv)}")
            return None
        result = self.run(argv)
        if result.returncode != 0:
            raise InstallError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        account = lookup_account(self.user, self.root)
        if account is None:
            raise InstallError(f"useradd succeeded but {self.user} is not in {self.root / 'etc/passwd'}")
        self.say(f"user: created {self.user} (uid {account.uid})")
        return account

    def write_unit(self, unit: str) -> None:
        path = self.unit_path
        if self.dry_run:
            self.say(f"would write {path}:")
            self.say(unit)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(unit)
        temporary.chmod(0o644)
        temporary.replace(path)
        self.say(f"wrote {path}")

    def ensure_state_dir(self, account: Account | None) -> None:
        """state_dir owned by the service user and writable by it alone (serve refuses a
        directory another user could write to); journal files a root-run serve left there are
        handed over the way serve's own privilege drop does it (no planted link followed)."""
        path = self.under_root(self.config.state_dir)
        if self.dry_run:
            self.say(f"would create {path} or hand it over (owner {self.user}, mode 750 if created)")
            return
        assert account is not None
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise InstallError(f"state_dir: {path} exists and is not a directory")
        if not path.exists():
            path.mkdir(mode=0o750, parents=True)
            path.chmod(0o750)  # whatever the umask
        user = ServiceUser(account.name, account.uid, account.gid, tuple(account.groups))
        held = StateDir(path, user)
        try:
            held.open()
            held.check_entries()
            held.hand_over()
        except StartupError as exc:
            raise InstallError(str(exc)) from None
        finally:
            held.close()
        self.say(f"state_dir: {path} owned by {self.user}")

    def daemon_reload(self) -> None:
        if self.root != Path("/"):
            self.say(f"systemctl daemon-reload: skipped (unit written under {self.root})")
        elif not Path("/run/systemd/system").is_dir():
            self.say("systemctl daemon-reload: skipped (systemd is not running on this host)")
        elif self.dry_run:
            self.say("would run: systemctl daemon-reload")
        else:
            result = self.run(["systemctl", "daemon-reload"])
            if result.returncode != 0:
                raise InstallError(f"systemctl daemon-reload failed: {result.stderr.strip()}")
            self.say("systemctl daemon-reload: done")


class InstallError(Exception):
    """The install cannot go on; the message says why."""
