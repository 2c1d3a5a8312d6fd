"""Configs that parse but cannot work (issue 9, case 8): `check` said OK, `serve` started and
served nothing, SIGHUP applied them. Each must be refused naming file:line and key; a refused
SIGHUP keeps the running config, which still serves real clients."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidus_appliance.lab import Lab, run_udhcpc, write_lab_config

from ..conftest import StartAppliance, serving
from . import checks

pytestmark = pytest.mark.integration

# A case breaks the config data, using `scratch` for paths of its own (never the running
# appliance's directories); returns the dotted key, the problem, and a text found on the
# key's line of the written YAML.
Breaker = Callable[[dict[str, Any], Path], tuple[str, str, str]]


def missing_tftp_root(data: dict[str, Any], scratch: Path) -> tuple[str, str, str]:
    root = scratch / "no-such-tftp"
    data["tftp"]["root"] = str(root)
    return "tftp.root", f"{root} does not exist (run sidus-appliance bootfiles install", f"root: {root}"


def tftp_root_is_a_file(data: dict[str, Any], scratch: Path) -> tuple[str, str, str]:
    root = scratch / "tftp-file"
    root.write_text("not a boot tree\n")
    data["tftp"]["root"] = str(root)
    return "tftp.root", f"{root} is not a directory", f"root: {root}"


def missing_instance_root(data: dict[str, Any], scratch: Path) -> tuple[str, str, str]:
    root = scratch / "nfsroot" / "lab"
    data["instances"] = [{"name": "lab", "root": str(root)}]
    return "instances[0].root", f"{root} does not exist (build it: sidus-appliance image build lab)", f"root: {root}"


def missing_state_dir(data: dict[str, Any], scratch: Path) -> tuple[str, str, str]:
    state = scratch / "no-such-state"
    data["state_dir"] = str(state)
    return "state_dir", f"{state} does not exist", "state_dir:"


def gateway_outside_subnet(data: dict[str, Any], scratch: Path) -> tuple[str, str, str]:
    data["gateway"] = "10.20.18.1"
    return "gateway", "10.20.18.1 is outside the subnet 10.20.17.0/24", "gateway:"


CASES: list[Breaker] = [
    missing_tftp_root,
    tftp_root_is_a_file,
    missing_instance_root,
    missing_state_dir,
    gateway_outside_subnet,
]
IDS = [case.__name__ for case in CASES]


def write_broken(config_path: Path, base: dict[str, Any], breaker: Breaker, scratch: Path) -> str:
    """Write `base` broken by `breaker` to config_path; returns the message expected for it."""
    scratch.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    key, problem, needle = breaker(data, scratch)
    text = yaml.safe_dump(data, sort_keys=False)
    config_path.write_text(text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if needle in row)
    return f"{config_path}:{line}: {key}: {problem}"


def lab_config(workdir: Path) -> dict[str, Any]:
    """The lab's working config (its state_dir and boot tree exist), as data."""
    return yaml.safe_load(write_lab_config(workdir).read_text())


@pytest.mark.parametrize("breaker", CASES, ids=IDS)
def test_check_refuses(tmp_path: Path, breaker: Breaker) -> None:
    base = lab_config(tmp_path / "lab")
    expected = write_broken(tmp_path / "broken.yaml", base, breaker, tmp_path / "scratch")
    result = subprocess.run(
        [sys.executable, "-m", "sidus_appliance.cli", "check", "--config", str(tmp_path / "broken.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert "config OK" not in result.stdout


@pytest.mark.parametrize("breaker", CASES, ids=IDS)
def test_serve_refuses(lab: Lab, tmp_path: Path, breaker: Breaker) -> None:
    base = lab_config(tmp_path / "lab")
    config_path = tmp_path / "broken.yaml"
    expected = write_broken(config_path, base, breaker, tmp_path / "scratch")
    with pytest.raises(RuntimeError) as caught, serving(lab, config_path, tmp_path / "serve.log"):
        pass
    log = str(caught.value)
    assert "appliance exited with 2" in log, log
    assert expected in log, log
    assert "ready: serving" not in log and "Traceback" not in log, log


def test_sighup_with_a_broken_config_keeps_serving(
    lab: Lab, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    appliance = start_appliance()
    good_text = appliance.config_path.read_text()
    base = yaml.safe_load(good_text)
    for breaker in CASES:
        expected = write_broken(appliance.config_path, base, breaker, tmp_path / "scratch")
        appliance.signal(signal.SIGHUP)
        appliance.wait_log(f"reload refused, keeping the running config: {expected}")
    assert "reloaded" not in appliance.log()
    # The file is good again but not reloaded: what serves now is what ran before the SIGHUPs
    # (an applied tftp.root would serve nothing, an applied gateway would route clients away).
    appliance.config_path.write_text(good_text)
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
    env = run_udhcpc(lab.add_client(), tmp_path / "router")
    assert env["router"] == checks.SERVER
