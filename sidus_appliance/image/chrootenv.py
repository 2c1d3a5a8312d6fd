"""Running commands inside an instance root: the seed's `sidus` alias, made leak-proof.

Every command runs in a private mount namespace (`unshare -m`) where proc, sys, dev, dev/pts,
the host's resolv.conf (for apt) and optionally an apt archive cache are mounted over the
instance root. The mounts exist only as long as the command: when it ends, or is killed, or our
own process dies, the kernel tears the namespace down. Nothing can be left mounted on the host,
and `assert_no_mounts` checks that after every session anyway.

A session also puts a policy-rc.d in the instance forbidding service starts (a package's
postinst must not start a daemon on the appliance) and removes it afterwards, so that the
master, booting the root read-write, starts services normally.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

POLICY_RC_D = "#!/bin/sh\n# sidus-appliance: no service starts while building (removed afterwards)\nexit 101\n"
POLICY_MARK = "sidus-appliance"

# $1 root, $2 resolv.conf to bind ("" for none), $3 apt archive dir to bind ("" for none), then argv.
_LAUNCHER = r"""
set -e
R=$1 RESOLV=$2 CACHE=$3
shift 3
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --bind /dev "$R/dev"
mount --bind /dev/pts "$R/dev/pts"
if [ -n "$RESOLV" ]; then
    if [ -L "$R/etc/resolv.conf" ] || [ ! -e "$R/etc/resolv.conf" ]; then
        echo "sidus-appliance: $R/etc/resolv.conf is not a regular file; DNS in the chroot may fail" >&2
    else
        mount --bind "$RESOLV" "$R/etc/resolv.conf"
    fi
fi
if [ -n "$CACHE" ]; then
    mkdir -p "$R/var/cache/apt/archives"
    mount --bind "$CACHE" "$R/var/cache/apt/archives"
fi
exec chroot "$R" "$@"
"""

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}


class ChrootError(RuntimeError):
    pass


def host_resolv_conf() -> str:
    path = Path("/etc/resolv.conf")
    return str(path.resolve()) if path.exists() else ""


def chroot_argv(
    root: Path, argv: Sequence[str], *, resolv: str | None = None, apt_cache: Path | None = None
) -> list[str]:
    """The host command line that runs `argv` inside `root` with the build mounts."""
    return [
        "unshare", "--mount", "--propagation", "private", "sh", "-c", _LAUNCHER, "sidus-chroot",
        str(root), host_resolv_conf() if resolv is None else resolv, str(apt_cache or ""), *argv,
    ]


def mounts_under(root: Path) -> list[str]:
    """Mount points strictly below `root` visible in our mount namespace (should be none).

    The root itself may legitimately be a mount point (its own file system): never listed."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            found.append(point)
    return found


def assert_no_mounts(root: Path) -> None:
    """Unmount anything left under `root` (lazily, deepest first) and fail if any was there."""
    left = mounts_under(root)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if left:
        raise ChrootError(f"mounts were left under {root} (now lazily unmounted): {', '.join(left)}")


@contextlib.contextmanager
def policy_rc_d(root: Path) -> Iterator[None]:
    """Forbid service starts in the instance for the duration; restore what was there."""
    path = root / "usr/sbin/policy-rc.d"
    ours = not path.exists() or POLICY_MARK in path.read_text(errors="replace")
    if ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(POLICY_RC_D)
        path.chmod(0o755)
    try:
        yield
    finally:
        if ours:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def run(
    root: Path,
    argv: Sequence[str],
    *,
    log: IO[str] | None = None,
    input: str | None = None,
    apt_cache: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    interactive: bool = False,
) -> int:
    """Run `argv` in `root`; output goes to `log` (or the terminal when interactive)."""
    full_env = dict(CHROOT_ENV)
    if interactive and "TERM" in os.environ:
        full_env["TERM"] = os.environ["TERM"]
    full_env.update(env or {})
    command = chroot_argv(root, argv, apt_cache=apt_cache)
    try:
        if interactive:
            result = subprocess.run(command, env=full_env, check=False)
        else:
            if log is not None:
                log.write(f"$ chroot {root} {' '.join(argv)}\n")
                log.flush()
            result = subprocess.run(
                command, env=full_env, check=False, text=True, input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
    finally:
        assert_no_mounts(root)
    if check and result.returncode != 0:
        raise ChrootError(f"`{' '.join(argv)}` failed in {root} (exit status {result.returncode})")
    return result.returncode


def shell(root: Path, argv: Sequence[str] = (), *, apt_cache: Path | None = None) -> int:
    """`image chroot NAME -- CMD`: interactive, policy-rc.d in place, mounts torn down after."""
    with policy_rc_d(root):
        return run(root, list(argv) or ["/bin/bash", "-l"], interactive=True, check=False, apt_cache=apt_cache)
