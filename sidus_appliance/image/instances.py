"""`image list` and what the boot tree needs from an instance (kernels, initrds), no copies."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..boot.kernels import BootImage, ImageKind, initrd_name, kernel_name, kernel_versions
from ..config import Config
from .builder import STAMP_DIR, STEPS


@dataclass(frozen=True)
class BootKernel:
    """A kernel the TFTP tree serves as `vmlinuz-<version>@<instance>` (and its initrd)."""

    instance: str
    version: str
    kernel: Path
    initrd: Path

    @property
    def kernel_name(self) -> str:
        return kernel_name(self.version, self.instance)

    @property
    def initrd_name(self) -> str:
        return initrd_name(self.version, self.instance)


@dataclass
class InstanceInfo:
    name: str
    root: Path
    configured: bool  # listed under `instances:` in the config (exported, in the menus)
    exists: bool
    steps_done: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    size_bytes: int | None = None

    @property
    def built(self) -> bool:
        return self.steps_done == list(STEPS)

    @property
    def state(self) -> str:
        if not self.exists:
            return "not built"
        if self.built:
            return "ready"
        if self.steps_done:
            return f"partial ({self.steps_done[-1]} done)"
        return "foreign (not built here)"


def boot_kernels(name: str, root: Path) -> list[BootKernel]:
    """The instance's kernels with their initrds, newest first."""
    return [
        BootKernel(name, v, BootImage(ImageKind.KERNEL, v, name).path_in(root),
                   BootImage(ImageKind.INITRD, v, name).path_in(root))
        for v in kernel_versions(root)
    ]


def disk_usage(path: Path, timeout: float = 120) -> int | None:
    try:
        result = subprocess.run(["du", "-sxb", str(path)], capture_output=True, text=True, timeout=timeout, check=False)
        return int(result.stdout.split()[0])
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return None


def list_instances(config: Config, *, sizes: bool = True) -> list[InstanceInfo]:
    """Configured instances plus any other root found under nfs.instances_dir."""
    roots: dict[str, tuple[Path, bool]] = {inst.name: (inst.root, True) for inst in config.instances}
    if config.nfs.instances_dir.is_dir():
        for path in sorted(config.nfs.instances_dir.iterdir()):
            if path.is_dir() and path.name not in roots:
                roots[path.name] = (path, False)
    out = []
    for name, (root, configured) in roots.items():
        exists = root.is_dir()
        info = InstanceInfo(name, root, configured, exists)
        if exists:
            info.steps_done = [s for s in STEPS if (root / STAMP_DIR / s).exists()]
            info.kernels = kernel_versions(root)
            info.size_bytes = disk_usage(root) if sizes else None
        out.append(info)
    return out


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_instances(infos: list[InstanceInfo]) -> str:
    if not infos:
        return "no instances (build one with `sidus-appliance image build NAME`)\n"
    lines = [f"{'NAME':<16} {'STATE':<24} {'SIZE':>10}  {'IN CONFIG':<9}  KERNELS  (ROOT)"]
    for i in infos:
        lines.append(
            f"{i.name:<16} {i.state:<24} {human_size(i.size_bytes):>10}  {'yes' if i.configured else 'no':<9}  "
            f"{', '.join(i.kernels) or '-'}  ({i.root})"
        )
    return "\n".join(lines) + "\n"
