"""`image build|chroot|list`."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from ..image.builder import STEPS, BuildError, build, instance_root
from ..image.chrootenv import ChrootError, shell
from ..image.instances import format_instances, list_instances
from ..image.profiles import PROFILES
from .common import Commands, command, config_of, group


def cmd_build(args: argparse.Namespace) -> int:
    config = config_of(args)
    password = None
    if args.ask_password:
        password = getpass.getpass(f"root password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("passwords differ", file=sys.stderr)
            return 2
        if not password:
            print("an empty root password is not allowed", file=sys.stderr)
            return 2
    try:
        build(config, args.name, args.suite, args.arch, args.profile, print, password,
              mirror=args.mirror, cache_dir=args.cache_dir, redo=args.redo or ())
    except BuildError as exc:
        print(f"image build: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_chroot(args: argparse.Namespace) -> int:
    config = config_of(args)
    root = instance_root(config, args.name)
    if not (root / "bin").exists() and not (root / "usr/bin").exists():
        print(f"{root} is not an instance root (build it with `image build {args.name}`)", file=sys.stderr)
        return 2
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        return shell(root, command)
    except ChrootError as exc:
        print(f"image chroot: {exc}", file=sys.stderr)
        return 1


def cmd_list(args: argparse.Namespace) -> int:
    config = config_of(args)
    print(format_instances(list_instances(config, sizes=not args.no_size)), end="")
    return 0


def register(commands: Commands) -> None:
    verbs = group(commands, "image", "build and maintain shared Debian roots (instances)")
    p = command(verbs, "build", cmd_build, "debootstrap an instance and make it NFS-bootable (resumable)")
    p.add_argument("name")
    p.add_argument("--suite", default="bookworm", help="Debian suite: trixie (13), bookworm (12); default %(default)s")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--profile", default="minimal", choices=sorted(PROFILES))
    p.add_argument("--mirror", help="Debian mirror (default: the host's apt sources)")
    p.add_argument("--cache-dir", type=Path, help="reuse/keep the debootstrap base tarball and .debs here")
    p.add_argument("--ask-password", action="store_true", help="ask for the root password (default: generate one)")
    p.add_argument("--redo", action="append", choices=STEPS, help="run this step again even if done")

    p = command(verbs, "chroot", cmd_chroot, "run a command in an instance (mounts set up and torn down)")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... (default: a login shell)")

    p = command(verbs, "list", cmd_list, "instances with their state, kernels and size")
    p.add_argument("--no-size", action="store_true", help="skip du (fast)")
