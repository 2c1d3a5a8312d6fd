#!/usr/bin/env python3
"""Our TftpService alone, serving a plain directory: no config file, no DHCP/DNS, no privilege drop.

For quick experiments on the TFTP transport (profilers, a client of your own) where the real
`sidus-appliance serve` of bench/tftp.py is more than needed. Run it in a namespace of your own
(never on a host interface): the default address is the loopback.

    .venv/bin/python bench/tftp_standalone.py --root DIR --port 6969
    sudo ip netns exec NS .venv/bin/python bench/tftp_standalone.py --root DIR --address 10.20.17.254 \\
        --interface eth1

It logs "ready: serving tftp (standalone)" once bound, and stops on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidus_appliance.config import Config, TftpConfig
from sidus_appliance.tftp.service import TftpService


def standalone_config(root: str, address: str, port: int, max_blksize: int, interface: str) -> Config:
    iface = IPv4Interface(f"{address}/32" if "/" not in address else address)
    return Config(
        interface=interface,
        address=iface,
        subnet=iface.network,
        gateway=IPv4Address(iface.ip),
        dns_servers=(iface.ip,),
        domain="tftp.local",
        tftp=TftpConfig(port=port, root=Path(root), max_blksize=max_blksize),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the directory to serve")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--interface", default="lo", help="its MTU caps blksize unless --max-blksize")
    parser.add_argument("--max-blksize", type=int, default=0)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(message)s")
    config = standalone_config(args.root, args.address, args.port, args.max_blksize, args.interface)
    log = logging.getLogger("sidus.tftp")

    async def run() -> None:
        service = TftpService(config, None, log)
        await service.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        log.warning("ready: serving tftp (standalone)")
        try:
            await stop.wait()
        finally:
            service.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
