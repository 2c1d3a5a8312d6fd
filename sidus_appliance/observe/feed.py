"""What the management endpoint reads of the boot tracker, and one poller for every event stream.

The tracker is sans-IO (no clock): someone must call `poll(now)` for boots to turn STUCK, and
something must notice that `version` moved. One `ChangeFeed` task does both ~4 times a second
and wakes the event streams waiting on it, so N open pages cost one poll, not N.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..ratelimit import RateLimitedLog

POLL_INTERVAL = 0.25  # seconds between looks at tracker.version (the page feels live at 4 Hz)

Row = dict[str, Any]  # one machine, JSON-ready (observe-spec.md, "snapshot row")


class TrackerView(Protocol):
    """The part of observe.tracker.BootTracker the endpoint uses (tests pass a fake)."""

    @property
    def version(self) -> int: ...
    def changed_since(self, version: int) -> list[str]: ...
    def snapshot(self, now: float, macs: Iterable[str] | None = None) -> list[Row]: ...
    def poll(self, now: float) -> None: ...


class ChangeFeed:
    """Polls the tracker and wakes every waiter when its version changes (or the feed closes)."""

    def __init__(self, tracker: TrackerView, clock: Callable[[], float], log: logging.Logger,
                 interval: float = POLL_INTERVAL) -> None:
        self.tracker = tracker
        self.clock = clock
        self.interval = interval
        self.log = log
        self.rlog = RateLimitedLog(log, interval=60.0)
        self.closed = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        self.closed = True
        self._wake()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def wait(self, timeout: float) -> None:
        """Until the next change, the close, or `timeout` seconds, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def poll(self) -> float:
        """Let the tracker age its boots (STUCK) now; returns that `now`."""
        now = self.clock()
        try:
            self.tracker.poll(now)
        except Exception:  # a tracker bug must not end the feed: the page would freeze silently
            if self.rlog.allow("poll") is not None:
                self.log.exception("management: tracker.poll failed")
        return now

    async def _run(self) -> None:
        seen = self.tracker.version
        while not self.closed:
            await asyncio.sleep(self.interval)
            self.poll()
            if self.tracker.version != seen:
                seen = self.tracker.version
                self._wake()

    def _wake(self) -> None:
        # A fresh Event per change: every waiter of the old one wakes, later waiters wait anew.
        event, self._changed = self._changed, asyncio.Event()
        event.set()
