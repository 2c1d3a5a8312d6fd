"""What every sub-command shares: the --config option and one way to declare a command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..config import Config, load_config

DEFAULT_CONFIG = Path("/etc/sidus-appliance/config.yaml")

Handler = Callable[[argparse.Namespace], int]
Commands = argparse._SubParsersAction  # what add_subparsers() returns


def command(commands: Commands, name: str, func: Handler, help: str, *, config: bool = True) -> argparse.ArgumentParser:
    """A sub-command calling `func(args)`; with `config`, it takes --config/-c."""
    parser = commands.add_parser(name, help=help, description=help)
    if config:
        parser.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG,
                            help="config file (default %(default)s)")
    parser.set_defaults(func=func)
    return parser


def group(commands: Commands, name: str, help: str) -> Commands:
    """A command with verbs of its own (`exports apply`, `image build`, ...)."""
    parser = commands.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True)


def config_of(args: argparse.Namespace) -> Config:
    return load_config(args.config)
