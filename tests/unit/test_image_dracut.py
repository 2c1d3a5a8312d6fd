"""Our dracut module 90sidus: syntax, shellcheck, and the hook logic against fake and real mounts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sidus_appliance.resources import DRACUT_MODULE, data_path

from ..conftest import require

MODULE = data_path(*DRACUT_MODULE)
OVERLAY = MODULE / "sidus-overlay.sh"
DHCLIENT = MODULE / "sidus-dhclient-script.sh"

# dracut-lib stand-ins: getarg reads our test variables, warn/info go to stderr.
STUBS = r"""
getarg() {
    case "$1" in
        sidus=) [ -n "$T_MODE" ] && echo "$T_MODE" ;;
        sidus.size=) [ -n "$T_SIZE" ] && echo "$T_SIZE" ;;
    esac
}
warn() { echo "WARN: $*" >&2; }
info() { echo "INFO: $*" >&2; }
"""


def test_files_present_and_executable() -> None:
    for name in ("module-setup.sh", "sidus-overlay.sh", "sidus-dhclient-script.sh"):
        assert os.access(MODULE / name, os.X_OK), name


@pytest.mark.parametrize("shell,name", [
    ("bash", "module-setup.sh"), ("sh", "sidus-overlay.sh"), ("sh", "sidus-dhclient-script.sh"),
])
def test_syntax(shell: str, name: str) -> None:
    subprocess.run([shell, "-n", str(MODULE / name)], check=True)


def test_shellcheck() -> None:
    require("shellcheck", root=False, tools=("shellcheck",))
    subprocess.run(["shellcheck", "-s", "bash", str(MODULE / "module-setup.sh")], check=True)
    subprocess.run(["shellcheck", "-s", "sh", str(OVERLAY), str(DHCLIENT)], check=True)


def run_fake(tmp_path: Path, mode: str = "", size: str = "", fail: str = "") -> tuple[list[str], str]:
    """Source the hook with fake mount/modprobe/umount that log their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    for tool in ("mount", "umount", "modprobe"):
        script = bin_dir / tool
        script.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n'
            f'case "{tool} $*" in {fail or "NEVER"}) exit 32 ;; esac\nexit 0\n'
        )
        script.chmod(0o755)
    newroot = tmp_path / "sysroot"
    newroot.mkdir(exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "NEWROOT": str(newroot), "SIDUS_BASE": str(tmp_path / "run-sidus"),
        "T_MODE": mode, "T_SIZE": size,
    }
    result = subprocess.run(
        ["sh", "-c", STUBS + f'. "{OVERLAY}"; echo "rc=$?"'], env=env, capture_output=True, text=True, check=True,
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    base, root = str(tmp_path / "run-sidus"), str(newroot)
    return [line.replace(base, "B").replace(root, "R") for line in lines], result.stdout + result.stderr


def test_without_sidus_the_root_is_left_alone(tmp_path: Path) -> None:
    calls, out = run_fake(tmp_path)
    assert calls == []
    assert "rc=0" in out


def test_overlay_mode(tmp_path: Path) -> None:
    calls, out = run_fake(tmp_path, mode="overlay", size="2G")
    assert calls == [
        "mount --bind R B/lower",
        "mount -o remount,bind,ro B/lower",
        "mount -t tmpfs -o mode=0755,size=2G sidus-rw B/rw",
        "modprobe overlay",
        "mount -t overlay -o lowerdir=B/lower,upperdir=B/rw/upper,workdir=B/rw/work sidus R",
    ]
    assert (tmp_path / "run-sidus" / "rw" / "upper").is_dir()
    assert "rc=0" in out


@pytest.mark.parametrize("mode", ["", "overlay", "aufs"])
def test_a_client_never_keeps_the_master_machine_id(tmp_path: Path, mode: str) -> None:
    """The master (no sidus=) keeps the ID it committed; an overlay client blanks it in its RAM layer."""
    etc = tmp_path / "sysroot" / "etc"
    etc.mkdir(parents=True)
    (etc / "machine-id").write_text("6097fc246d4d49e6a27d2c8e328bd3a2\n")
    _, out = run_fake(tmp_path, mode=mode)
    assert "rc=0" in out
    assert (etc / "machine-id").read_text() == ("" if mode else "6097fc246d4d49e6a27d2c8e328bd3a2\n")
    (etc / "machine-id").write_text("")  # as the builder leaves it: nothing to do, nothing said
    _, out = run_fake(tmp_path, mode=mode)
    assert (etc / "machine-id").read_text() == "" and "machine ID" not in out


def test_default_tmpfs_size(tmp_path: Path) -> None:
    calls, _ = run_fake(tmp_path, mode="overlay")
    assert "mount -t tmpfs -o mode=0755,size=50% sidus-rw B/rw" in calls


def test_aufs_falls_back_to_overlay(tmp_path: Path) -> None:
    calls, out = run_fake(tmp_path, mode="aufs", fail="modprobe\\ aufs")
    assert calls[-3:] == [
        "modprobe aufs",
        "modprobe overlay",
        "mount -t overlay -o lowerdir=B/lower,upperdir=B/rw/upper,workdir=B/rw/work sidus R",
    ]
    assert "aufs is not available" in out


def test_overlay_failure_undoes_and_boots_as_mounted(tmp_path: Path) -> None:
    calls, out = run_fake(tmp_path, mode="overlay", fail="mount\\ -t\\ overlay*")
    assert calls[-2:] == ["umount B/rw", "umount B/lower"]
    assert "rc=1" in out and "overlay mount failed" in out


def test_unknown_mode_is_ignored(tmp_path: Path) -> None:
    calls, out = run_fake(tmp_path, mode="unionfs")
    assert calls == [] and "unknown mode" in out


def test_real_overlay_over_a_read_only_root(tmp_path: Path) -> None:
    """Real mounts in a private mount namespace: a read-only 'NFS root' becomes writable in RAM."""
    require("real overlay mounts (unshare, overlayfs)", tools=("unshare",),
            ok="overlay" in Path("/proc/filesystems").read_text())
    server = tmp_path / "server-root"
    (server / "etc").mkdir(parents=True)
    (server / "etc" / "motd").write_text("shared\n")
    (server / "etc" / "machine-id").write_text("6097fc246d4d49e6a27d2c8e328bd3a2\n")  # the master's
    (server / "etc" / "machine-id").chmod(0o444)
    newroot = tmp_path / "sysroot"
    newroot.mkdir()
    script = f"""
set -e
mount --bind "{server}" "{newroot}"
mount -o remount,bind,ro "{newroot}"      # what dracut's NFS mount gives us: a read-only root
! touch "{newroot}/before" 2>/dev/null
{STUBS}
. "{OVERLAY}"
echo changed > "{newroot}/etc/motd"
echo new > "{newroot}/written-by-client"
cat "{newroot}/etc/motd"
cat "{tmp_path}/run-sidus/lower/etc/motd"
ls "{tmp_path}/run-sidus/rw/upper"
grep " {newroot} " /proc/self/mountinfo | tail -1
echo "machine-id=[$(cat "{newroot}/etc/machine-id")]"
"""
    env = {"PATH": os.environ["PATH"], "NEWROOT": str(newroot), "SIDUS_BASE": str(tmp_path / "run-sidus"),
           "T_MODE": "overlay", "T_SIZE": "16m"}
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "changed"         # the client sees its own write
    assert lines[1] == "shared"          # the lower layer (the server's tree) does not change
    assert "written-by-client" in lines[2:]
    assert " - overlay sidus " in result.stdout
    assert (server / "etc" / "motd").read_text() == "shared\n"
    assert "machine-id=[]" in lines  # blanked in RAM: systemd makes the client an ID of its own
    assert (server / "etc" / "machine-id").read_text() == "6097fc246d4d49e6a27d2c8e328bd3a2\n"
    assert not (server / "written-by-client").exists()
    assert str(newroot) not in Path("/proc/self/mountinfo").read_text()  # nothing leaked to the host


def run_dhclient(tmp_path: Path, reason: str) -> tuple[str, str]:
    original = tmp_path / "dhclient-script.dracut"
    record = tmp_path / "record"
    original.write_text(
        f'#!/bin/sh\necho "$reason lease=${{new_dhcp_lease_time-unset}} max=${{new_max_life-unset}}" > "{record}"\n'
    )
    original.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "reason": reason, "interface": "eth0", "new_dhcp_lease_time": "600",
           "new_max_life": "600", "SIDUS_DHCLIENT_SCRIPT": str(original)}
    result = subprocess.run(["sh", str(DHCLIENT)], env=env, capture_output=True, text=True, check=True)
    return (record.read_text().strip() if record.exists() else ""), result.stdout


@pytest.mark.parametrize("reason", ["BOUND", "RENEW", "REBIND", "REBOOT", "PREINIT"])
def test_dhclient_lease_made_permanent(tmp_path: Path, reason: str) -> None:
    record, _ = run_dhclient(tmp_path, reason)
    assert record == f"{reason} lease=unset max=unset"


@pytest.mark.parametrize("reason", ["EXPIRE", "FAIL", "RELEASE", "STOP"])
def test_dhclient_never_drops_the_address(tmp_path: Path, reason: str) -> None:
    record, out = run_dhclient(tmp_path, reason)
    assert record == ""
    assert "ignored" in out
