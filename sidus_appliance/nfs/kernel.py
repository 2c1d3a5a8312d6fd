"""The kernel NFS server backend: a managed exports(5) file and ``exportfs -ra``.

``render_kernel`` writes ``/etc/exports.d/sidus.exports`` (never touching other exports); the
kernel reads /var/lib/nfs/etab, which ``check_kernel`` compares with the model.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from ..config import Config
from .exports import HEADER, NFS_PROGRAM, Export, Log, NfsError, _present, _rpc_programs, _run, _write_atomic, exports


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


def check_kernel(config: Config, model: Sequence[Export], netns: str | None, etab: Path) -> list[str]:
    """Problems of the kernel server: exportfs, rpcbind registration, every export in etab."""
    problems: list[str] = []
    if shutil.which("exportfs") is None:
        return ["exportfs not found (apt-get install nfs-kernel-server)"]
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
