"""The wheel works without the source tree: built with `pip wheel`, installed into a fresh venv,
run from another directory, it finds its package data (boot-files manifest, dracut module,
example config, systemd unit) and stages the boot loaders."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from ..configs import nfs_config_text
from ..conftest import require

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_installs_and_runs_without_the_source_tree(tmp_path: Path) -> None:
    require("staging boot files from Debian's packages", root=False,
            tools=["/usr/lib/PXELINUX/pxelinux.0", "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi"])
    wheels = tmp_path / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)], tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("sidus_appliance-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, cli = env_dir / "bin" / "python", env_dir / "bin" / "sidus-appliance"
    installed = run([str(python), "-m", "pip", "install", "-q", str(wheel)], tmp_path)
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"  # not the repo: nothing of the source tree on the path
    elsewhere.mkdir()
    where = run([str(python), "-c", "import sidus_appliance.resources as r; print(r.__file__); "
                 "print(r.data_path(*r.DRACUT_MODULE)); print(r.data_path(*r.BOOTFILES_MANIFEST))"], elsewhere)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(env_dir)) and Path(line).exists(), where.stdout
    assert (Path(where.stdout.split()[1]) / "module-setup.sh").is_file()

    # A config of an administrator's own: boot tree and state in this test's directory.
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    (tmp_path / "state").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(nfs_config_text(tmp_path, [], interface="eth1", backend="kernel",
                                      extra=f"tftp:\n  root: {tftp}\n"))
    staged = run([str(cli), "bootfiles", "install", "--config", str(config)], elsewhere)
    assert staged.returncode == 0, staged.stdout + staged.stderr
    assert (tftp / "pxelinux.0").read_bytes() == Path("/usr/lib/PXELINUX/pxelinux.0").read_bytes()
    assert (tftp / "efi64" / "syslinux.efi").is_file() and (tftp / "ldlinux.c32").is_file()
    checked = run([str(cli), "check", "--config", str(config)], elsewhere)
    assert checked.returncode == 0 and "config OK" in checked.stdout, checked.stdout + checked.stderr
    menu = run([str(cli), "menu", "--config", str(config), "--mac", "08:00:aa:bb:cc:dd"], elsewhere)
    assert menu.returncode == 0 and "MASTER, read-write" in menu.stdout, menu.stderr
    # The lab's commands load their example config from the package data too.
    example = run([str(python), "-c", "from sidus_appliance.lab import EXAMPLE_CONFIG as e; print(e.read_text())"],
                  elsewhere)
    assert example.returncode == 0 and "interface:" in example.stdout, example.stderr
    # The systemd unit is package data too, and starts the venv's own entry point.
    unit = run([str(cli), "service", "install", "--config", str(config), "--user", "no-such-user-here",
                "--dry-run"], elsewhere)
    # 1: it names problems, e.g. a Python under /root that ProtectHome would hide (a pyenv)
    assert unit.returncode in (0, 1), unit.stdout + unit.stderr
    assert f"ExecStart={cli} serve --config {config}\n" in unit.stdout, unit.stdout
