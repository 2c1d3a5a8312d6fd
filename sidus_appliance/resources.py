"""Data files shipped inside the package (sidus_appliance/data/), found with importlib.resources,
so a wheel installed anywhere finds them as the source tree does."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DRACUT_MODULE = ("dracut", "90sidus")  # our dracut module, copied into each instance
BOOTFILES_MANIFEST = ("bootfiles.manifest",)  # which Debian package files become the boot tree
EXAMPLE_CONFIG = ("config.example.yaml",)  # the documented example, also the lab's base config
SYSTEMD_UNIT = ("systemd", "sidus-appliance.service")  # `service install` fills in its @FIELDS@


def data_path(*parts: str) -> Path:
    """A file or directory of the package data, as a real path (tools like dracut and cp need one)."""
    resource = files("sidus_appliance").joinpath("data", *parts)
    if not isinstance(resource, Path):  # a zipped install: we never build one
        raise FileNotFoundError(f"package data {'/'.join(parts)} is not on a file system ({resource})")
    return resource
