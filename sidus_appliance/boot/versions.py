"""Debian's version ordering, as `dpkg --compare-versions` does it (deb-version(7)).

`[epoch:]upstream[-revision]`: epochs compare as numbers, then upstream and revision each by
dpkg's `verrevcmp`: alternate runs of non-digits (letters sort before other characters, `~`
before everything, even the end of the string) and of digits (as numbers). Kernel ABI strings
such as `6.1.0-18-amd64` or `6.12.48+deb13-amd64` are ordered the same way (letters after
digits: dpkg puts `6.1.0-rc1-amd64` after `6.1.0-18-amd64`, and so do we).
"""

from __future__ import annotations

import functools


def _order(char: str) -> int:
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    if char == "~":
        return -1
    return ord(char) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return (int(epoch) if epoch.isdigit() else 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` sorts before, with or after `b` (dpkg's order)."""
    epoch_a, up_a, rev_a = _split(a)
    epoch_b, up_b, rev_b = _split(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _verrevcmp(up_a, up_b) or _verrevcmp(rev_a, rev_b)


version_key = functools.cmp_to_key(compare_versions)  # sorted(versions, key=version_key)


def newest_first(versions: list[str]) -> list[str]:
    return sorted(versions, key=version_key, reverse=True)
