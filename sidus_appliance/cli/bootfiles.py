"""`bootfiles install|status`."""

from __future__ import annotations

import argparse

from .. import bootfiles
from .common import Commands, command, config_of, group


def cmd_install(args: argparse.Namespace) -> int:
    report = bootfiles.install(config_of(args))
    print(report)
    return 0 if not report.missing else 1


def cmd_status(args: argparse.Namespace) -> int:
    report = bootfiles.status(config_of(args))
    print(report)
    return 0 if report.ok else 1


def register(commands: Commands) -> None:
    verbs = group(commands, "bootfiles", "stage boot loaders from Debian packages into tftp.root")
    command(verbs, "install", cmd_install, "copy the manifest's files (idempotent; names missing packages)")
    command(verbs, "status", cmd_status, "compare tftp.root with the installed packages, write nothing")
