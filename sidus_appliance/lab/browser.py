"""Headless Chromium for tests and the demo: open a page, wait for a JS condition, screenshot.

    with Browser(netns=None) as browser:
        browser.open("http://127.0.0.1:8067/")
        browser.wait_for("document.querySelector('tr[data-state=booted]')", timeout=30)
        browser.screenshot(Path("page.png"))

Chromium (Debian package `chromium`) runs as our child, by PID, with a private profile
directory, optionally inside a network namespace (`ip netns exec NS`: the management page
listens on 127.0.0.1 of the appliance's namespace). We speak the DevTools protocol over
`--remote-debugging-pipe` (fd 3 in, fd 4 out, NUL-separated JSON) rather than a DevTools
port: a port opened inside a namespace cannot be reached from the host's, a pipe works from
anywhere, and no other local user can attach to our browser. Every chromium process ends
with the `Browser` (its own session and process group, ended by that id), also on failure.

The methods block: from asyncio code (a service under test in the same process), call them
through `asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

CHROMIUM = "chromium"
FLAGS = (
    "--headless=new",
    "--remote-debugging-pipe",
    "--no-sandbox",  # we run as root, where chromium's sandbox refuses to start
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-gpu",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--mute-audio",
    "--hide-scrollbars",
    "--password-store=basic",
    "--use-mock-keychain",
)
LOG_TAIL = 2000  # characters of chromium's stderr quoted in an error


class BrowserError(RuntimeError):
    """Chromium failed to start, died, or refused a command; the message says which."""


class Browser:
    def __init__(self, netns: str | None = None, *, width: int = 1280, height: int = 800, scale: float = 1.0,
                 executable: str = CHROMIUM, niceness: int = 10, start_timeout: float = 30.0) -> None:
        self.netns = netns
        self.width, self.height, self.scale = width, height, scale
        self.executable = executable
        self.niceness = niceness  # other work (QEMU, benches) shares the box
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.profile: Path | None = None
        self.session: str | None = None
        self._to_browser: int | None = None  # our end of chromium's fd 3
        self._from_browser: int | None = None  # our end of chromium's fd 4
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._dead: str | None = None  # why the pipe ended

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Browser:
        try:
            self._launch()
            self.send("Browser.getVersion", timeout=self.start_timeout, in_page=False)
            target = self.send("Target.createTarget", {"url": "about:blank"}, in_page=False)["targetId"]
            attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, in_page=False)
            self.session = attached["sessionId"]
            self.send("Emulation.setDeviceMetricsOverride", {
                "width": self.width, "height": self.height, "deviceScaleFactor": self.scale, "mobile": False})
        except BaseException:
            self.close()
            raise
        return self

    def _launch(self) -> None:
        if shutil.which(self.executable) is None:
            raise BrowserError(f"{self.executable} is not installed (Debian package chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="sidus-chromium-"))
        to_browser_r, self._to_browser = _pipe_above_4()
        self._from_browser, from_browser_w = _pipe_above_4()
        command = [self.executable, *FLAGS, f"--user-data-dir={self.profile}",
                   f"--window-size={self.width},{self.height}", "about:blank"]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        # bash puts the pipe ends on fds 3 and 4, where chromium expects them, then each program
        # execs the next (nice, ip, the chromium launcher): the PID we hold is chromium's.
        script = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        stderr = (self.profile / "stderr.log").open("wb")
        try:
            self.process = subprocess.Popen(
                ["bash", "-c", script, "chromium-pipe", "nice", "-n", str(self.niceness), *command],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                pass_fds=(to_browser_r, from_browser_w), start_new_session=True,
            )
        finally:
            stderr.close()
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._reader = threading.Thread(target=self._read, name=f"chromium-{self.process.pid}", daemon=True)
        self._reader.start()

    def close(self) -> None:
        """End chromium (politely, then by PID and process group) and remove its profile."""
        process = self.process
        if process is not None and not _exited(process.pid) and self._dead is None:
            with contextlib.suppress(BrowserError, TimeoutError):
                self.send("Browser.close", timeout=3, in_page=False)
        if process is not None:
            _end(process)
        if self._to_browser is not None:
            with contextlib.suppress(OSError):
                os.close(self._to_browser)
        # The reader sees EOF once every chromium process is gone; only then is its descriptor
        # closed (closed under a blocked read, its number could go to a file the reader then reads).
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._from_browser is not None and not (self._reader and self._reader.is_alive()):
            os.close(self._from_browser)
        self._to_browser = self._from_browser = None
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
        self.process = self.profile = self.session = self._reader = None

    # ------------------------------------------------------------------ the protocol

    def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0,
             in_page: bool = True) -> dict[str, Any]:
        """One DevTools command; its result, or BrowserError with chromium's error."""
        if self._to_browser is None or self._dead is not None:
            raise BrowserError(f"{method}: chromium is not running ({self._dead or 'not started'}){self._log_tail()}")
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if in_page:
            if self.session is None:
                raise BrowserError(f"{method}: no page attached yet")
            message["sessionId"] = self.session
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[message["id"]] = future
            try:
                _write_all(self._to_browser, json.dumps(message).encode() + b"\0")
            except OSError as exc:
                self._pending.pop(message["id"], None)
                raise BrowserError(f"{method}: cannot write to chromium ({exc}){self._log_tail()}") from None
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"{method}: no answer from chromium within {timeout:g} s") from None
        finally:
            self._pending.pop(message["id"], None)

    def _read(self) -> None:
        buffer = b""
        fd = self._from_browser
        assert fd is not None
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    self._dispatch(json.loads(raw))
        except (OSError, ValueError) as exc:
            self._dead = f"pipe error: {exc}"
        self._dead = self._dead or "chromium closed its pipe"
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(BrowserError(f"chromium ended: {self._dead}{self._log_tail()}"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        future = self._pending.get(message.get("id", -1))
        if future is None or future.done():
            return  # an event, or the answer to a command that timed out: nothing waits for it
        if "error" in message:
            error = message["error"]
            future.set_exception(BrowserError(f"{error.get('message')} ({error.get('data', error.get('code'))})"))
        else:
            future.set_result(message.get("result", {}))

    def _log_tail(self) -> str:
        if self.profile is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self.profile / "stderr.log").read_text(errors="replace")[-LOG_TAIL:].strip()
            return f"\nchromium said:\n{text}" if text else ""
        return ""

    # ------------------------------------------------------------------ the page

    def open(self, url: str, timeout: float = 30.0) -> None:
        """Navigate and wait until the document has loaded (scripts with `defer` have run)."""
        result = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout=timeout)

    def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """The value of a JS expression in the page (promises awaited), or BrowserError."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression!r} raised: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, condition: str, timeout: float = 10.0, interval: float = 0.1) -> Any:
        """Evaluate `condition` until it is truthy; its value, or TimeoutError saying what it was."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.evaluate(condition, timeout=max(1.0, deadline - time.monotonic()))
            except BrowserError as exc:  # the page may be between documents; keep the reason
                if self._dead is not None:
                    raise
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{condition!r} not true within {timeout:g} s (last: {last!r})")
            time.sleep(interval)

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        """A PNG of the page (all of it, or the viewport)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path


def _pipe_above_4() -> tuple[int, int]:
    """A pipe whose ends are not fds 3 or 4, which the child's `3<&r 4>&w` must not clobber."""
    ends = os.pipe()
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in ends)
    for fd in ends:
        os.close(fd)
    return moved[0], moved[1]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _end(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Chromium by its PID (it is on its way out after Browser.close; else SIGTERM), then
    SIGKILL to its process group (renderers, zygotes: the group we created, whose id is its
    PID) while the leader is not yet reaped, so that id cannot belong to anyone else."""
    if not _wait_exit(process.pid, grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        _wait_exit(process.pid, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _exited(pid: int) -> bool:
    """Whether our child has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
