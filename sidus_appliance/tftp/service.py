"""asyncio transport for TFTP: a listener on tftp.port, one UDP socket per transfer.

The protocol lives in ``protocol.Session`` (sans-IO) and the request policy (refusals, caps,
duplicates, replaced and reclaimed transfers) in ``requests.RequestCore`` (sans-IO); this module
only carries their decisions out and moves datagrams.

Requests are handled on the asyncio loop (core decision, tree lookup, errors, logs); warnings a
client can trigger at will are rate-limited per (reason, client address).
Each accepted transfer then gets its own socket (an ephemeral port, RFC 1350), *connected*
to the client so the kernel drops strangers ("unknown TID" for free). Lock-step TFTP is
bound by the round-trip time per block, and bench/tftp.py measured the Session pumped from
asyncio's loop (add_reader callbacks) at about half of tftpd-hpa, so the datagrams move off
the loop, onto one thread with its own epoll set (`_Pump`). Threads blocked in a syscall
release the GIL, so the loop (DHCP, DNS) stays responsive.

One thread, not one per transfer: a thread per transfer in blocking recv/send (retransmission
deadlines via SO_RCVTIMEO) was tried and removed. In the classroom storm the busy threads' GIL
contention cost 20-30 % (bench/storm.py: N=10 2.6-3.1 s with them, 2.1 s without; N=50
10.9-13.2 s, 9.8 s), and 20 clients at once finished no sooner (bench/tftp.py, wall time
0.43-0.55x of tftpd-hpa with two dedicated threads, 0.45-0.61x on the pump). A lone lock-step
client gains little on its own thread: 26.8 MiB/s vs 29.1 on the pump in one run (curl, blksize
1468); 0.70-0.81x of tftpd-hpa vs 0.63-0.75x in four later runs on a loaded box.

Ownership: the loop creates a transfer, sends its first datagrams and hands it to the pump
through a queue (plus a write to an eventfd in the pump's epoll set); from then on only the
pump thread touches its socket, session and file. The loop's later word about it (cancel:
replaced, reclaimed, never acknowledged; stop) goes through the same queue. The pump ends each
transfer once and hands it back through another queue, drained on the loop (`_collect`), where
`_finish` logs it; `close()` stops the pump, joins it and drains that queue itself, so a
transfer is finished exactly once whether or not the loop runs again.
File data is read with ``os.pread`` (see tree.py for why not mmap).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sidus_appliance.config import Config, TftpConfig
from sidus_appliance.observe.events import Transport
from sidus_appliance.ratelimit import RateLimitedLog
from sidus_appliance.tftp import protocol
from sidus_appliance.tftp.requests import RECHECK_DELAY, Action, Decision, Handle, Policy, RequestCore
from sidus_appliance.tftp.tree import BootTree, Resolved, TreeError

if TYPE_CHECKING:
    from sidus_appliance.observe.observer import Observer

IP_UDP_TFTP_HEADERS = 20 + 8 + 4
SOCKET_BUFFER = 1 << 20  # a 64-block window of 8 KiB blocks must fit in the send buffer
RECV_SIZE = 1024  # clients send ACKs (4 bytes) and ERRORs; a 64 KiB buffer per recv costs more
TICK = 0.05  # seconds between retransmission checks of the pump thread
STOP_TIMEOUT = 5.0  # seconds close() waits for the pump thread (it answers a stop within one poll)
LOG_INTERVAL = 60.0  # seconds: at most one line per (reason, client address) for what a client can repeat
SHUTTING_DOWN = "server shutting down"


READ_AHEAD = 64 * 1024  # bytes per pread of a file being sent (see read_ahead)


def read_ahead(read: protocol.Reader, size: int, chunk: int = READ_AHEAD) -> protocol.Reader:
    """Serve a transfer's block reads from chunk-sized ones: one pread per ~46 blocks of 1408.

    Lock-step blocks are read in order, and a pread per block was a third of the syscalls
    per block (recv, pread, send) on a pump that is bound to one core in a storm. A block
    before the chunk (a retransmitted window) or past it reads a new chunk from there."""
    start, buf = 0, b""

    def reader(offset: int, length: int) -> bytes:
        nonlocal start, buf
        rel = offset - start
        if rel < 0 or (rel + length > len(buf) and start + len(buf) < size):
            buf = read(offset, max(chunk, length))
            start, rel = offset, 0
        return buf[rel:rel + length]

    return reader


def interface_mtu(interface: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{interface}/mtu").read_text())
    except (OSError, ValueError):
        return 1500


def limits_for(config: Config) -> protocol.Limits:
    t: TftpConfig = config.tftp
    max_blksize = t.max_blksize or interface_mtu(config.interface) - IP_UDP_TFTP_HEADERS
    return protocol.Limits(
        max_blksize=max(protocol.MIN_BLKSIZE, min(max_blksize, protocol.MAX_BLKSIZE)),
        max_windowsize=t.max_windowsize,
        timeout=t.timeout,
        retries=t.retries,
    )


# UDP GSO (Linux >= 4.18): one sendmsg() hands the kernel a whole window of equal-sized DATA
# packets and it cuts them into datagrams: one syscall per window instead of one per block.
SOL_UDP = 17
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
GSO_MAX_BYTES = 65000  # one GSO send stays within a UDP datagram's 64 KiB
GSO_MAX_SEGMENTS = 64


def send_packets(transfer: _Transfer, packets: list[bytes]) -> None:
    """Send in order; a window goes out as GSO batches when the socket and sizes allow."""
    sock = transfer.sock
    if len(packets) > 1 and transfer.gso:
        size = len(packets[0])
        per_send = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        # Every segment but the last of a send must be exactly `size`: true of DATA packets,
        # whose only short one is the file's last block, at the end of its window.
        if per_send > 1 and all(len(packet) == size for packet in packets[:-1]):
            option = [(SOL_UDP, UDP_SEGMENT, struct.pack("@H", size))]
            try:
                for i in range(0, len(packets), per_send):
                    batch = packets[i:i + per_send]
                    if len(batch) == 1:
                        sock.send(batch[0])
                    else:
                        sock.sendmsg([b"".join(batch)], option)
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EMSGSIZE):
                    raise
                # No GSO here (old kernel, segment above the MTU): per-packet from now on. A
                # batch that failed sent nothing, the window is resent whole below.
                transfer.gso = False
                packets = packets[i:]
    for packet in packets:
        sock.send(packet)


class _Transfer:
    """One transfer. The loop owns it until `_Pump.add`, the pump until it ends it, the loop again
    from the `_finish` call on (logging only).

    `acknowledged` and `done` (requests.Handle) are the two fields the loop reads while the pump
    owns the transfer: plain bools that only the pump writes and that only go from False to
    True, so the loop's read is never torn (GIL) and a stale one is the same as reading a moment
    earlier, which the request core allows for (an ended transfer's `finished` is still to come
    anyway)."""

    __slots__ = ("acknowledged", "client", "done", "fd", "gso", "request", "resolved", "session", "sock", "started")

    def __init__(self, sock: socket.socket, client: tuple[str, int], request: bytes,
                 resolved: Resolved, session: protocol.Session, started: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # the pump's key: still known once the socket is closed
        self.client = client
        self.request = request
        self.resolved = resolved
        self.session = session
        self.started = started
        self.gso = True
        self.acknowledged = False  # written by the pump only: the client acknowledged something
        self.done = False  # written by the pump only: ended, its `_finish` is on its way to the loop


# Messages from the loop to the pump: (kind, transfer, reason).
_ADD, _CANCEL, _STOP = "add", "cancel", "stop"
Ended = tuple[_Transfer, str]  # (transfer, outcome), from the pump to the loop


class _Pump(threading.Thread):
    """One thread moving the datagrams of every transfer, over its own epoll set.

    The loop calls `add`, `cancel` and `stop` only; everything else here runs on this thread,
    which alone touches `table`, the epoll set and the transfers in it. Each transfer leaves
    `table` in `_end` only, once, onto `ended`; `notify` (once per wake-up that ended any) asks
    the loop to drain `ended`."""

    def __init__(self, ended: queue.SimpleQueue[Ended], notify: Callable[[], None]) -> None:
        super().__init__(name="tftp pump", daemon=True)
        self.ended = ended
        self.notify = notify
        self.inbox: queue.SimpleQueue[tuple[str, _Transfer | None, str]] = queue.SimpleQueue()
        self.wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll = select.epoll()
        self.epoll.register(self.wakeup, select.EPOLLIN)
        self.table: dict[int, _Transfer] = {}  # by socket descriptor; this thread only
        self.running = True  # this thread only
        self.ended_some = False  # this thread only: notify the loop at the end of this wake-up

    # ------------------------------------------------------------------ the loop's side

    def add(self, transfer: _Transfer) -> None:
        """Hand a transfer over, after its first datagrams went out: the loop lets go of it."""
        self._post(_ADD, transfer)

    def cancel(self, transfer: _Transfer, reason: str) -> None:
        """End a transfer the pump owns (nothing if it ended already: it was finished once)."""
        self._post(_CANCEL, transfer, reason)

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """End every transfer (onto `ended`) and the thread; False if it did not stop in time."""
        self._post(_STOP, None)
        self.join(timeout)
        if self.is_alive():
            return False
        os.close(self.wakeup)
        return True

    def _post(self, kind: str, transfer: _Transfer | None, reason: str = "") -> None:
        self.inbox.put((kind, transfer, reason))
        os.eventfd_write(self.wakeup, 1)

    # ------------------------------------------------------------------ this thread

    def _read_inbox(self) -> None:
        # Reset the eventfd before draining: a message posted after the drain comes with a new
        # write, so none is left waiting for a wake-up that already happened.
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.wakeup)
        while True:
            try:
                kind, transfer, reason = self.inbox.get_nowait()
            except queue.Empty:
                return
            if transfer is None:  # _STOP
                self.running = False
            elif kind == _ADD:
                self.table[transfer.fd] = transfer
                try:
                    self.epoll.register(transfer.fd, select.EPOLLIN)
                except OSError as exc:
                    self._end(transfer, f"error: {exc}")
            elif self.table.get(transfer.fd) is transfer:  # _CANCEL of a transfer still running
                self._end(transfer, reason)

    def _end(self, transfer: _Transfer, outcome: str) -> None:
        del self.table[transfer.fd]
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(transfer.fd)
        transfer.sock.close()
        transfer.resolved.close()
        transfer.done = True
        self.ended.put((transfer, outcome))
        self.ended_some = True

    def run(self) -> None:
        try:
            self._serve()
        finally:  # stopped (or failed: the traceback goes to threading.excepthook)
            self._read_inbox()  # transfers added after the stop are this thread's to end too
            for transfer in list(self.table.values()):
                self._end(transfer, SHUTTING_DOWN)
            self.epoll.close()
            self.notify()  # close() drains `ended` itself; this is for a pump that failed

    def _serve(self) -> None:
        table, poll, now, wakeup = self.table, self.epoll.poll, time.monotonic, self.wakeup
        next_check = 0.0
        while self.running:
            events = poll(TICK if table else -1)  # idle: only a message can give work
            t = now()
            for fd, _ in events:
                transfer = table.get(fd)
                if transfer is None:
                    if fd == wakeup:
                        self._read_inbox()
                    continue  # else an event of a transfer ended earlier in this batch
                try:
                    data = transfer.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:  # ICMP port unreachable: the client went away
                    self._end(transfer, "client unreachable")
                    continue
                session = transfer.session
                try:
                    self._send(transfer, session.receive(data, t))
                except OSError as exc:  # reading the file (EIO, a vanished NFS...): this transfer only
                    self._end(transfer, f"read error: {exc}")
                    continue
                if not transfer.acknowledged and session.acknowledged:
                    transfer.acknowledged = True
                if session.done:
                    self._end(transfer, session.outcome)
            if t >= next_check:
                next_check = t + TICK
                for transfer in list(table.values()):
                    session = transfer.session
                    if t >= session.deadline:
                        try:
                            self._send(transfer, session.poll(t))
                        except OSError as exc:
                            self._end(transfer, f"read error: {exc}")
                            continue
                        if session.done:
                            self._end(transfer, session.outcome)
            if self.ended_some:
                self.ended_some = False
                self.notify()

    def _send(self, transfer: _Transfer, packets: list[bytes]) -> None:
        try:
            # Blocking socket: a full send buffer waits, it does not drop.
            if len(packets) == 1:
                transfer.sock.send(packets[0])
            elif packets:
                send_packets(transfer, packets)
        except OSError:
            pass  # e.g. ECONNREFUSED; the receive side ends the transfer


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, service: TftpService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.on_request(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors from earlier replies
        pass


class TftpService:
    def __init__(self, config: Config, leases: Any, log: logging.Logger, observer: Observer | None = None) -> None:
        self.log = log
        self.observer = observer
        self.rlog = RateLimitedLog(log, interval=LOG_INTERVAL)
        self.leases = leases
        self.listener: asyncio.DatagramTransport | None = None
        self.error_sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.completed = 0
        self.stats: collections.Counter[str] = collections.Counter()  # for /metrics: requests, refusals, ends
        self.pump: _Pump | None = None
        self.ended: queue.SimpleQueue[Ended] = queue.SimpleQueue()  # from the pump; drained on the loop
        self.bind_ip, self.port = str(config.server_ip), config.tftp.port
        self.requests = RequestCore(Policy())
        self._reaper: asyncio.TimerHandle | None = None
        self._reaper_at = 0.0
        self.reload(config)

    @property
    def transfers(self) -> dict[tuple[str, int], Any]:
        """The running transfers' entries, by client address (the request core's table)."""
        return self.requests.transfers

    # ------------------------------------------------------------------ lifecycle

    def reload(self, config: Config) -> None:
        """New config: new tree, limits and caps for new transfers; running ones finish as they were.

        The listening address and port stay those bound at start (a restart moves them)."""
        if self.listener is not None and (str(config.server_ip), config.tftp.port) != (self.bind_ip, self.port):
            self.log.warning("tftp: address/port change needs a restart; still serving on %s:%d",
                             self.bind_ip, self.port)
        self.config = config
        self.tree = BootTree(config, self.leases)
        self.limits = limits_for(config)
        t = config.tftp
        self.requests.policy = Policy.from_limits(t.max_transfers, t.max_transfers_per_client, t.timeout)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.bind_ip, self.port = str(self.config.server_ip), self.config.tftp.port
        # Bound to the appliance address, so replies leave from the address clients talked to.
        self.listener, _ = await self.loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=(self.bind_ip, self.port), reuse_port=False
        )
        # Errors go out from one spare ephemeral port, as from a new transfer ID (RFC 1350).
        self.error_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.error_sock.setblocking(False)
        self.error_sock.bind((self.bind_ip, 0))
        self.pump = _Pump(self.ended, self._pump_notify)
        self.pump.start()
        self.log.info(
            "tftp: serving %s on %s:%d (blksize <= %d, windowsize <= %d)", self.tree.root, self.bind_ip,
            self.port, self.limits.max_blksize, self.limits.max_windowsize,
        )

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        self.requests.clear()  # the pump owns every transfer in it and ends them all on stop
        pump, self.pump = self.pump, None
        if pump is not None:
            if not pump.stop():
                self.log.error("tftp: the transfer thread did not stop within %.0f s", STOP_TIMEOUT)
            self._collect()  # every end, the last ones included, finished here: the loop may not run again
        if self.error_sock is not None:
            self.error_sock.close()
            self.error_sock = None

    # ------------------------------------------------------------------ requests

    def _error(self, addr: tuple[str, int], code: int, message: str) -> None:
        if self.error_sock is not None:
            with contextlib.suppress(OSError):
                self.error_sock.sendto(protocol.error_packet(code, message), addr)

    def on_request(self, data: bytes, addr: tuple[str, int], recheck: bool = False) -> None:
        if self.pump is None:  # closed (a RECHECK due after close), or not started
            return
        now = time.monotonic()
        decision = self.requests.receive(data, addr, now, recheck)
        for old in decision.cancel:  # the client moved on from that port
            self._cancel(old, "cancelled")
        action = decision.action
        self.stats["requests"] += 1
        if action is Action.REFUSE:
            self.stats[f"refused {decision.reason or 'other'}"] += 1
        if action is Action.START:
            self._start(data, addr, decision, now)
        elif action is Action.REFUSE:
            if decision.reason:
                level = logging.WARNING if decision.warn else logging.INFO
                self.rlog.log_line((decision.reason, addr[0]), level, "tftp: %s:%d: %s", addr[0], addr[1],
                                   decision.note)
            self._error(addr, decision.code, decision.message)
        elif action is Action.RECHECK:
            assert self.loop is not None
            self.loop.call_later(RECHECK_DELAY, self.on_request, data, addr, True)

    def _start(self, data: bytes, addr: tuple[str, int], decision: Decision, now: float) -> None:
        request = decision.request
        assert request is not None
        try:
            resolved = self.tree.resolve(request.filename, request.mode == "netascii", addr[0])
        except TreeError as exc:
            self._log_tree_error(addr, request.filename, exc)
            self._error(addr, exc.code, exc.message)
            return
        except OSError as exc:  # the tree maps what it expects; anything else still ends here
            self._log_tree_error(addr, request.filename, TreeError(protocol.ERR_UNDEFINED, f"server error: {exc}"))
            self._error(addr, protocol.ERR_UNDEFINED, "server error")
            return
        transfer = self._begin(addr, data, request, resolved, now)
        if transfer is None:
            return
        for reclaimed in self.requests.started(addr, transfer, data, now, decision):
            self.rlog.info(("reclaimed", reclaimed.client[0]), "tftp: %s:%d: %s: slot reclaimed for %s:%d (every "
                           "slot taken, no ACK yet)", *reclaimed.client, reclaimed.resolved.name, *addr)
            self._cancel(reclaimed, "reclaimed: never acknowledged while every slot was taken")
        self._arm_reaper()
        self._launch(transfer)

    def _log_tree_error(self, addr: tuple[str, int], filename: str, exc: TreeError) -> None:
        self.stats["refused by the tree" if exc.refused else "not found"] += 1
        if exc.refused:
            self.rlog.warning(("refused", addr[0]), "tftp: %s:%d: refused %r: %s", addr[0], addr[1], filename,
                              exc.message)
        elif exc.code == protocol.ERR_UNDEFINED:  # out of descriptors, memory...: the server's trouble
            self.rlog.warning(("server error", addr[0]), "tftp: %s:%d: %r: %s", addr[0], addr[1], filename,
                              exc.message)
        else:
            self.log.debug("tftp: %s:%d: %r: %s", addr[0], addr[1], filename, exc.message)

    def _begin(self, addr: tuple[str, int], raw: bytes, request: protocol.Request, resolved: Resolved,
               now: float) -> _Transfer | None:
        try:
            sock = transfer_socket(self.bind_ip, addr)
        except OSError as exc:  # EMFILE/ENFILE under a flood: this request fails, not the service
            resolved.close()
            self.rlog.error(("socket", addr[0]), "tftp: %s:%d: cannot open a transfer socket: %s", addr[0], addr[1],
                            exc)
            self._error(addr, protocol.ERR_UNDEFINED, "server busy, try again")
            return None
        negotiated = protocol.negotiate(request.options, self.limits, resolved.size)
        read = resolved.read
        if resolved.size > READ_AHEAD and not resolved.buffered:
            read = read_ahead(read, resolved.size)
        session = protocol.Session(read, resolved.size, negotiated, self.limits)
        self.log.debug("tftp: %s:%d: %s %s (%d bytes) options %s", addr[0], addr[1], resolved.kind,
                       resolved.name, resolved.size, negotiated.oack or "none")
        return _Transfer(sock, addr, raw, resolved, session, now)

    def _launch(self, transfer: _Transfer) -> None:
        assert self.pump is not None  # on_request does nothing once closed
        # A send error, or reading block 1 failed: the pump's timer retries or ends the transfer.
        with contextlib.suppress(OSError):
            send_packets(transfer, transfer.session.start(transfer.started))
        self.pump.add(transfer)  # the pump's from now on: the loop no longer touches it

    def _cancel(self, transfer: Handle, reason: str) -> None:
        """End a transfer handed over to the pump (the core's handles are our _Transfers): the
        pump ends it, unless it ended already, and reports it once either way."""
        if self.pump is not None:  # else close() ended it already
            self.pump.cancel(cast(_Transfer, transfer), reason)

    # ------------------------------------------------------------------ idle transfers

    def _arm_reaper(self) -> None:
        """Wake up at the request core's next first-ACK deadline (aioquic's get_timer style)."""
        when = self.requests.next_deadline()
        if when is None or self.loop is None:
            return
        if self._reaper is not None:
            if self._reaper_at <= when:
                return
            self._reaper.cancel()
        self._reaper_at = when
        self._reaper = self.loop.call_later(max(0.0, when - time.monotonic()), self._reap)

    def _reap(self) -> None:
        self._reaper = None
        for addr, transfer in self.requests.expired(time.monotonic()):
            self.rlog.info(("reclaimed", addr[0]), "tftp: %s:%d: %s: no ACK within %.1f s, slot reclaimed", *addr,
                           transfer.resolved.name, self.requests.policy.first_ack_deadline)
            self._cancel(transfer, "never acknowledged")
        self._arm_reaper()

    # ------------------------------------------------------------------ ends

    def _pump_notify(self) -> None:
        """From the pump thread: transfers ended, have the loop collect them."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: close() collected them
                loop.call_soon_threadsafe(self._collect)

    def _collect(self) -> None:
        """On the loop: finish what the pump ended. Each end is taken off the queue once, here or
        by close(), so each transfer is finished once."""
        while True:
            try:
                transfer, outcome = self.ended.get_nowait()
            except queue.Empty:
                return
            self._finish(transfer, outcome)

    def _finish(self, transfer: _Transfer, outcome: str) -> None:
        self.requests.finished(transfer.client, transfer)
        elapsed = time.monotonic() - transfer.started
        host, port = transfer.client
        session, resolved = transfer.session, transfer.resolved
        if self.observer is not None:
            acked = min(resolved.size, max(0, session.acked) * session.blksize)
            sent = resolved.size if outcome == "complete" else acked
            self.observer.transfer(host, resolved.name, resolved.kind, Transport.TFTP, resolved.size, sent, elapsed,
                                   session.resent, outcome == "complete")
        self.stats["complete" if outcome == "complete" else "stopped"] += 1
        if outcome == "complete":
            self.completed += 1
            self.log.info("tftp: %s:%d: sent %s (%d bytes, %.2f s, blksize %d, windowsize %d, %d resent)", host, port,
                          transfer.resolved.name, transfer.resolved.size, elapsed, transfer.session.blksize,
                          transfer.session.windowsize, transfer.session.resent)
        else:  # a client can end transfers at will (new RRQs, no ACKs, ICMP): rate-limited per kind of end
            kind = outcome.split(" (", 1)[0].split(":", 1)[0]
            self.rlog.info(("stopped", host, kind), "tftp: %s:%d: %s stopped after %.2f s: %s", host, port,
                           transfer.resolved.name, elapsed, outcome)


def transfer_socket(bind_ip: str, client: tuple[str, int]) -> socket.socket:
    """A transfer's own UDP socket: a new port (its TID), connected to the client."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.bind((bind_ip, 0))
        sock.connect(client)
    except BaseException:
        sock.close()
        raise
    return sock
