"""Command line: serve, check, leases, menu, bootfiles, exports, image, lab."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .config import ConfigError, describe, load_config, normalize_mac, path_problems

DEFAULT_CONFIG = Path("/etc/sidus-appliance/config.yaml")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG, help="config file (default %(default)s)")


def cmd_serve(args: argparse.Namespace) -> int:
    from .runtime import serve

    return serve(args.config)


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(describe(config))
    # `serve` refuses these too: a missing boot tree would otherwise only show as clients
    # that never boot (each problem names file:line and key, like a parse error).
    problems = path_problems(config)
    if args.live:
        from . import nfs
        from .runtime import StartupError, check_interface

        try:
            check_interface(config)
        except StartupError as exc:
            problems.append(str(exc))
        problems += [f"nfs: {problem}" for problem in nfs.check(config)]
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("config OK" if not problems else f"{len(problems)} problem(s)")
    return 2 if problems else 0


def cmd_leases(args: argparse.Namespace) -> int:
    from .dhcp.leases import LeaseStore
    from .runtime import LEASES_FILE, StartupError, check_state_dir

    config = load_config(args.config)
    path = config.state_dir / LEASES_FILE
    if not path.exists():
        print(f"no leases yet ({path} does not exist)")
        return 0
    try:
        check_state_dir(config)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = LeaseStore(path)
    try:
        for lease in sorted(store.all(), key=lambda le: le.address):
            expires = "infinite" if lease.expires is None else f"{lease.expires:.0f}"
            print(f"{lease.address!s:<15} {lease.mac} {lease.state:<8} {lease.hostname:<20} expires {expires}")
    finally:
        store.close()
    return 0


def cmd_menu(args: argparse.Namespace) -> int:
    from .boot.pxelinux import render_menu

    config = load_config(args.config)
    mac = normalize_mac(args.mac) if args.mac else None
    sys.stdout.write(render_menu(config, mac))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidus-appliance", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run DHCP, DNS and TFTP in one process")
    _config_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a config and print the effective settings")
    _config_arg(p)
    p.add_argument(
        "--live", action="store_true", help="also check the interface, its address and the NFS exports on this host"
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("leases", help="list the lease table")
    _config_arg(p)
    p.set_defaults(func=cmd_leases)

    p = sub.add_parser("menu", help="print the pxelinux menu a MAC would receive")
    _config_arg(p)
    p.add_argument("--mac", help="client MAC (default: the default menu)")
    p.set_defaults(func=cmd_menu)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-commands contributed by the bootfiles, NFS, image and lab modules."""
    registrars = []
    for module_name in ("bootfiles", "nfs", "image.cli", "labcli"):
        full_name = f"{__package__}.{module_name}"
        if importlib.util.find_spec(full_name) is None:
            continue  # not written yet; a broken module still fails loudly below
        module = importlib.import_module(full_name)
        register = getattr(module, "add_subcommands", None)
        if register is not None:
            registrars.append(register)
    return registrars


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its DEBUG is netlink dumps
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
