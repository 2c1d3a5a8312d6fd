"""Image builder: shared Debian roots (instances) built with debootstrap, booted over NFS."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..boot.kernels import kernel_versions
from .builder import STEPS, Builder, BuildError, BuildResult, build, instance_root
from .chrootenv import ChrootError
from .instances import BootKernel, InstanceInfo, boot_kernels, format_instances, list_instances

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "STEPS", "BootKernel", "BuildError", "BuildResult", "Builder", "ChrootError", "InstanceInfo", "boot_kernels",
    "build", "chroot", "format_instances", "instance_root", "kernel_versions", "list_instances",
]


def chroot(config: Config, name: str, argv: list[str] | None = None) -> int:
    """Run argv (default: a login shell) inside instance `name`; returns its exit status."""
    from .chrootenv import shell

    root: Path = instance_root(config, name)
    return shell(root, argv or [])
