"""`service install`: the systemd unit, its user and state_dir."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Commands, command, config_of, group


def cmd_install(args: argparse.Namespace) -> int:
    from ..systemd_unit import DEFAULT_USER, Install, InstallError

    config = config_of(args)
    install = Install(config, args.config.absolute(), args.user or config.user or DEFAULT_USER, args.root,
                      args.dry_run)
    try:
        return install.execute()
    except InstallError as exc:
        print(f"error: {exc}")
        return 2


def register(commands: Commands) -> None:
    verbs = group(commands, "service", "run serve under systemd as its own user (never root)")
    p = command(verbs, "install", cmd_install,
                "write the unit, create its user and state_dir, daemon-reload (enables and starts nothing)")
    p.add_argument("--user", help="the service user, created if missing (default: the config's user:, else sidus)")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="write under this directory instead of / (an image being prepared, a test)")
    p.add_argument("--dry-run", action="store_true", help="print the unit and the steps, change nothing")
