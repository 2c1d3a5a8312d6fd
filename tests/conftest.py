"""Shared fixtures: the lab (namespaces, always removed) and the real appliance in it."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidus_appliance.lab import ApplianceProcess, ClientPort, Lab, write_lab_config

StartAppliance = Callable[..., ApplianceProcess]


def require(what: str, *, root: bool = True, tools: Iterable[str] = (), ok: bool = True) -> None:
    """Fail (never skip) when the machine lacks what a test exercises: `make test` installs
    everything, so a missing tool is a broken setup that must not pass as a skipped test.
    `tools` are command names or absolute paths; `ok=False` is any other missing condition."""
    missing = [t for t in tools if not (os.path.exists(t) if t.startswith("/") else shutil.which(t))]
    if root and os.geteuid() != 0:
        missing.insert(0, "root")
    if not ok:
        missing.append("a required kernel or package feature")
    if missing:
        pytest.fail(f"{what} needs {', '.join(missing)}: run `make test` as root (it installs the packages)")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A server namespace with bridge eth1 = 10.20.17.254/24; removed even when the test fails."""
    require("the lab (network namespaces, port 67)")
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def client(lab: Lab) -> ClientPort:
    """One client namespace on the lab bridge, no address (DHCP gives it one)."""
    return lab.add_client()


@contextlib.contextmanager
def serving(lab: Lab, config_path: Path, log_path: Path) -> Iterator[ApplianceProcess]:
    """`sidus-appliance serve` running in the lab; ended by PID afterwards, also when its start fails."""
    appliance = ApplianceProcess(lab, config_path, log_path)
    try:
        yield appliance.start()
    finally:
        appliance.stop()


@pytest.fixture
def start_appliance(lab: Lab, tmp_path: Path) -> Iterator[StartAppliance]:
    """Start `sidus-appliance serve` in the lab with the example config plus overrides.

    Returns the running process; every process started here is ended (by PID) afterwards.
    """
    with contextlib.ExitStack() as running:

        def start(overrides: dict[str, Any] | None = None, workdir: Path | None = None) -> ApplianceProcess:
            workdir = workdir or tmp_path / "appliance"
            workdir.mkdir(parents=True, exist_ok=True)
            config_path = write_lab_config(workdir, overrides)
            return running.enter_context(serving(lab, config_path, workdir / "serve.log"))

        yield start


@pytest.fixture
def appliance(start_appliance: StartAppliance) -> ApplianceProcess:
    """The appliance with every service on, as config.example.yaml describes it."""
    return start_appliance()
