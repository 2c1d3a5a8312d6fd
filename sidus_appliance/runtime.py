"""One asyncio process running every enabled service: wiring, signals, reload, privilege drop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import grp
import logging
import os
import pwd
import signal
from pathlib import Path
from typing import Protocol

from pyroute2 import IPRoute

from .config import Config, ConfigError, load_config
from .dhcp.leases import LeaseStore

log = logging.getLogger("sidus")

LEASES_FILE = "leases.journal"


class StartupError(Exception):
    """The appliance cannot start; the message says why, for the administrator."""


class Service(Protocol):
    async def start(self) -> None: ...
    def close(self) -> None: ...
    def reload(self, config: Config) -> None: ...


def check_interface(config: Config) -> None:
    """Refuse to serve unless the configured interface exists and carries our address."""
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=config.interface)
        if not indexes:
            raise StartupError(
                f"interface: {config.interface} does not exist on this host (config {config.source}); refusing to start"
            )
        addresses = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=indexes[0], family=2)]
    if str(config.server_ip) not in addresses:
        have = ", ".join(addresses) or "no IPv4 address"
        raise StartupError(
            f"address: {config.address} is not configured on {config.interface} (it has {have}); refusing to start"
        )


def build_services(config: Config, leases: LeaseStore) -> dict[str, Service]:
    """The enabled services by name, in start order (DHCP last would leave clients without DNS)."""
    services: dict[str, Service] = {}
    if config.dhcp.enabled:
        from .dhcp.service import DhcpService

        services["dhcp"] = DhcpService(config, leases, logging.getLogger("sidus.dhcp"))
    if config.dns.enabled:
        from .dns.service import DnsService

        services["dns"] = DnsService(config, leases, logging.getLogger("sidus.dns"))
    if config.tftp.enabled:
        from .tftp.service import TftpService

        services["tftp"] = TftpService(config, leases, logging.getLogger("sidus.tftp"))
    if config.dhcp.enabled and config.dhcp.ipv6_ra_quench:
        from .ra import RaQuenchService

        services["ra"] = RaQuenchService(config, leases, logging.getLogger("sidus.ra"))
    return services


def drop_privileges(user: str, state_dir: Path) -> None:
    """Become `user` once ports are bound; the state dir stays writable for lease compaction."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"user: {user!r} does not exist on this host") from None
    for path in [state_dir, *state_dir.iterdir()]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.setgroups([g.gr_gid for g in grp.getgrall() if user in g.gr_mem])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("dropped privileges to %s (uid %d)", user, entry.pw_uid)


class Appliance:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.services: dict[str, Service] = {}
        self.leases: LeaseStore | None = None
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.leases = LeaseStore(self.config.state_dir / LEASES_FILE)
        if self.leases.readonly:
            self.leases.close()
            raise StartupError(
                f"state_dir: {self.config.state_dir / LEASES_FILE} is locked by another running appliance; "
                "refusing to start a second one on the same leases"
            )
        log.info("leases: %d loaded from %s", len(self.leases.all()), self.config.state_dir / LEASES_FILE)
        # The loaded lease table lives as long as the process: keep full collections from
        # walking it (bench/dhcp measured 120-270 ms stalls with 300k leases).
        gc.freeze()
        try:
            for name, service in build_services(self.config, self.leases).items():
                try:
                    await service.start()
                except OSError as exc:
                    raise StartupError(f"{name}: cannot bind: {exc}") from None
                self.services[name] = service
            if self.config.user:
                drop_privileges(self.config.user, self.config.state_dir)
            self._install_signals()
            names = ", ".join(self.services) or "nothing"
            log.info("ready: serving %s on %s (%s)", names, self.config.interface, self.config.address)
            await self.stopping.wait()
        finally:
            for service in reversed(list(self.services.values())):
                with contextlib.suppress(Exception):
                    service.close()
            self.leases.close()
            log.info("stopped")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _stop(self, sig: signal.Signals) -> None:
        log.info("%s received: shutting down", sig.name)
        self.stopping.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; keep leases; a bad config keeps the running one."""
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        changed = [
            k for k in ("interface", "address", "state_dir", "user") if getattr(new, k) != getattr(self.config, k)
        ]
        if changed:
            log.warning("reload: %s changed; restart to apply those (the rest is applied now)", ", ".join(changed))
            new = new.with_overrides(**{k: getattr(self.config, k) for k in changed})
        self.config = new
        for name, service in self.services.items():
            try:
                service.reload(new)
            except Exception:
                log.exception("reload of %s failed", name)
        log.info("reloaded %s: %d reservations", self.config_path, len(new.hosts))


def serve(config_path: Path) -> int:
    config = load_config(config_path)
    appliance = Appliance(config, config_path)
    try:
        # Before the loop starts: pyroute2's synchronous API runs an event loop of its own.
        check_interface(config)
        asyncio.run(appliance.run())
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    return 0
