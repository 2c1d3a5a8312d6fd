"""Boot file staging: idempotent, recorded, names the package to install when one is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidus_appliance import bootfiles
from tests.unit.test_boot_menus import make_config


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    src = tmp_path / "usr"
    src.mkdir()
    (src / "pxelinux.0").write_bytes(b"loader")
    (src / "syslinux.efi").write_bytes(b"efi")
    path = tmp_path / "manifest"
    path.write_text(
        "# comment\n"
        f"pxelinux.0 pxelinux {src}/pxelinux.0\n"
        f"efi64/syslinux.efi syslinux-efi {src}/syslinux.efi\n"
        f"efi64/absent.c32 syslinux-common {src}/absent.c32\n"
        f"memtest.bin memtest86+ {src}/memtest.bin optional\n"
    )
    return path


def test_install_is_idempotent_and_recorded(tmp_path, manifest):
    config = make_config(tmp_path)
    first = bootfiles.install(config, manifest)
    assert first.staged == ["pxelinux.0", "efi64/syslinux.efi"]
    assert first.skipped == ["memtest.bin"] and not first.ok
    assert first.packages_to_install() == ["syslinux-common"]
    assert "apt-get install syslinux-common" in str(first)
    root = tmp_path / "tftp"
    assert (root / "efi64" / "syslinux.efi").read_bytes() == b"efi"
    record = json.loads((root / bootfiles.RECORD).read_text())["files"]
    assert record["pxelinux.0"]["package"] == "pxelinux" and "version" in record["pxelinux.0"]
    second = bootfiles.install(config, manifest)
    assert second.staged == [] and second.unchanged == ["pxelinux.0", "efi64/syslinux.efi"]


def test_status_sees_stale_and_missing(tmp_path, manifest):
    config = make_config(tmp_path)
    assert len(bootfiles.status(config, manifest).missing) == 3
    bootfiles.install(config, manifest)
    (tmp_path / "usr" / "pxelinux.0").write_bytes(b"new upstream loader")
    report = bootfiles.status(config, manifest)
    assert report.stale == ["pxelinux.0"] and report.unchanged == ["efi64/syslinux.efi"]
    assert bootfiles.install(config, manifest).staged == ["pxelinux.0"]


def test_manifest_refuses_paths_outside_the_root(tmp_path):
    bad = tmp_path / "m"
    bad.write_text("../x pkg /bin/true\n")
    with pytest.raises(ValueError):
        bootfiles.load_manifest(bad)


def test_shipped_manifest_parses_and_covers_every_arch():
    dests = {e.dest for e in bootfiles.load_manifest()}
    assert {"pxelinux.0", "ldlinux.c32", "efi64/syslinux.efi", "efi64/ldlinux.e64", "efi32/ldlinux.e32"} <= dests
