"""Root's sub-directories of a state_dir the service user owns: never through a planted link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidus_appliance.safedir import UnsafeDirectory, checked_subdir, open_in, private_subdir


def test_creates_a_private_directory_and_opens_files_in_it(tmp_path: Path) -> None:
    fd = private_subdir(tmp_path, "images")
    try:
        out = open_in(fd, "bookworm.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(out, b"step\n")
        os.close(out)
    finally:
        os.close(fd)
    assert (tmp_path / "images" / "bookworm.log").read_text() == "step\n"
    assert (tmp_path / "images").stat().st_mode & 0o777 == 0o700


def test_a_planted_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "etc"
    target.mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "images").symlink_to(target)
    with pytest.raises(UnsafeDirectory):
        private_subdir(tmp_path / "state", "images")
    with pytest.raises(UnsafeDirectory):
        checked_subdir(tmp_path / "state", "images")
    assert list(target.iterdir()) == []


def test_a_planted_file_link_inside_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    fd = private_subdir(tmp_path, "images")
    os.symlink(victim, tmp_path / "images" / "x.log")
    try:
        with pytest.raises(OSError):
            open_in(fd, "x.log", os.O_WRONLY | os.O_APPEND)
    finally:
        os.close(fd)
    assert victim.read_text() == "precious\n"


def test_a_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ganesha").mkdir()
    (tmp_path / "ganesha").chmod(0o777)
    with pytest.raises(UnsafeDirectory):
        checked_subdir(tmp_path, "ganesha")
