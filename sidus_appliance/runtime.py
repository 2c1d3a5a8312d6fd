"""One asyncio process running every enabled service: wiring, signals, reload, privilege drop,
and readiness for systemd (`sdnotify.py`: READY once every port is bound, RELOADING on SIGHUP,
STOPPING on SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import grp
import logging
import os
import pwd
import resource
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyroute2 import IPRoute

from .config import Config, ConfigError, check_paths, load_config
from .dhcp.leases import LeaseStore
from .observe.observer import Observer
from .sdnotify import Notifier

log = logging.getLogger("sidus")

LEASES_FILE = "leases.journal"
# Every file the appliance itself creates in state_dir (the journal, its flock, the
# compaction's temporary file): the only entries the privilege drop hands to the user.
STATE_FILES = (LEASES_FILE, LEASES_FILE + ".lock", LEASES_FILE + ".tmp")


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


def build_services(config: Config, leases: LeaseStore, observer: Observer | None = None) -> dict[str, Service]:
    """The enabled services by name, in start order (DHCP last would leave clients without DNS)."""
    observer = observer if observer is not None else Observer(config, leases)
    services: dict[str, Service] = {}
    if config.dhcp.enabled:
        from .dhcp.service import DhcpService

        dhcp = DhcpService(config, leases, logging.getLogger("sidus.dhcp"), observer)
        services["dhcp"] = dhcp
        observer.stats.add("dhcp", lambda: dhcp.core.stats)
    if config.dns.enabled:
        from .dns.service import DnsService

        dns = DnsService(config, leases, logging.getLogger("sidus.dns"))
        services["dns"] = dns
        observer.stats.add("dns", dns.core.counters)
    if config.tftp.enabled:
        from .tftp.service import TftpService

        tftp = TftpService(config, leases, logging.getLogger("sidus.tftp"), observer)
        services["tftp"] = tftp
        observer.stats.add("tftp", lambda: tftp.stats)
    if config.http.enabled:
        from .http.service import HttpService

        http = HttpService(config, leases, logging.getLogger("sidus.http"), observer)
        services["http"] = http
        observer.stats.add("http", lambda: http.stats)
    if config.dhcp.enabled and config.dhcp.ipv6_ra_quench:
        from .ra import RaQuenchService

        services["ra"] = RaQuenchService(config, leases, logging.getLogger("sidus.ra"))
    if config.management.enabled:
        from .observe.web import ManagementService

        services["management"] = ManagementService(config, observer.tracker, observer.registry,
                                                   logging.getLogger("sidus.management"))
    return services


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def lookup_user(name: str) -> ServiceUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartupError(f"user: {name!r} does not exist on this host") from None
    groups = tuple(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    return ServiceUser(name, entry.pw_uid, entry.pw_gid, groups)


class StateDir:
    """state_dir as root holds it from the first check until the privilege drop.

    The service user owns state_dir between runs, so it may have planted anything there:
    a symlink or a hard link named like our journal pointing at /etc/shadow, a FIFO that
    would block the open. Root therefore works through one descriptor opened without
    following links, takes the directory back (owned by root) while it checks the entries
    and the lease store opens them, and hands over only our own files, each through an
    O_NOFOLLOW descriptor whose type and link count were checked. Nothing else in the
    directory is touched. (The directories above state_dir must be root's: a user who can
    rename state_dir itself could swap it; that is the administrator's layout.)
    """

    def __init__(self, path: Path, user: ServiceUser | None) -> None:
        self.path = path
        self.user = user
        # Staying as we are (root, or a developer's own uid) or dropping to `user`: the
        # directory may belong to root or to whoever the process will run as, nobody else.
        self.owners = {0, os.geteuid()} if user is None else {0, user.uid}
        self.groups = {0, os.getegid()} if user is None else {0, user.gid}
        self.fd: int | None = None
        self._restore: tuple[int, int] | None = None  # owner to give back if we never hand over

    def open(self, take: bool = True) -> StateDir:
        """Open and check state_dir itself; with a service user and `take`, make it root's
        until hand_over (`take=False`: a look that changes nothing, for `leases`)."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise StartupError(f"state_dir: {self.path} does not exist; create it (owned by root)") from None
        if stat.S_ISLNK(info.st_mode):
            raise StartupError(f"state_dir: {self.path} is a symbolic link; refusing to follow it")
        if not stat.S_ISDIR(info.st_mode):
            raise StartupError(f"state_dir: {self.path} is not a directory")
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = os.fstat(self.fd)  # the directory we hold, whatever the path says by now
            self._refuse_foreign_directory(info)
            if take:
                self._refuse_if_in_use()  # before taking it from under an appliance that runs
            if take and self.user is not None and (info.st_uid, info.st_gid) != (0, 0):
                # Until hand_over only root may add, rename or remove entries: what we check
                # below stays what the lease store opens.
                os.fchown(self.fd, 0, 0)
                self._restore = (info.st_uid, info.st_gid)
        except BaseException:
            self.close()
            raise
        return self

    def _refuse_foreign_directory(self, info: os.stat_result) -> None:
        if info.st_uid not in self.owners:
            allowed = " or ".join(f"uid {uid}" for uid in sorted(self.owners))
            raise StartupError(
                f"state_dir: {self.path} is owned by uid {info.st_uid}, not {allowed}; refusing to start "
                "(that user could plant links to files root would then write or hand over)"
            )
        if info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and info.st_gid not in self.groups):
            raise StartupError(
                f"state_dir: {self.path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
                "refusing to start"
            )

    def _refuse_if_in_use(self) -> None:
        """Another appliance holds the journal's flock: it runs as the user, and taking its
        directory even briefly would fail its compactions."""
        lock = STATE_FILES[1]
        try:
            if not stat.S_ISREG(os.stat(lock, dir_fd=self._fd(), follow_symlinks=False).st_mode):
                return  # a link, a FIFO, a device: never opened; check_entries names it
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._fd())
        except OSError:
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StartupError(
                    f"state_dir: {self.path / lock} is locked by another running appliance; "
                    "refusing to start a second one on the same leases"
                ) from None
        finally:
            os.close(fd)  # also drops our probe's shared lock

    def check_entries(self) -> None:
        """Refuse a state_dir whose journal files are links, hard links or not regular files."""
        for name in STATE_FILES:
            try:
                info = os.stat(name, dir_fd=self._fd(), follow_symlinks=False)
            except FileNotFoundError:
                continue  # the lease store creates it, as root, inside the directory we hold
            self._refuse_unsafe_entry(name, info)

    def _refuse_unsafe_entry(self, name: str, info: os.stat_result) -> None:
        path = self.path / name
        if stat.S_ISLNK(info.st_mode):
            raise StartupError(f"state_dir: {path} is a symbolic link; refusing to start (remove it)")
        if not stat.S_ISREG(info.st_mode):
            raise StartupError(f"state_dir: {path} is not a regular file; refusing to start (remove it)")
        if info.st_nlink != 1:
            raise StartupError(
                f"state_dir: {path} has {info.st_nlink} hard links (it may be another file under our name); "
                "refusing to start (remove it, or copy it to a fresh file)"
            )
        if info.st_uid not in self.owners:
            raise StartupError(f"state_dir: {path} is owned by uid {info.st_uid}; refusing to start")

    def hand_over(self) -> None:
        """Give the service user our files and then the directory; nothing else in it."""
        assert self.user is not None
        for name in STATE_FILES:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._fd())
            except FileNotFoundError:
                continue
            except OSError as exc:  # ELOOP: a link; only root can have put it there by now
                raise StartupError(f"state_dir: {self.path / name} cannot be opened safely ({exc.strerror})") from None
            try:
                self._refuse_unsafe_entry(name, os.fstat(fd))  # the inode we are about to chown
                os.fchown(fd, self.user.uid, self.user.gid)
            finally:
                os.close(fd)
        os.fchown(self._fd(), self.user.uid, self.user.gid)
        self._restore = None

    def close(self) -> None:
        """Release the directory; if it was never handed over, give it back its owner."""
        if self.fd is None:
            return
        if self._restore is not None:
            with contextlib.suppress(OSError):
                os.fchown(self.fd, *self._restore)
        os.close(self.fd)
        self.fd = None

    def _fd(self) -> int:
        assert self.fd is not None, "StateDir.open() first"
        return self.fd


def check_state_dir(config: Config) -> None:
    """What `serve` refuses in state_dir, for a command that opens the journal by its path
    (`leases` run as root must not follow a link the service user planted there)."""
    user = lookup_user(config.user) if config.user else None
    state = StateDir(config.state_dir, user).open(take=False)
    try:
        state.check_entries()
    finally:
        state.close()


def drop_privileges(user: ServiceUser) -> None:
    """Become `user` for good (groups first: setgid/setgroups need root)."""
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
    log.info("dropped privileges to %s (uid %d)", user.name, user.uid)


def service_user(config: Config) -> ServiceUser | None:
    """The user to drop to, or None to stay as we are; refuses what cannot work."""
    if config.user is None:
        return None
    user = lookup_user(config.user)
    if os.geteuid() == user.uid and os.geteuid() != 0:
        # The systemd unit starts us as that user with the capabilities we need: nothing to drop.
        log.info("user: already running as %s (uid %d)", user.name, user.uid)
        return None
    if os.geteuid() != 0:
        raise StartupError(f"user: {user.name} is set, but serve does not run as root (uid {os.geteuid()})")
    return user


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: each TFTP transfer and DNS TCP client holds a
    descriptor, and the usual soft 1024 would be the first thing a flood exhausts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target <= soft:
        log.info("open files: limit %d", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files: cannot raise the limit from %d to %d (%s)", soft, target, exc)
        return soft
    log.info("open files: limit raised from %d to %d", soft, target)
    return target


class Appliance:
    def __init__(self, config: Config, config_path: Path | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier({})  # {}: no NOTIFY_SOCKET, every message a no-op
        self.services: dict[str, Service] = {}
        self.leases: LeaseStore | None = None
        self.observer: Observer | None = None
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        user = service_user(self.config)
        state = StateDir(self.config.state_dir, user)
        try:
            state.open()
            await self._run(state, user)
        finally:
            state.close()

    async def _run(self, state: StateDir, user: ServiceUser | None) -> None:
        state.check_entries()  # before root opens (and creates) the journal through its path
        journal = self.config.state_dir / LEASES_FILE
        self.leases = LeaseStore(journal, fsync=self.config.dhcp.fsync)
        if self.leases.readonly:
            self.leases.close()
            raise StartupError(
                f"state_dir: {journal} is locked by another running appliance; "
                "refusing to start a second one on the same leases"
            )
        log.info("leases: %d loaded from %s", len(self.leases.all()), journal)
        # The loaded lease table lives as long as the process: keep full collections from
        # walking it (bench/dhcp measured 120-270 ms stalls with 300k leases).
        gc.freeze()
        self.observer = Observer(self.config, self.leases)
        try:
            for name, service in build_services(self.config, self.leases, self.observer).items():
                try:
                    await service.start()
                except OSError as exc:
                    raise StartupError(f"{name}: cannot bind: {exc}") from None
                self.services[name] = service
            if user is not None:
                state.hand_over()
                drop_privileges(user)
            state.close()
            self._install_signals()
            log.info("ready: %s", self._serving())
            self.notifier.ready(self._serving())  # every port is bound: systemd may start what follows us
            await self.stopping.wait()
        finally:
            for service in reversed(list(self.services.values())):
                with contextlib.suppress(Exception):
                    service.close()
            self.leases.close()
            log.info("stopped")

    def _serving(self) -> str:
        names = ", ".join(self.services) or "nothing"
        return f"serving {names} on {self.config.interface} ({self.config.address})"

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _stop(self, sig: signal.Signals) -> None:
        log.info("%s received: shutting down", sig.name)
        self.notifier.stopping(f"{sig.name} received: shutting down")
        self.stopping.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; keep leases; a bad config keeps the running one.
        systemd hears RELOADING first and READY again once the new config (or the old) serves."""
        if self.config_path is None:
            return
        self.notifier.reloading()
        refused = True
        try:
            refused = not self._reload(self.config_path)
        finally:
            refusal = "; the last reload was refused (see the log)" if refused else ""
            self.notifier.ready(self._serving() + refusal)

    def _reload(self, config_path: Path) -> bool:
        """Apply the config file; False if it is refused."""
        try:
            new = load_config(config_path)
            check_paths(new)  # a boot tree or instance root that vanished: keep serving the old one
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        changed = [
            k for k in ("interface", "address", "state_dir", "user") if getattr(new, k) != getattr(self.config, k)
        ]
        if changed:
            log.warning("reload: %s changed; restart to apply those (the rest is applied now)", ", ".join(changed))
            new = new.with_overrides(**{k: getattr(self.config, k) for k in changed})
        self.config = new
        if self.observer is not None:
            self.observer.reload(new)
        for name, service in self.services.items():
            try:
                service.reload(new)
            except Exception:
                log.exception("reload of %s failed", name)
        log.info("reloaded %s: %d reservations", config_path, len(new.hosts))
        return True


def serve(config_path: Path) -> int:
    notifier = Notifier()  # takes NOTIFY_SOCKET out of the environment (a no-op without it)
    try:
        config = load_config(config_path)
        check_paths(config)  # ConfigError: the CLI names file:line and key, exits 2
        raise_open_files_limit()
        appliance = Appliance(config, config_path, notifier)
        # Before the loop starts: pyroute2's synchronous API runs an event loop of its own.
        check_interface(config)
        asyncio.run(appliance.run())
    except StartupError as exc:
        log.error("%s", exc)
        notifier.status(f"not started: {exc}")  # what `systemctl status` shows beside the exit code
        return 2
    except ConfigError as exc:
        notifier.status(f"config error: {exc}")
        raise
    finally:
        notifier.close()
    return 0
