"""Real QEMU boots to the marker, per firmware, from our appliance and from dnsmasq serving the
same tree (same loaders, same generated menus, same kernel + marker initramfs), each inside a
throwaway namespace. The "one real boot-to-marker time, ours vs dnsmasq" of the storm bench;
with `--server dnsmasq` alone it is the phase-1 proof that firmware + loaders + kernel work here.

    sudo .venv/bin/python bench/storm_boot.py [--server ours dnsmasq] [--firmware bios uefi uefi-native]

Boots run one at a time (TCG is CPU-bound; 2 cores). dnsmasq runs with --no-ping, as in
bench/storm.py (--dnsmasq-ping to restore its 3 s ping-before-offer).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from storm import INSTANCE, MASTER_MAC, SERVER, start_server
from storm_dnsmasq import materialise_tree
from storm_netns import namespaces

from sidus_appliance import bootfiles
from sidus_appliance.boot.pxelinux import render_menu
from sidus_appliance.config import load_config
from sidus_appliance.lab import qemu, testkernel, write_lab_config


def prepare(work: Path) -> tuple[testkernel.TestKernel, Path, Path]:
    """Test instance + our config and tftp root + the same tree materialised for dnsmasq."""
    kernel = testkernel.build()
    instance_root = work / "nfsroot" / INSTANCE
    published = testkernel.publish(instance_root, kernel)
    config_path = write_lab_config(work / "ours", testkernel.instance_overrides(instance_root, INSTANCE))
    config = load_config(config_path)
    staged = bootfiles.install(config)  # the loaders exactly as production stages them
    if staged.missing:
        raise RuntimeError(str(staged))
    kname, iname = published.tftp_names(INSTANCE)
    menus = {
        "default": render_menu(config, None),
        "01-" + MASTER_MAC.replace(":", "-"): render_menu(config, MASTER_MAC),
    }
    dnsmasq_root = work / "dnsmasq-tftp"
    materialise_tree(dnsmasq_root, {kname: published.vmlinuz, iname: published.initrd}, menus, config.tftp.root)
    return kernel, config_path, dnsmasq_root


def boot_all(
    servers: list[str], firmwares: list[qemu.Firmware], mac: str, accel: qemu.Accel, timeout: float,
    keep: bool, dnsmasq_ping: bool,
) -> int:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="qemudev-"))
    kernel, config_path, dnsmasq_root = prepare(work)
    results: list[tuple[str, qemu.BootResult]] = []
    for which in servers:
        run_dir = work / which
        run_dir.mkdir(exist_ok=True)
        with namespaces("srv", prefix=f"qemudev-{which[:3]}-") as (ns,):
            ns.bridge("eth1", f"{SERVER}/24")
            proc = start_server(which, ns, run_dir, config_path, dnsmasq_root, dnsmasq_ping)
            for i, fw in enumerate(firmwares):
                tap = f"tap{i}"
                ns.tap(tap, "eth1")
                r = qemu.boot(fw, mac, tap, run_dir / "qemu", ns.name, accel, timeout, kernel.vmlinuz)
                results.append((which, r))
                print(f"[{which}] {r.summary()} [{'; '.join(r.attempts)}]", flush=True)
            ns.stop(proc)
    print(f"\nwork dir: {work}   mac {mac}   kernel {kernel.version}")
    print(f"{'server':<8} {'firmware':<12} {'ok':<4} {'seconds':>8} {'accel':<5} {'ip':<15} {'boot file':<20} phases")
    for which, r in results:
        ip = (r.marker.ip if r.marker else None) or "-"
        phases = " ".join(f"{k}={v:.1f}" for k, v in r.phases.items())
        print(
            f"{which:<8} {r.firmware:<12} {'yes' if r.ok else 'NO':<4} {r.seconds:>8.1f} {r.accel:<5} {ip:<15} "
            f"{r.serial.boot_file or '-':<20} {phases}"
        )
    by = {(w, r.firmware): r for w, r in results}
    for fw in firmwares:
        o, d = by.get(("ours", fw)), by.get(("dnsmasq", fw))
        if o and d and o.ok and d.ok:
            print(f"ratio ours/dnsmasq {fw}: {o.seconds / d.seconds:.2f} ({o.seconds:.1f}s vs {d.seconds:.1f}s)")
    ok = all(r.ok for _, r in results)
    if ok and not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", nargs="+", choices=("ours", "dnsmasq"), default=["ours", "dnsmasq"])
    ap.add_argument("--firmware", nargs="+", choices=qemu.FIRMWARES, default=list(qemu.SYSLINUX_FIRMWARES))
    ap.add_argument("--mac", default="52:54:00:00:17:01")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (serial logs, server logs)")
    ap.add_argument("--dnsmasq-ping", action="store_true")
    args = ap.parse_args(argv)
    return boot_all(args.server, args.firmware, args.mac, args.accel, args.timeout, args.keep, args.dnsmasq_ping)


if __name__ == "__main__":
    sys.exit(main())
