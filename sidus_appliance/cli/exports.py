"""`exports render|apply|check|stop`."""

from __future__ import annotations

import argparse

from .. import nfs
from .common import Commands, command, config_of, group


def cmd_render(args: argparse.Namespace) -> int:
    print(nfs.render(config_of(args), args.backend), end="")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    config = config_of(args)
    try:
        if args.netns:
            if config.nfs.backend != "ganesha":
                print("exports: --netns needs the ganesha backend (the kernel server is host-wide)")
                return 2
            from ..lab.ganesha import apply_in_netns  # the lab's launcher, not the serving path

            apply_in_netns(config, print, args.netns, tie_to_caller=False)
        else:
            nfs.apply(config)
    except nfs.NfsError as exc:
        print(f"exports: {exc}")
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    problems = nfs.check(config_of(args), netns=args.netns)
    for problem in problems:
        print(f"problem: {problem}")
    print("exports OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_stop(args: argparse.Namespace) -> int:
    nfs.stop_ganesha(config_of(args))
    return 0


def register(commands: Commands) -> None:
    verbs = group(commands, "exports", "NFS exports: render, apply, check (kernel server or nfs-ganesha)")
    p = command(verbs, "render", cmd_render, "print the managed exports file (or the ganesha config)")
    p.add_argument("--backend", choices=nfs.BACKENDS, help="default: nfs.backend from the config")
    for name, func, text in (
        ("apply", cmd_apply, "write the managed file and make the NFS server serve it"),
        ("check", cmd_check, "verify the NFS server runs and every built export is active"),
    ):
        p = command(verbs, name, func, text)
        p.add_argument("--netns", help="ganesha backend: run/check inside this network namespace (the lab)")
    command(verbs, "stop", cmd_stop, "stop the ganesha.nfsd that `apply` started (ganesha backend)")
