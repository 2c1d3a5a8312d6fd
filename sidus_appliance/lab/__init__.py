"""The lab: test and demo infrastructure, never on the serving path.

    netns.py       network namespaces, bridge, veths and taps; the appliance as a process in them;
                   real DHCP clients (udhcpc, dhclient) with private hooks
    qemu.py        QEMU PXE clients (SeaBIOS+iPXE, OVMF+iPXE, OVMF's own PXE) booting to a marker
    testkernel.py  a Debian kernel and a busybox initramfs that prints the marker
    ganesha.py     nfs-ganesha and rpcbind started inside a namespace with a private /run
    browser.py     headless Chromium driven over the DevTools protocol (the management page)
    unprivileged.py  serve as the systemd unit runs it: a non-root user, the unit's capabilities only
    demo.py        `lab up|boot|down|status|demo` (the argparse side is in cli/lab.py)
"""

from .netns import (
    BRIDGE_MAC,
    EXAMPLE_CONFIG,
    PREFIX,
    ApplianceProcess,
    ClientPort,
    Lab,
    end_process,
    lab,
    run_dhclient,
    run_udhcpc,
    sweep_stale,
    write_lab_config,
)

__all__ = [
    "BRIDGE_MAC", "EXAMPLE_CONFIG", "PREFIX", "ApplianceProcess", "ClientPort", "Lab", "end_process", "lab",
    "run_dhclient", "run_udhcpc", "sweep_stale", "write_lab_config",
]
