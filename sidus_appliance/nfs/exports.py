"""NFS exports: one model built from the config, which each backend renders and applies.

The model (``exports(config)``) is the seed's table:

- ``/export`` (``fsid=0``, the NFSv4 root) and ``/export/home``, read-write for the subnet;
- each instance root read-only for the subnet, and ``rw,no_root_squash`` for the single address
  of each host whose profile is ``master`` (listed first: the most specific client wins).

The read-only export keeps ``no_root_squash`` too: a diskless client's root must read root-only
files of its own root (``/etc/shadow``, ssh host keys); squashing would make them unreadable.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from ..boot.model import Profile
from ..config import Config

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


def pseudo_path(config: Config, path: Path) -> str | None:
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
        Export(nfs.home, (Client(subnet, HOME_OPTIONS),), "home", pseudo_path(config, nfs.home)),
    ]
    masters = tuple(Client(str(ip), MASTER_OPTIONS) for ip in master_addresses(config))
    for inst in config.instances:
        out.append(Export(
            inst.root, (*masters, Client(subnet, INSTANCE_RO_OPTIONS)), "instance",
            pseudo_path(config, inst.root), inst.name,
        ))
    return out


# --------------------------------------------------------------------------- shared by the backends


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
