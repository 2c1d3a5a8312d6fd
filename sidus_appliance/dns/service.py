"""asyncio transport for the DNS core: UDP and TCP listeners, forwarding, zone rebuilds.

The core (`server.py`) decides; this module only moves bytes, keeps time, and rebuilds the
zone when a bound lease changes: at once after a quiet spell, at most once per REBUILD_DELAY
during a boot storm, so names appear well within a second of the ACK. Each zone whose records
changed is announced to the secondaries (`notify.Notifier` decides what to send and when; a
socket bound to the appliance's address sends it), so they transfer it, incrementally, at once.

Whatever a client sends, the log gets at most one line per (problem, source) per minute
(`RateLimitedLog`) and never a traceback; TCP connections are budgeted by `tcp.TcpPool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
import struct
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from ..config import Config
from ..dhcp.leases import Lease, LeaseState, LeaseStore
from ..ratelimit import RateLimitedLog
from .notify import Notifier, Outcome, notify_source
from .server import MAX_TCP_MESSAGE, DnsServer, Forward, Policy
from .tcp import TcpConn, TcpPool
from .zone import ZoneBuilder

REBUILD_DELAY = 0.1  # least spacing between zone rebuilds (a boot storm coalesces into few)
WARM_DELAY = 1.0  # precompute answers once the zone has been stable this long (not mid-storm)
MAX_FORWARDS = 1024  # in-flight upstream queries; beyond that clients get SERVFAIL at once
MAX_FORWARDS_PER_CLIENT = 128  # so one client flooding names towards a dead upstream cannot take them all
TCP_LIFETIME_WAITS = 3  # a TCP connection lives at most this many idle timeouts (30 s by default)
TCP_WRITE_HIGH = 64 * 1024  # bytes queued for a peer before we stop reading from it
ACCEPT_PAUSE = 0.5  # seconds without accept() after EMFILE/ENFILE: the backlog waits, the log stays quiet
ACCEPT_BATCH = 32
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def listen_addresses(config: Config) -> list[str]:
    listen = config.dns.listen or (config.server_ip, "127.0.0.1")
    return list(dict.fromkeys(str(a) for a in listen))


Upstream = tuple[str, int]  # (address, port), as the config parsed it


def upstreams_of(config: Config) -> tuple[list[Upstream], list[Upstream]]:
    """Usable upstreams, and the configured ones dropped because they are ourselves (a loop)."""
    ours = {(a, config.dns.port) for a in listen_addresses(config)}
    usable, dropped = [], []
    for upstream in config.dns.upstreams:
        host, port = upstream
        if upstream in ours or (port == config.dns.port and host.startswith("127.") and "0.0.0.0" in ours):
            dropped.append(upstream)
        else:
            usable.append(upstream)
    return usable, dropped


def policy_of(config: Config) -> Policy:
    dns = config.dns
    return Policy(bool(upstreams_of(config)[0]), dns.recursion_allowed, dns.transfer_allowed)


def tcp_limits(config: Config) -> tuple[int, int, float, float]:
    """TcpPool's (total, per source, wait timeout, lifetime) from the config."""
    dns = config.dns
    return (dns.tcp_max_connections, dns.tcp_max_per_client, dns.tcp_idle_timeout,
            dns.tcp_idle_timeout * TCP_LIFETIME_WAITS)


def next_serial(previous: int, now: float) -> int:
    """Strictly increasing; the clock keeps it increasing across restarts too."""
    return max(previous + 1, int(now)) & 0xFFFFFFFF


class _UdpListener:
    """A UDP socket read straight from the loop's selector, in batches.

    asyncio's datagram transport costs a callback, a few checks and a buffer test per
    datagram; with replies precomputed, that overhead was most of our time. Here one
    readiness event drains up to BATCH datagrams with plain recvfrom/sendto. A reply that
    finds the send buffer full is dropped and counted (UDP: the client retries), as the
    kernel itself would drop it.
    """

    BATCH = 64

    def __init__(self, service: DnsService, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        handle = self.service.core.handle_udp
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP unreachable reported on a later recv
                self.service.core.stats["udp_errors"] += 1
                continue
            try:
                out = handle(data, addr[0])
            except Exception as exc:  # the core should never raise; if it does, count it and keep serving
                self.service.crashed(data, addr[0], exc)
                continue
            if out is None:
                continue
            if type(out) is bytes:
                try:
                    sendto(out, addr)
                except OSError:
                    self.service.core.stats["send_errors"] += 1
            elif isinstance(out, Forward):
                self.service.forward(out, self._replier(addr))

    def _replier(self, addr: tuple[str, int]) -> Callable[[bytes], None]:
        def reply(data: bytes) -> None:
            try:
                self.sock.sendto(data, addr)
            except OSError:
                self.service.core.stats["send_errors"] += 1

        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _UpstreamUdp(asyncio.DatagramProtocol):
    """One forwarded query's socket (its own random port: harder to spoof than a shared one)."""

    def __init__(self, service: DnsService, action: Forward, upstream_id: bytes) -> None:
        self.service, self.action, self.upstream_id = service, action, upstream_id
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.service.core.relay(self.action.query, self.action.question, self.upstream_id, data)
        if reply is not None and not self.done.done():
            self.done.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class DnsService:
    name = "dns"

    def __init__(self, config: Config, leases: LeaseStore, log: logging.Logger) -> None:
        self.config = config
        self.leases = leases
        self.log = log
        self.warnings = RateLimitedLog(log)  # one line per (problem, source) per minute
        self.zones = ZoneBuilder()  # this service's own: what successive zones share
        self.zone = self.zones.build(config, self._bound(), next_serial(0, time.time()))
        self.core = DnsServer(self.zone, policy_of(config), warm=False,  # warmed in steps by start()
                              report=self.client_problem)
        self._listeners: list[_UdpListener] = []
        self._tcp_listeners: list[_TcpListener] = []
        self._tcp: dict[TcpConn, _TcpConnection] = {}
        self.tcp_pool = TcpPool(*tcp_limits(config))
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwarding: Counter[str] = Counter()  # in-flight forwards per client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rebuild_handle: asyncio.TimerHandle | None = None
        self._expiry_handle: asyncio.TimerHandle | None = None
        self._warm_handle: asyncio.TimerHandle | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._notify_handle: asyncio.TimerHandle | None = None
        self.notifier = Notifier(config.dns.notify)
        self._notify_socket: _NotifySocket | None = None
        self._last_rebuild = float("-inf")
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def addresses(self) -> list[str]:
        return listen_addresses(self.config)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for problem in self.zone.problems:
            self.log.warning("dns: %s", problem)
        for host, port in upstreams_of(self.config)[1]:
            self.log.warning("dns: upstream %s:%d is this server itself (a forwarding loop); ignored", host, port)
        port = self.config.dns.port
        try:
            for address in self.addresses():
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.setblocking(False)
                    sock.bind((address, port))
                except OSError as exc:
                    sock.close()
                    raise OSError(exc.errno, f"UDP {address}:{port}: {exc.strerror}") from None
                self._listeners.append(_UdpListener(self, sock))
                self._tcp_listeners.append(_TcpListener(self, address, port))
        except BaseException:
            self.close()  # the runtime only closes services that started: release what we bound
            raise
        self.leases.subscribe(self._lease_changed)
        self._arm_expiry(self._bound())
        self._announce(self.zone.apexes)  # as BIND does on loading a zone: our serial is new
        self._step_warm(self.core.warming())
        self._sweep_tcp()
        self.log.info("dns: serving %s and %s on %s port %d (serial %d, %d records)",
                      self.config.domain, self.config.reverse_zone, ", ".join(self.addresses()), port,
                      self.zone.serial, len(self.zone.content))

    def close(self) -> None:
        if not self._closed and self._listeners:
            self.log.info("dns: counters %s", " ".join(f"{k}={v}" for k, v in sorted(self.core.counters().items())))
        self._closed = True
        for handle in (self._rebuild_handle, self._expiry_handle, self._warm_handle, self._sweep_handle,
                       self._notify_handle):
            if handle is not None:
                handle.cancel()
        if self._notify_socket is not None:
            self._notify_socket.close()
            self._notify_socket = None
        for listener in [*self._listeners, *self._tcp_listeners]:
            listener.close()
        for connection in list(self._tcp.values()):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        self._listeners, self._tcp_listeners = [], []

    def reload(self, config: Config) -> None:
        """SIGHUP: new policy and zone now; listen/port changes need a restart."""
        if (config.dns.port, config.dns.listen, config.server_ip) != (
                self.config.dns.port, self.config.dns.listen, self.config.server_ip):
            self.log.warning("dns: listen addresses/port changed; restart to apply them")
        self.config = config
        self.core.set_policy(policy_of(config))
        self.tcp_pool.configure(*tcp_limits(config))
        self.notifier.configure(config.dns.notify)
        self._rebuild(reason="reload", force=True)

    # ------------------------------------------------------------------ zone updates

    def _bound(self) -> list[Lease]:
        """Bound, unexpired leases. (Expired ones stay in the store until DHCP reclaims the
        address; their names should not outlive the lease, so `_arm_expiry` wakes us.)"""
        now = time.time()
        return [lease for lease in self.leases.all() if lease.state == LeaseState.BOUND and not lease.expired(now)]

    def _arm_expiry(self, leases: list[Lease]) -> None:
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        ends = [lease.expires for lease in leases if lease.expires is not None]
        if ends and self._loop is not None and not self._closed:
            delay = min(max(0.0, min(ends) - time.time()) + 0.05, 3600.0)  # long sleeps re-arm hourly
            self._expiry_handle = self._loop.call_later(delay, self._rebuild, "expiry")

    def _lease_changed(self, old: Lease | None, new: Lease | None) -> None:
        # Called on our loop: the lease table changes only there (the DHCP core, its reload and
        # the journal's rollback); the fsync worker thread never touches the table.
        if self._closed or self._loop is None:
            return
        if (old is not None and old.state == LeaseState.BOUND) or (new is not None and new.state == LeaseState.BOUND):
            self._schedule_rebuild()

    def _schedule_rebuild(self) -> None:
        """Rebuild at once after a quiet spell, else at most once per REBUILD_DELAY (a storm)."""
        if self._rebuild_handle is None and self._loop is not None and not self._closed:
            delay = max(0.0, self._last_rebuild + REBUILD_DELAY - self._loop.time())
            self._rebuild_handle = self._loop.call_later(delay, self._rebuild)

    def _rebuild(self, reason: str = "leases", force: bool = False) -> None:
        self._rebuild_handle = None
        if self._closed:
            return
        if self._loop is not None:
            self._last_rebuild = self._loop.time()
        bound = self._bound()
        self._arm_expiry(bound)
        content, problems = self.zones.content(self.config, bound)
        apexes = (self.config.domain, self.config.reverse_zone)
        if content == self.zone.content and apexes == self.zone.apexes and not force:
            return
        for problem in set(problems) - set(self.zone.problems):
            self.log.warning("dns: %s", problem)
        self.zone = self.zones.zone(self.config, next_serial(self.zone.serial, time.time()), content, problems)
        # The memo is emptied at once (no stale answer survives the swap) and refills from
        # queries; the whole zone is precomputed again once changes pause (WARM_DELAY), in
        # small steps between datagrams, so a boot storm never pays for repeated warm-ups.
        changed = self.core.set_zone(self.zone, warm=False)
        self._announce(set(self.zone.apexes) if force else changed)
        if self._warm_handle is not None:
            self._warm_handle.cancel()
        if self._loop is not None:
            self._warm_handle = self._loop.call_later(WARM_DELAY, lambda: self._step_warm(self.core.warming()))
        self.log.info("dns: zone rebuilt (%s): serial %d, %d records", reason, self.zone.serial, len(content))

    def _step_warm(self, steps: Iterator[None]) -> None:
        if self._closed or self._loop is None:
            return
        if next(steps, StopIteration) is not StopIteration:
            self._loop.call_soon(self._step_warm, steps)

    # ------------------------------------------------------------------ NOTIFY

    def _announce(self, apexes: Iterable[str]) -> None:
        """Tell the secondaries these zones have a new serial (the notifier spaces and retries)."""
        if self._closed or self._loop is None or not self.notifier.targets:
            return
        self.notifier.changed([self.zone.soa(apex) for apex in self.zone.apexes if apex in apexes], self._loop.time())
        self._pump_notify()

    def _pump_notify(self) -> None:
        """Send what the notifier says is due, report what ended, and wake up when more is due."""
        self._notify_handle = None
        if self._closed or self._loop is None:
            return
        datagrams, ended = self.notifier.poll(self._loop.time())
        sock = self._notify_sock() if datagrams else None
        for datagram in datagrams:
            self.core.stats["notify_sent"] += 1
            self.log.debug("dns: NOTIFY %s serial %d to %s:%d (try %d)", datagram.apex, datagram.serial,
                           *datagram.target, datagram.attempt)
            if sock is None:
                continue  # counted as sent and lost: the notifier retries, then reports it unanswered
            try:
                sock.sendto(datagram.data, datagram.target)
            except OSError as exc:
                self.core.stats["send_errors"] += 1
                self.warnings.warning(("notify send", datagram.target), "dns: NOTIFY to %s:%d not sent: %s",
                                      *datagram.target, exc.strerror)
        for outcome in ended:
            self.notify_outcome(outcome)
        self._arm_notify()

    def _arm_notify(self) -> None:
        if self._notify_handle is not None:
            self._notify_handle.cancel()
            self._notify_handle = None
        deadline = self.notifier.deadline()
        if deadline is not None and self._loop is not None and not self._closed:
            self._notify_handle = self._loop.call_at(deadline, self._pump_notify)

    def _notify_sock(self) -> socket.socket | None:
        """The NOTIFY socket, (re)bound when first needed or when the source address changed."""
        source = notify_source([str(a) for a in self.config.dns.listen], str(self.config.server_ip))
        current = self._notify_socket
        if current is not None and current.source == source:
            return current.sock
        if current is not None:
            current.close()
            self._notify_socket = None
        try:
            self._notify_socket = _NotifySocket(self, source)
        except OSError as exc:
            self.warnings.warning(("notify socket", source), "dns: cannot send NOTIFY from %s: %s; secondaries "
                                  "will see changes at their next SOA refresh", source, exc.strerror)
            return None
        return self._notify_socket.sock

    def notify_answer(self, data: bytes, source: tuple[str, int]) -> None:
        outcome = self.notifier.received(data, source)
        if outcome is None:
            self.core.stats["notify_ignored"] += 1
            return
        self.notify_outcome(outcome)
        self._arm_notify()

    def notify_outcome(self, outcome: Outcome) -> None:
        target = f"{outcome.target[0]}:{outcome.target[1]}"
        if outcome.result == "answered":
            self.core.stats["notify_answered"] += 1
            self.log.debug("dns: NOTIFY %s serial %d answered by %s", outcome.apex, outcome.serial, target)
        elif outcome.result == "error":
            self.core.stats["notify_refused"] += 1
            self.warnings.warning(("notify error", outcome.target), "dns: secondary %s answered NOTIFY for %s "
                                  "with %s: does it take NOTIFY from this server?", target, outcome.apex,
                                  outcome.detail)
        else:
            self.core.stats["notify_unanswered"] += 1
            self.warnings.warning(("notify unanswered", outcome.target), "dns: secondary %s did not answer NOTIFY "
                                  "for %s (serial %d, %s); it will see the change at its next SOA refresh",
                                  target, outcome.apex, outcome.serial, outcome.detail)

    # ------------------------------------------------------------------ forwarding

    def forward(self, action: Forward, reply: Callable[[bytes], None]) -> asyncio.Task[None] | None:
        """Relay upstream in a task; `reply` gets the answer or a SERVFAIL (None: sent already)."""
        if len(self._tasks) >= MAX_FORWARDS or self._forwarding[action.client] >= MAX_FORWARDS_PER_CLIENT:
            self.core.stats["forwards_over_budget"] += 1
            self.warnings.warning(("forward budget", action.client), "dns: %s has %d queries forwarded and "
                                  "unanswered (%d in all): SERVFAIL", action.client,
                                  self._forwarding[action.client], len(self._tasks))
            self._send_servfail(action, reply)
            return None
        task = asyncio.ensure_future(self._forward(action, reply))
        self._tasks.add(task)
        self._forwarding[action.client] += 1
        task.add_done_callback(lambda done: self._forward_done(done, action.client))
        return task

    def _forward_done(self, task: asyncio.Task[None], client: str) -> None:
        self._tasks.discard(task)
        self._forwarding[client] -= 1
        if not self._forwarding[client]:
            del self._forwarding[client]
        if not task.cancelled() and task.exception() is not None:  # retrieved: never "never retrieved"
            self.crashed(b"", "forwarding", task.exception())  # type: ignore[arg-type]

    async def _forward(self, action: Forward, reply: Callable[[bytes], None]) -> None:
        try:
            await self._forward_to_upstreams(action, reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug, not the client's: this query gets SERVFAIL, the log one line
            self.crashed(action.query, "forwarding", exc)
            self._send_servfail(action, reply)

    async def _forward_to_upstreams(self, action: Forward, reply: Callable[[bytes], None]) -> None:
        upstreams = upstreams_of(self.config)[0]
        timeout = self.config.dns.forward_timeout / max(1, len(upstreams))
        for host, port in upstreams:  # in order; each gets an equal share of the timeout
            upstream_id = secrets.token_bytes(2)
            query = upstream_id + action.query[2:]
            try:
                # UDP first, whatever the client used; TCP only when a TCP client would
                # otherwise get a truncated answer (upstreams need not listen on TCP).
                answer = await self._ask_udp(host, port, query, action, upstream_id, timeout)
                if action.tcp and answer is not None and answer[2] & 0x02:
                    answer = await asyncio.wait_for(self._ask_tcp(host, port, query, action, upstream_id), timeout)
            except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError) as exc:
                self.core.stats["upstream_failures"] += 1  # clients can trigger it: one line a minute
                self.warnings.warning(("upstream", host, port), "dns: upstream %s:%d failed: %r", host, port, exc)
                continue
            if answer is not None:
                reply(answer)
                return
        self._send_servfail(action, reply)

    def _send_servfail(self, action: Forward, reply: Callable[[bytes], None]) -> None:
        answer = self.core.servfail(action.query)
        if answer is not None:
            reply(answer)

    async def _ask_udp(self, host: str, port: int, query: bytes, action: Forward, upstream_id: bytes,
                       timeout: float) -> bytes | None:
        assert self._loop is not None
        transport, protocol = await self._loop.create_datagram_endpoint(
            lambda: _UpstreamUdp(self, action, upstream_id), remote_addr=(host, port))
        try:
            transport.sendto(query)
            return await asyncio.wait_for(protocol.done, timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, host: str, port: int, query: bytes, action: Forward, upstream_id: bytes) -> bytes | None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            return self.core.relay(action.query, action.question, upstream_id, await reader.readexactly(size))
        finally:
            writer.close()

    # ------------------------------------------------------------------ TCP

    def tcp_accepted(self, sock: socket.socket, source: str) -> None:
        """Admit or refuse a new connection (making room by closing another if the pool says so)."""
        now = time.monotonic()
        admission = self.tcp_pool.admit(source, now)
        if admission.evicted is not None:
            self.core.stats["tcp_evicted"] += 1
            self.warnings.info(("tcp evicted", admission.evicted.source),
                               "dns: TCP pool full: closed an idle connection of %s (it holds the most) for %s",
                               admission.evicted.source, source)
            victim = self._tcp.get(admission.evicted)
            if victim is not None:
                victim.abort()
        if admission.conn is None:
            self.core.stats["tcp_refused"] += 1
            self.warnings.warning(("tcp refused", source), "dns: TCP connection from %s refused: %s",
                                  source, admission.reason)
            sock.close()
            return
        connection = _TcpConnection(self, admission.conn)
        self._tcp[admission.conn] = connection
        connection.start(sock)

    def tcp_closed(self, conn: TcpConn) -> None:
        self.tcp_pool.release(conn)
        self._tcp.pop(conn, None)

    def _sweep_tcp(self) -> None:
        """Close connections whose wait or life ran out; runs a few times per timeout."""
        self._sweep_handle = None
        if self._closed or self._loop is None:
            return
        for conn in self.tcp_pool.expired(time.monotonic()):
            self.core.stats["tcp_timeouts"] += 1
            self.warnings.info(("tcp timeout", conn.source), "dns: TCP connection from %s closed: idle, too slow "
                               "or open too long (tcp_idle_timeout %gs)", conn.source, self.tcp_pool.timeout)
            connection = self._tcp.get(conn)
            if connection is not None:
                connection.abort()
            self.tcp_pool.release(conn)
        self._sweep_handle = self._loop.call_later(min(1.0, self.tcp_pool.timeout / 4), self._sweep_tcp)

    # ------------------------------------------------------------------ problems

    def client_problem(self, what: str, client: str, detail: str) -> None:
        """The core's report: one log line per (problem, source) per minute at most."""
        if what == "internal error":
            self.warnings.error((what, client), "dns: internal error answering %s: %s", client, detail)
        elif what == "refused":
            self.warnings.info((what, client), "dns: refused %s: %s", client, detail)
        else:
            self.warnings.warning((what, client), "dns: %s from %s: %s", what, client, detail)

    def crashed(self, data: bytes, client: str, exc: BaseException) -> None:
        """A bug of ours on some input: counted, one rate-limited line, never a traceback in the log."""
        self.core.stats["internal_errors"] += 1
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        place = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
        self.warnings.error(("internal error", client), "dns: internal error (%s%s) on a %d-byte message from %s: %s",
                            type(exc).__name__, place, len(data), client, data[:64].hex())


class _NotifySocket:
    """The UDP socket NOTIFYs leave from (an ephemeral port on the source address) and their
    answers come back to, read straight from the selector like the listeners."""

    def __init__(self, service: DnsService, source: str) -> None:
        self.service, self.source = service, source
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind((source, 0))
        except OSError:
            self.sock.close()
            raise
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(_UdpListener.BATCH):
            try:
                data, addr = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket: the notifier's retries cover it
                continue
            try:
                self.service.notify_answer(data, addr)
            except Exception as exc:  # the notifier should never raise
                self.service.crashed(data, addr[0], exc)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _TcpListener:
    """accept() straight from the selector: asyncio's own server logs a traceback for each
    EMFILE; here running out of descriptors pauses accepting a moment and logs one line."""

    def __init__(self, service: DnsService, address: str, port: int) -> None:
        self.service = service
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setblocking(False)
            self.sock.bind((address, port))
            self.sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            self.sock.close()
            raise OSError(exc.errno, f"TCP {address}:{port}: {exc.strerror}") from None
        self._pause: asyncio.TimerHandle | None = None
        self.loop.add_reader(self.sock.fileno(), self._acceptable)

    def _acceptable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self.service.core.stats["tcp_accept_errors"] += 1
                    self.service.warnings.warning(("tcp accept", exc.errno), "dns: TCP accept failed (%s); "
                                                  "not accepting for %gs", exc.strerror, ACCEPT_PAUSE)
                    self.loop.remove_reader(self.sock.fileno())
                    self._pause = self.loop.call_later(ACCEPT_PAUSE, self._resume)
                    return
                continue  # ECONNABORTED and the like: that peer gave up; the next one may not have
            self.service.tcp_accepted(sock, addr[0])

    def _resume(self) -> None:
        self._pause = None
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._acceptable)

    def close(self) -> None:
        if self._pause is not None:
            self._pause.cancel()
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _TcpConnection(asyncio.Protocol):
    """One TCP client: length-prefixed messages in, answers out, in order (a forwarded query
    holds the next ones back). Timing is the pool's: this class only reports its waits."""

    def __init__(self, service: DnsService, conn: TcpConn) -> None:
        self.service, self.conn = service, conn
        self.pool = service.tcp_pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.forwarding = False
        self.write_paused = False
        self.closed = False

    def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(loop.connect_accepted_socket(lambda: self, sock))
        task.add_done_callback(lambda t: self._started(t, sock))

    def _started(self, task: asyncio.Future[object], sock: socket.socket) -> None:
        if task.cancelled() or task.exception() is not None:  # e.g. the service closed meanwhile
            sock.close()
            self._gone()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:  # evicted or timed out before the transport existed
            transport.abort()
            return
        transport.set_write_buffer_limits(high=TCP_WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        if not self.buffer:  # the first byte of a message: its time to arrive whole starts now
            self.pool.waiting(self.conn, time.monotonic())
        self.buffer += data
        self._process()

    def _process(self) -> None:
        while not (self.closed or self.forwarding or self.write_paused) and len(self.buffer) >= 2:
            size = self.buffer[0] << 8 | self.buffer[1]
            if len(self.buffer) < 2 + size:
                return
            message = bytes(self.buffer[2:2 + size])
            del self.buffer[:2 + size]
            self._answer(message)

    def _answer(self, message: bytes) -> None:
        assert self.transport is not None
        client = self.conn.source
        try:
            out = self.service.core.handle_tcp(message, client)
        except Exception as exc:  # the core should never raise
            self.service.crashed(message, client, exc)
            out = None
        if isinstance(out, Forward):
            self.forwarding = self.conn.busy = True
            self.transport.pause_reading()
            task = self.service.forward(out, self._forwarded)
            if task is not None:
                task.add_done_callback(self._forward_finished)
            return
        if not out:
            self.transport.close()  # dropped: a TCP peer sending garbage loses its connection
            self.closed = True
            return
        self._send(out)

    def _send(self, messages: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(struct.pack("!H", len(m)) + m for m in messages if len(m) <= MAX_TCP_MESSAGE))
        self.pool.waiting(self.conn, time.monotonic())  # answered: idle from now (or the next message's start)

    def _forwarded(self, answer: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self.forwarding = False
        self._send([answer])
        self.transport.resume_reading()
        asyncio.get_running_loop().call_soon(self._process)  # messages that arrived meanwhile

    def _forward_finished(self, task: asyncio.Task[None]) -> None:
        if self.forwarding and not self.closed:  # no answer came (cancelled): do not hang the client
            self.abort()

    def pause_writing(self) -> None:  # the peer does not read: no more answers until it does
        self.write_paused = True
        self.pool.waiting(self.conn, time.monotonic())
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.pool.waiting(self.conn, time.monotonic())
        if self.transport is not None and not self.closed and not self.forwarding:
            self.transport.resume_reading()
            asyncio.get_running_loop().call_soon(self._process)

    def abort(self) -> None:
        """Close at once (timeout, eviction, shutdown): the descriptor is free now."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._gone()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._gone()

    def _gone(self) -> None:
        self.service.tcp_closed(self.conn)
