"""netascii (RFC 764 line endings: LF → CR LF, CR → CR NUL) converted while sending.

Converting a whole file up front held a converted copy per transfer: 60 netascii requests for an
8 MiB kernel took the appliance from 42 to 542 MB. Here a file is converted one source chunk at
a time, on demand, with random access for retransmitted windows:

- one scan counts CR and LF per chunk, which gives the converted size (tsize, the last block) and
  a checkpoint per chunk: where in the converted stream chunk k starts (8 bytes per chunk, the
  "starts" array; kept per file identity in a small cache, so a repeated request scans nothing);
- a read at any converted offset finds its chunk by bisection, converts that chunk and keeps it
  (one converted chunk per transfer, at most twice the chunk size).

The conversion is a byte-for-byte map with no state across bytes, which is what makes a chunk
convertible on its own. A file that changes under a transfer yields short or odd data for that
transfer, never an exception or a read past the end.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Hashable

from sidus_appliance.tftp.protocol import Reader, to_netascii

CHUNK = 64 * 1024  # source bytes per conversion: ~46 blocks of 1408, one pread
CACHE_FILES = 32  # files whose checkpoints are remembered


def scan(read: Reader, size: int, chunk: int = CHUNK) -> array:
    """Checkpoints of a file: the converted offset where each chunk starts, then the total size."""
    starts = array("q", [0])
    converted = 0
    for offset in range(0, size, chunk):
        data = read(offset, min(chunk, size - offset))
        converted += len(data) + data.count(b"\r") + data.count(b"\n")
        starts.append(converted)
        if len(data) < min(chunk, size - offset):  # the file shrank while we read it
            break
    return starts


class NetasciiReader:
    """A protocol.Reader over the netascii form of the file `read` gives, converted on demand."""

    __slots__ = ("_chunk", "_converted", "_index", "_read", "_starts", "size")

    def __init__(self, read: Reader, starts: array, chunk: int = CHUNK) -> None:
        self._read = read
        self._starts = starts
        self._chunk = chunk
        self.size = starts[-1]
        self._index = -1  # which chunk _converted holds
        self._converted = b""

    def _converted_chunk(self, index: int) -> bytes:
        if index != self._index:
            self._converted = to_netascii(self._read(index * self._chunk, self._chunk))
            self._index = index
        return self._converted

    def __call__(self, offset: int, length: int) -> bytes:
        starts, last_chunk = self._starts, len(self._starts) - 2
        pieces = []
        while length > 0 and 0 <= offset < self.size:
            index = min(bisect_right(starts, offset) - 1, last_chunk)
            piece = self._converted_chunk(index)[offset - starts[index]:offset - starts[index] + length]
            if not piece:
                break  # the file changed under us: end the data here rather than loop
            pieces.append(piece)
            offset += len(piece)
            length -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class ScanCache:
    """Checkpoints per file identity (device, inode, size, mtime, ctime): a file changed in any
    way gets a new identity, so a stale entry is never used; the oldest entries are dropped."""

    def __init__(self, capacity: int = CACHE_FILES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, array] = OrderedDict()

    def starts(self, identity: Hashable, read: Reader, size: int) -> array:
        starts = self._entries.get(identity)
        if starts is None:
            starts = scan(read, size)
            self._entries[identity] = starts
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(identity)
        return starts
