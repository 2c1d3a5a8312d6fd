"""One byte range of a Range header, decided without I/O (RFC 9110 14.1.2, 14.2, 15.5.17).

Boot clients ask for one range at most (GRUB, iPXE and UEFI HTTP boot resume a transfer with
`bytes=N-`); a header we do not serve as a range (several ranges, another unit, bad syntax) is
ignored and the whole file is sent, which RFC 9110 allows. Huge numbers are clamped, never
converted to a huge allocation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ONE_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII)
MAX_DIGITS = 20  # past 2**64: treated as "to the end", never parsed into a giant int


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """416: the range starts past the end (the reply says `Content-Range: bytes */size`)."""


def _number(digits: str) -> int | None:
    return None if len(digits) > MAX_DIGITS else int(digits)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range to send, None for the whole file; raises Unsatisfiable for a 416."""
    if not header or len(header) > 200:
        return None
    match = _ONE_RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = _number(last)
        if suffix == 0:
            raise Unsatisfiable
        if size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix) if suffix is not None else 0, size - 1)
    start = _number(first)
    if start is None or start >= size:
        raise Unsatisfiable
    end = size - 1
    if last:
        stop = _number(last)
        if stop is not None and stop < start:
            return None  # invalid range-spec: ignore the header
        if stop is not None:
            end = min(stop, size - 1)
    return ByteRange(start, end)
