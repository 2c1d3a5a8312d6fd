"""lab/browser.py without Chromium: a fake browser speaks the DevTools pipe protocol (fd 3 in,
fd 4 out, NUL-separated JSON), so the launcher, the protocol and the cleanup are tested here;
tests/integration/test_browser_page.py drives the real one."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from sidus_appliance.lab.browser import Browser, BrowserError

FAKE = '''#!{python}
import base64, json, os, signal, subprocess, sys
# A "renderer" that ignores SIGTERM, as a stuck chromium child would: only the group's SIGKILL ends it.
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
with open({pids!r}, "w") as f:
    f.write(f"{{os.getpid()}} {{child.pid}} {{os.getpgrp()}}\\n" + " ".join(sys.argv[1:]))
print("fake chromium starting", file=sys.stderr, flush=True)
values = {{"document.readyState === 'complete'": True, "1 + 1": 2, "window.ready": None}}
buffer = b""
while True:
    data = os.read(3, 65536)
    if not data:
        break
    buffer += data
    *messages, buffer = buffer.split(b"\\0")
    for raw in messages:
        m = json.loads(raw)
        method, params = m["method"], m.get("params", {{}})
        result = {{}}
        if method == "Target.createTarget":
            result = {{"targetId": "T1"}}
        elif method == "Target.attachToTarget":
            result = {{"sessionId": "S1"}}
        elif method == "Page.navigate" and "refused" in params["url"]:
            result = {{"frameId": "F", "errorText": "net::ERR_CONNECTION_REFUSED"}}
        elif method == "Runtime.evaluate":
            assert m.get("sessionId") == "S1", m
            expression = params["expression"]
            if expression == "boom()":
                details = {{"exception": {{"description": "ReferenceError: boom"}}}}
                result = {{"result": {{}}, "exceptionDetails": details}}
            else:
                result = {{"result": {{"value": values.get(expression, expression)}}}}
        elif method == "Page.getLayoutMetrics":
            result = {{"cssContentSize": {{"width": 800, "height": 1200}}}}
        elif method == "Page.captureScreenshot":
            result = {{"data": base64.b64encode(b"\\x89PNG fake " + json.dumps(params).encode()).decode()}}
        elif method == "Nope.crash":
            print("fatal: crashed on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        elif method == "Nope.silent":
            continue
        elif method == "Nope.refuse":
            error = {{"code": -32601, "message": "not found"}}
            os.write(4, json.dumps({{"id": m["id"], "error": error}}).encode() + b"\\0")
            continue
        os.write(4, json.dumps({{"id": m["id"], "result": result}}).encode() + b"\\0")
        os.write(4, json.dumps({{"method": "Some.event", "params": {{}}}}).encode() + b"\\0")  # events are ignored
        if method == "Browser.close":
            sys.exit(0)
'''


@pytest.fixture
def fake(tmp_path: Path) -> tuple[str, Path]:
    pids = tmp_path / "pids"
    script = tmp_path / "fake-chromium"
    script.write_text(FAKE.format(python=sys.executable, pids=str(pids)))
    script.chmod(0o755)
    return str(script), pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[1].startswith("Z"))


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_open_evaluate_wait_screenshot_and_everything_ends(fake: tuple[str, Path], tmp_path: Path) -> None:
    executable, pids = fake
    with Browser(executable=executable, width=800, height=600) as browser:
        pid, child, group = map(int, pids.read_text().split("\n")[0].split())
        args = pids.read_text().split("\n")[1].split()
        assert browser.pid == pid == group  # the PID we hold is the browser's, leading its own group
        assert "--headless=new" in args and "--remote-debugging-pipe" in args and "--no-sandbox" in args
        profile = browser.profile
        assert profile is not None and f"--user-data-dir={profile}" in args and profile.is_dir()
        browser.open("http://127.0.0.1:8067/")
        assert browser.evaluate("1 + 1") == 2
        assert browser.wait_for("a truthy value", timeout=1) == "a truthy value"  # the fake echoes it
        with pytest.raises(TimeoutError, match=r"'window\.ready' not true within 0\.3 s"):
            browser.wait_for("window.ready", timeout=0.3, interval=0.05)
        with pytest.raises(BrowserError, match="ReferenceError: boom"):
            browser.evaluate("boom()")
        with pytest.raises(BrowserError, match="ERR_CONNECTION_REFUSED"):
            browser.open("http://refused/")
        with pytest.raises(BrowserError, match="not found"):
            browser.send("Nope.refuse")
        with pytest.raises(TimeoutError, match=r"Nope\.silent: no answer"):
            browser.send("Nope.silent", timeout=0.2)
        shot = browser.screenshot(tmp_path / "shot.png")
        assert shot.read_bytes().startswith(b"\x89PNG fake ")
        assert b'"width": 800, "height": 1200' in shot.read_bytes()  # the whole page, not the viewport
        assert b'"clip"' not in browser.screenshot(tmp_path / "view.png", full_page=False).read_bytes()
    assert wait_gone(pid)
    assert wait_gone(child)  # it ignored SIGTERM: the process group's SIGKILL ended it
    assert not profile.exists()
    assert browser.pid is None


def test_a_crash_is_reported_with_what_the_browser_said(fake: tuple[str, Path]) -> None:
    executable, pids = fake
    browser = Browser(executable=executable).start()
    try:
        child = int(pids.read_text().split()[1])
        with pytest.raises(BrowserError, match=r"(?s)chromium ended.*fatal: crashed on purpose"):
            browser.send("Nope.crash")
        with pytest.raises(BrowserError, match="chromium is not running"):
            browser.evaluate("1 + 1")
    finally:
        browser.close()
    assert wait_gone(child)


def test_a_browser_that_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(BrowserError, match="is not installed"):
        Browser(executable=str(tmp_path / "absent")).start()
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 1\n")
    broken.chmod(0o755)
    browser = Browser(executable=str(broken), start_timeout=5)
    with pytest.raises(BrowserError, match=r"(?s)chromium.*cannot open display"):
        browser.start()
    assert browser.process is None and browser.profile is None  # start() cleaned up after itself
