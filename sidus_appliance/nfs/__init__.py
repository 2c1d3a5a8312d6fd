"""NFS stays the kernel's job (or nfs-ganesha's): the appliance renders and applies managed exports.

    exports.py   the model (the seed's table) and what both backends share
    kernel.py    kernel server: /etc/exports.d/sidus.exports + exportfs -ra, checked against etab
    ganesha.py   nfs-ganesha: its config, rpcbind + ganesha.nfsd by PID, checked with showmount
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from .exports import Export, Log, NfsError, exports, master_addresses
from .ganesha import apply_ganesha, check_ganesha, ganesha_paths, ganesha_pid, render_ganesha, stop_ganesha
from .kernel import apply_kernel, check_kernel, render_kernel

BACKENDS = ("kernel", "ganesha")

__all__ = [
    "BACKENDS", "Export", "NfsError", "apply", "check", "exports", "ganesha_paths", "ganesha_pid",
    "master_addresses", "render", "render_ganesha", "render_kernel", "stop_ganesha",
]


def render(config: Config, backend: str | None = None) -> str:
    """The file `apply` would write for the configured (or given) backend."""
    backend = backend or config.nfs.backend
    if backend == "ganesha":
        return render_ganesha(config)
    if backend == "kernel":
        return render_kernel(config)
    raise NfsError(f"unknown NFS backend {backend!r} (kernel or ganesha)")


def apply(config: Config, log: Log = print) -> None:
    """Write the backend's file and make the server on this host serve it; raises NfsError."""
    if config.nfs.backend == "ganesha":
        apply_ganesha(config, log)
    else:
        apply_kernel(config, log)


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
        return problems + check_kernel(config, model, netns, etab)
    return problems + check_ganesha(config, model, netns)
