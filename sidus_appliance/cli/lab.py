"""`lab up|boot|down|status|demo`: the isolated lab in network namespaces (lab/demo.py does the work)."""

from __future__ import annotations

from ..lab import demo, qemu
from .common import Commands, command, group

BOOT_FIRMWARE_HELP = ("bios: SeaBIOS+iPXE (arch 0); uefi: OVMF+iPXE (arch 7); uefi-native: OVMF's own PXE; "
                      "uefi-secure: the same with Secure Boot enforced; uefi-http: OVMF's UEFI HTTP boot (arch 16); "
                      "uefi-secure-http: both")


def register(commands: Commands) -> None:
    verbs = group(commands, "lab", "an isolated lab in network namespaces (demo, experiments)")
    p = command(verbs, "up", lambda args: demo.up(args.workdir), "create the lab and start the appliance in it",
                config=False)
    p.add_argument("--workdir", help="where config, state and boot tree live (default: a temp dir)")
    p = command(verbs, "boot", lambda args: demo.boot(args.firmware, args.mac),
                "boot one QEMU PXE client in the running lab", config=False)
    p.add_argument("--firmware", choices=qemu.FIRMWARES, default="bios", help=BOOT_FIRMWARE_HELP)
    p.add_argument("--mac", default="52:54:00:5a:00:01", help="client MAC (08:00:aa:bb:cc:dd is the master)")
    command(verbs, "down", lambda args: demo.down(), "stop the appliance and remove the lab", config=False)
    command(verbs, "status", lambda args: demo.status(), "show the running lab", config=False)
    p = command(verbs, "demo", lambda args: demo.demo(args.boots), "the full tour, cleaned up afterwards",
                config=False)
    p.add_argument("--all-firmware", dest="boots", action="store_const", const=demo.DEMO_BOOTS_ALL,
                   default=demo.DEMO_BOOTS, help="also boot OVMF's native PXE client")


