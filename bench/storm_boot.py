"""Real QEMU boots to the marker, per firmware, against dnsmasq (the reference) inside throwaway
namespaces. Phase 1 of the QEMU lab: proves firmware + pxelinux/syslinux.efi + test kernel work
here, and gives the dnsmasq side of "one real boot-to-marker time, ours vs dnsmasq".

    .venv/bin/python bench/storm_boot.py [--firmware bios uefi uefi-native] [--accel auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from storm_dnsmasq import dnsmasq_argv, materialise_tree, simple_menu
from storm_netns import namespaces

from sidus_appliance import qemu, testkernel

SERVER = "10.20.17.254"
POOL = ("10.20.17.10", "10.20.17.249")
MASTER_MAC = "08:00:aa:bb:cc:dd"
INSTANCE = "lab"


def boot_with_dnsmasq(firmwares: list[qemu.Firmware], accel: qemu.Accel, timeout: float, keep: bool) -> int:
    kernel = testkernel.build()
    kname, iname = kernel.tftp_names(INSTANCE)
    work = Path(tempfile.mkdtemp(prefix="qemudev-"))
    root = work / "tftp"
    materialise_tree(
        root,
        {kname: kernel.vmlinuz, iname: kernel.initrd},
        {"default": simple_menu(kname, iname, "console=ttyS0 net.ifnames=0 sidus=overlay")},
    )
    results: list[qemu.BootResult] = []
    with namespaces("srv") as (ns,):
        ns.bridge("br0", f"{SERVER}/24")
        log = open(work / "dnsmasq.log", "wb")  # noqa: SIM115 - closed below
        ns.popen(
            dnsmasq_argv(
                "br0", root, work / "leases", POOL, hosts={MASTER_MAC: ("10.20.17.253", "master")}, domain="sidus.zone"
            ),
            log,
        )
        time.sleep(0.5)
        for i, fw in enumerate(firmwares):
            tap = f"tap{i}"
            ns.tap(tap, "br0")
            mac = f"52:54:00:00:17:{i + 1:02x}"
            r = qemu.boot(fw, mac, tap, work / "qemu", ns.name, accel, timeout, kernel.vmlinuz)
            results.append(r)
            print(r.summary(), f"[{'; '.join(r.attempts)}]", flush=True)
        log.close()
    print(f"\nserver: dnsmasq   work dir: {work}")
    print(f"{'firmware':<12} {'ok':<4} {'seconds':>8} {'accel':<5} {'ip':<15} {'boot file':<20} phases (s since start)")
    for r in results:
        ip = r.marker.ip if r.marker else "-"
        phases = " ".join(f"{k}={v:.1f}" for k, v in r.phases.items())
        print(
            f"{r.firmware:<12} {'yes' if r.ok else 'NO':<4} {r.seconds:>8.1f} {r.accel:<5} {ip or '-':<15} "
            f"{r.serial.boot_file or '-':<20} {phases}"
        )
    if not keep and all(r.ok for r in results):
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--firmware", nargs="+", choices=qemu.FIRMWARES, default=list(qemu.FIRMWARES))
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    ap.add_argument("--timeout", type=float, default=150.0)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (serial logs, dnsmasq log)")
    args = ap.parse_args(argv)
    return boot_with_dnsmasq(args.firmware, args.accel, args.timeout, args.keep)


if __name__ == "__main__":
    sys.exit(main())
