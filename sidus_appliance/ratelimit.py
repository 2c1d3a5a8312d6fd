"""Rate-limited warnings: a flood of bad packets must not fill the disk with log lines.

`RateLimitedLog.log(key, level, msg, *args)` writes at most one line per `key` per `interval`
seconds (a key is typically `(what, source address)`); the lines it held back are counted and
reported with the next line that gets through ("... 312 similar suppressed"). The table of keys
is bounded: past `max_keys` the oldest keys are forgotten, so random source addresses cannot
grow it without end (a forgotten key only means one more line may be written).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class RateLimitedLog:
    def __init__(
        self,
        log: logging.Logger,
        interval: float = 60.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[Hashable, list[float | int]] = OrderedDict()  # key → [next allowed, suppressed]
        self.suppressed = 0  # lines held back in all, for tests and metrics

    def allow(self, key: Hashable) -> int | None:
        """None when `key` is muted now; else how many lines of it were held back since the last."""
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now < entry[0]:
            entry[1] += 1
            self.suppressed += 1
            return None
        held = 0 if entry is None else int(entry[1])
        self._seen[key] = [now + self.interval, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return held

    def log_line(self, key: Hashable, level: int, msg: str, *args: object) -> bool:
        """Log `msg % args` unless `key` is muted; returns whether it was written."""
        held = self.allow(key)
        if held is None:
            return False
        if held:
            msg += " (%d similar suppressed)"
            args = (*args, held)
        self.log.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log_line(key, logging.WARNING, msg, *args)

    def info(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log_line(key, logging.INFO, msg, *args)

    def error(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log_line(key, logging.ERROR, msg, *args)


class LineBudget:
    """A token bucket for routine per-packet log lines: `rate` lines a second, bursts of `burst`.

    A classroom's boot storm (hundreds of machines, a few lines each) fits in the burst; a flood
    of crafted packets from random addresses does not, and its lines are counted instead of
    written. `allow()` returns None when over budget, else how many lines were dropped since the
    last allowed one (to be reported with it)."""

    def __init__(self, rate: float = 100.0, burst: float = 2000.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._dropped = 0
        self.dropped_total = 0

    def allow(self) -> int | None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            self._dropped += 1
            self.dropped_total += 1
            return None
        self._tokens -= 1.0
        dropped, self._dropped = self._dropped, 0
        return dropped
