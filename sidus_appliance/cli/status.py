"""`status`: the machines a running appliance has seen booting, from its management endpoint.

GET <url>/api/machines (the page's own API) and print one line per machine. The URL is
--url, else the `management.listen` of --config, else http://127.0.0.1:8067; the token is
--token, else $SIDUS_MANAGEMENT_TOKEN, else the config's `management.token`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..config import load_config
from .common import Commands, command

DEFAULT_URL = "http://127.0.0.1:8067"
TOKEN_VARIABLE = "SIDUS_MANAGEMENT_TOKEN"  # keeps the token out of `ps` and shell history
STATES = ("booting", "booted", "stuck")
ARCH_NAMES = {0: "BIOS", 6: "UEFI32", 7: "UEFI64", 9: "UEFI64", 10: "ARM32", 11: "ARM64", 16: "UEFI-HTTP"}
COLUMNS = ("NAME", "MAC", "ADDRESS", "FIRMWARE", "LOADER", "PROFILE", "PHASE", "STATE", "BOOT", "LAST SEEN")


class StatusError(Exception):
    """The endpoint could not be asked; the message says why, for the administrator."""


def fetch_machines(url: str, token: str | None, timeout: float = 10.0) -> dict[str, Any]:
    """{"now": .., "machines": [rows]} from `url`/api/machines."""
    endpoint = url.rstrip("/") + "/api/machines"
    request = urllib.request.Request(endpoint, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never hand the token to a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusError(f"{endpoint}: 401, a token is required (--token, ${TOKEN_VARIABLE}, "
                              "or --config with management.token)") from None
        raise StatusError(f"{endpoint}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach {endpoint}: {reason} (is `serve` running, management enabled?)") from None
    except ValueError as exc:
        raise StatusError(f"{endpoint}: not the machines' JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("machines"), list):
        raise StatusError(f"{endpoint}: not the machines' JSON (no 'machines' list)")
    return data


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if value < 100:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _ago(now: Any, then: Any) -> str:
    if not isinstance(now, (int, float)) or not isinstance(then, (int, float)):
        return "-"
    age = max(0.0, now - then)
    if age < 60:
        return f"{age:.0f}s ago"
    if age < 3600:
        return f"{age // 60:.0f}m ago"
    if age < 86400:
        return f"{age // 3600:.0f}h ago"
    return f"{age // 86400:.0f}d ago"


def _firmware(row: dict[str, Any]) -> str:
    arch = row.get("arch")
    parts = [str(row.get("firmware") or ""), "" if arch is None else ARCH_NAMES.get(arch, f"arch{arch}")]
    return "/".join(part for part in parts if part) or "-"


def _address_key(row: dict[str, Any]) -> tuple[int, ...]:
    try:
        return tuple(int(octet) for octet in str(row.get("address")).split("."))
    except ValueError:
        return (1 << 16,)


def format_table(data: dict[str, Any], state: str | None = None) -> str:
    """The machines as aligned columns, sorted by address, with a count per state."""
    now = data.get("now")
    machines = [row for row in data["machines"] if isinstance(row, dict)]
    counts = {s: sum(1 for row in machines if row.get("state") == s) for s in STATES}
    shown = sorted((row for row in machines if state is None or row.get("state") == state), key=_address_key)
    lines: list[tuple[str, ...]] = [COLUMNS]
    for row in shown:
        stuck = f" at {row['stuck_at']}" if row.get("state") == "stuck" and isinstance(row.get("stuck_at"), str) else ""
        lines.append((
            str(row.get("name") or "-"), str(row.get("mac") or "-"), str(row.get("address") or "-"), _firmware(row),
            str(row.get("loader") or "-"), str(row.get("profile") or "-"), str(row.get("phase") or "-"),
            f"{row.get('state') or '-'}{stuck}", _seconds(row.get("duration")), _ago(now, row.get("last_seen")),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines] if shown else []
    summary = f"{len(machines)} machine(s): " + ", ".join(f"{counts[s]} {s}" for s in STATES)
    if state is not None:
        summary += f" (showing {state})"
    return "\n".join([*text, summary])


def resolve(args: argparse.Namespace) -> tuple[str, str | None]:
    """The URL and token to use, from the options, the environment and --config."""
    config = load_config(args.config) if args.config is not None else None
    url = args.url or (config.management.url if config is not None else DEFAULT_URL)
    token = args.token or os.environ.get(TOKEN_VARIABLE) or (config.management.token if config else None)
    return url, token


def cmd_status(args: argparse.Namespace) -> int:
    url, token = resolve(args)
    try:
        data = fetch_machines(url, token, timeout=args.timeout)
    except StatusError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_table(data, args.state))
    return 0


def register(commands: Commands) -> None:
    p = command(commands, "status", cmd_status, "print the machines seen booting, from a running appliance",
                config=False)
    p.add_argument("--url", help=f"management endpoint (default: management.listen of --config, else {DEFAULT_URL})")
    p.add_argument("--config", "-c", type=Path, help="config file whose management section gives the URL and token")
    p.add_argument("--token", help=f"management token (default: ${TOKEN_VARIABLE}, else the config's)")
    p.add_argument("--state", choices=STATES, help="only machines in this state")
    p.add_argument("--json", action="store_true", help="print the endpoint's JSON as it came")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default %(default)s)")
