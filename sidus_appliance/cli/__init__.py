"""Command line: serve, check, status, leases, menu, bootfiles, exports, image, service, lab.

All argparse lives in this package (one module per command group); the domain modules never
import it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError, describe, normalize_mac, path_problems
from . import bootfiles, exports, image, lab, service, status
from .common import command, config_of


def cmd_serve(args: argparse.Namespace) -> int:
    from ..runtime import serve

    return serve(args.config)


def cmd_check(args: argparse.Namespace) -> int:
    config = config_of(args)
    print(describe(config))
    # `serve` refuses these too: a missing boot tree would otherwise only show as clients
    # that never boot (each problem names file:line and key, like a parse error).
    problems = path_problems(config)
    if args.live:
        from .. import nfs
        from ..runtime import StartupError, check_interface

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
    from ..dhcp.leases import LeaseStore
    from ..runtime import LEASES_FILE, StartupError, check_state_dir

    config = config_of(args)
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
    from ..boot.pxelinux import render_menu

    config = config_of(args)
    mac = normalize_mac(args.mac) if args.mac else None
    sys.stdout.write(render_menu(config, mac))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidus-appliance", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    command(commands, "serve", cmd_serve, "run DHCP, DNS and TFTP in one process")
    p = command(commands, "check", cmd_check, "validate a config and print the effective settings")
    p.add_argument(
        "--live", action="store_true", help="also check the interface, its address and the NFS exports on this host"
    )
    command(commands, "leases", cmd_leases, "list the lease table")
    p = command(commands, "menu", cmd_menu, "print the pxelinux menu a MAC would receive")
    p.add_argument("--mac", help="client MAC (default: the default menu)")
    for module in (status, bootfiles, exports, image, service, lab):
        module.register(commands)
    return parser


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
