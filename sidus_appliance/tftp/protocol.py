"""Sans-IO TFTP: request parsing, option negotiation and the sending side of a transfer.

Nothing here touches a socket or a clock: the caller passes datagrams and the current time in
and sends what comes back. The server only ever sends (read requests); a write request is
answered with an access violation by the caller.

RFCs: 1350 (protocol), 2347 (OACK), 2348 (blksize), 2349 (timeout, tsize), 7440 (windowsize).
Block numbers are tracked as absolute integers and put on the wire modulo 65536 (after 65535
comes 0, as tftp-hpa, curl and EDK II expect), so files of any size transfer whole.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

# Error codes (RFC 1350, 2347).
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTIONS = 8

MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464
DEFAULT_BLKSIZE = 512
MAX_FILENAME = 512  # bytes; pxelinux/EFI paths are far shorter
# RFC 2349 allows up to 255 s, but with our exponential backoff a client asking that much would
# hold a transfer slot for hours once it stops answering: longer requests are simply not
# acknowledged (the client then keeps the default), as the RFC lets a server do.
MAX_TIMEOUT_OPTION = 10

_HEAD = struct.Struct("!HH")
_pack_head = _HEAD.pack


class RequestError(Exception):
    """A request we answer with an ERROR packet (code and message for the client)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    opcode: int  # RRQ or WRQ
    filename: str
    mode: str  # "octet" or "netascii" ("mail" is refused)
    options: dict[str, str] = field(default_factory=dict)  # lower-cased names


def error_packet(code: int, message: str) -> bytes:
    return _pack_head(ERROR, code) + message.encode("ascii", "replace") + b"\0"


def parse_request(data: bytes) -> Request:
    """Parse an RRQ/WRQ; raises RequestError for anything malformed."""
    if len(data) < 4:
        raise RequestError(ERR_ILLEGAL, "short packet")
    opcode = (data[0] << 8) | data[1]
    if opcode not in (RRQ, WRQ):
        raise RequestError(ERR_ILLEGAL, "expected a read or write request")
    fields = data[2:].split(b"\0")
    # A well-formed request ends with NUL, so the split leaves a trailing empty field.
    if len(fields) < 3 or fields[-1] != b"":
        raise RequestError(ERR_ILLEGAL, "malformed request")
    fields.pop()
    raw_name, raw_mode, rest = fields[0], fields[1], fields[2:]
    if not raw_name:
        raise RequestError(ERR_ILLEGAL, "empty file name")
    if len(raw_name) > MAX_FILENAME:
        raise RequestError(ERR_ACCESS, "file name too long")
    mode = raw_mode.decode("ascii", "replace").lower()
    if mode not in ("octet", "netascii"):
        raise RequestError(ERR_ILLEGAL, f"unsupported mode {mode!r}")
    options: dict[str, str] = {}
    # Options come in name/value pairs; a dangling name is ignored (some clients pad).
    for i in range(0, len(rest) - 1, 2):
        name = rest[i].decode("ascii", "replace").lower()
        if name and name not in options:
            options[name] = rest[i + 1].decode("ascii", "replace")
    filename = raw_name.decode("utf-8", "surrogateescape")
    return Request(opcode, filename, mode, options)


@dataclass(frozen=True)
class Limits:
    """What the server allows; the client can only ask for less."""

    max_blksize: int = 1468
    max_windowsize: int = 64
    timeout: float = 1.0  # first retransmission when the client does not ask for one
    retries: int = 5


@dataclass(frozen=True)
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0
    oack: dict[str, str] = field(default_factory=dict)  # what we acknowledge, in request order


def _int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def negotiate(options: dict[str, str], limits: Limits, size: int) -> Negotiated:
    """Accept what we support within our limits; unknown or invalid options are left out."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.timeout
    oack: dict[str, str] = {}
    for name, value in options.items():
        number = _int(value)
        if number is None:
            continue
        if name == "blksize" and number >= MIN_BLKSIZE:
            blksize = min(number, limits.max_blksize, MAX_BLKSIZE)
            oack[name] = str(blksize)
        elif name == "tsize" and number >= 0 and size > 0:
            # An empty file's "tsize 0" makes curl abort ("invalid tsize"); RFC 2349 lets us omit it.
            oack[name] = str(size)
        elif name == "timeout" and 1 <= number <= MAX_TIMEOUT_OPTION:
            timeout = float(number)  # RFC 2349: echoed unchanged or not at all
            oack[name] = str(number)
        elif name == "windowsize" and number >= 1:
            windowsize = min(number, limits.max_windowsize)
            oack[name] = str(windowsize)
    return Negotiated(blksize, windowsize, timeout, oack)


def oack_packet(oack: dict[str, str]) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in oack.items())
    return b"\x00\x06" + body


def to_netascii(data: bytes) -> bytes:
    """RFC 764 line endings: CR → CR NUL, LF → CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


Reader = Callable[[int, int], bytes]  # (offset, length) → bytes


class Session:
    """The sending side of one read transfer.

    Feed it the client's datagrams with ``receive`` and call ``poll`` when ``deadline`` has
    passed; both return the datagrams to send. ``done`` is set when the transfer completed,
    failed or was aborted by the client; ``outcome`` says which.
    """

    __slots__ = (
        "acked", "blksize", "deadline", "done", "interval", "last", "oack", "outcome",
        "read", "resent", "retries", "retries_left", "sent", "size", "timeout", "windowsize",
    )

    def __init__(self, read: Reader, size: int, negotiated: Negotiated, limits: Limits) -> None:
        self.read = read
        self.size = size
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.timeout = negotiated.timeout
        self.retries = limits.retries
        self.oack = oack_packet(negotiated.oack) if negotiated.oack else None
        # The last block is the first one shorter than blksize (possibly empty).
        self.last = size // self.blksize + 1
        # With an OACK, "block 0" is the OACK itself and ACK 0 acknowledges it.
        self.acked = -1 if self.oack else 0
        self.sent = 0
        self.done = False
        self.outcome = ""
        self.retries_left = self.retries
        self.interval = self.timeout
        self.deadline = 0.0
        self.resent = 0  # windows sent again (timeouts, partial ACKs): a lossy path shows here

    @property
    def acknowledged(self) -> bool:
        """The client acknowledged something (the OACK or a block): a live client, not a flood."""
        return self.acked > (-1 if self.oack is not None else 0)

    def start(self, now: float) -> list[bytes]:
        self._arm(now)
        if self.oack is not None:
            return [self.oack]
        return self._window(1)

    def _arm(self, now: float) -> None:
        self.retries_left = self.retries
        self.interval = self.timeout
        self.deadline = now + self.interval

    def _block(self, n: int) -> bytes:
        offset = (n - 1) * self.blksize
        return _pack_head(DATA, n & 0xFFFF) + self.read(offset, self.blksize)

    def _window(self, first: int) -> list[bytes]:
        end = min(first + self.windowsize - 1, self.last)
        self.sent = end
        if first == end:  # the common lockstep case, without building a range
            return [self._block(first)]
        return [self._block(n) for n in range(first, end + 1)]

    def receive(self, data: bytes, now: float) -> list[bytes]:
        if self.done or len(data) < 4:
            return []
        opcode = (data[0] << 8) | data[1]
        if opcode == ACK:
            # Map the 16-bit number onto the absolute block it can be: one in (acked, sent].
            diff = (((data[2] << 8) | data[3]) - self.acked) & 0xFFFF
            if diff == 0 or self.acked + diff > self.sent:
                # Duplicate or stale ACK: answering it would double the stream (the sorcerer's
                # apprentice); the retransmission timer covers a real loss.
                return []
            self.acked += diff
            if self.acked == self.last:
                self.done = True
                self.outcome = "complete"
                return []
            self._arm(now)
            # A full window acknowledged moves on; a partial one (RFC 7440: the client saw a
            # gap) restarts the window after the last block it has in order.
            if self.acked < self.sent:
                self.resent += 1
            return self._window(self.acked + 1)
        if opcode == ERROR:
            # EDK II asks for tsize, reads the OACK and sends ERROR 8, then asks again: normal.
            code = (data[2] << 8) | data[3]
            message = data[4:].split(b"\0", 1)[0].decode("ascii", "replace")
            self.done = True
            self.outcome = f"aborted by client (error {code}: {message})"
            return []
        self.done = True
        self.outcome = f"illegal opcode {opcode} from client"
        return [error_packet(ERR_ILLEGAL, "illegal TFTP operation")]

    def poll(self, now: float) -> list[bytes]:
        """Retransmit the unacknowledged window once ``deadline`` has passed, with backoff."""
        if self.done or now < self.deadline:
            return []
        if self.retries_left <= 0:
            self.done = True
            self.outcome = "timed out"
            return [error_packet(ERR_UNDEFINED, "timed out")]
        self.retries_left -= 1
        self.resent += 1
        self.interval *= 2
        self.deadline = now + self.interval
        if self.acked < 0:
            return [self.oack] if self.oack is not None else []
        return self._window(self.acked + 1)
