"""The ganesha backend really serving the exports model, inside network namespaces.

The kernel here has no NFS server nor client, so the server is nfs-ganesha (+ rpcbind) in a
namespace of ours and the client side is userspace: rpcinfo/showmount (nfs-common) and libnfs's
nfs-cat/nfs-cp (libnfs-utils), run from a second namespace whose address we change to play a
subnet client and then the master. Namespaces are named nfsdev-<pid>-..., always removed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidus_appliance import nfs
from sidus_appliance.config import parse_config
from sidus_appliance.lab.ganesha import apply_in_netns
from sidus_appliance.nfs import ganesha

from ..configs import SERVER, nfs_config_text
from ..conftest import require

pytestmark = pytest.mark.integration

NEEDED = ("ganesha.nfsd", "rpcbind", "rpcinfo", "showmount", "nfs-cat", "nfs-cp", "ip", "unshare")


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


class Pair:
    """Two namespaces joined by a veth pair created inside them (host interfaces untouched)."""

    def __init__(self) -> None:
        tag = f"nfsdev-{os.getpid()}"
        self.server, self.client = f"{tag}-srv", f"{tag}-cli"

    def __enter__(self) -> Pair:
        try:
            sh("ip", "netns", "add", self.server)
            sh("ip", "netns", "add", self.client)
            sh("ip", "-n", self.server, "link", "add", "s0", "type", "veth", "peer", "name", "c0", "netns", self.client)
            sh("ip", "-n", self.server, "addr", "add", f"{SERVER}/24", "dev", "s0")
            for ns, dev in ((self.server, "s0"), (self.client, "c0")):
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.client, self.server):
            sh("ip", "netns", "del", ns, check=False)

    def client_address(self, address: str) -> None:
        sh("ip", "-n", self.client, "addr", "flush", "dev", "c0")
        sh("ip", "-n", self.client, "addr", "add", f"{address}/24", "dev", "c0")

    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.client, *argv, check=check)


@pytest.fixture
def pair() -> Iterator[Pair]:
    require("ganesha in a namespace (nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common libnfs-utils)", tools=NEEDED)
    with Pair() as p:
        yield p


config_text = nfs_config_text  # ganesha, interface s0: the Pair's server side


def url(path: Path | str, query: str = "") -> str:
    return f"nfs://{SERVER}{path}{query}"


def test_ganesha_serves_the_model(pair: Pair, tmp_path: Path) -> None:
    root = tmp_path / "nfsroot" / "demo"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("served by sidus\n")
    (tmp_path / "export" / "home" / "alice").mkdir(parents=True)
    os.chown(tmp_path / "export" / "home" / "alice", 1000, 1000)
    local = tmp_path / "payload.txt"
    local.write_text("written over NFS\n")
    config = parse_config(config_text(tmp_path, ["demo"]), "test.yaml")
    messages: list[str] = []
    try:
        apply_in_netns(config, messages.append, pair.server)
        assert any("ganesha.nfsd serving" in m for m in messages), messages
        assert nfs.check(config, netns=pair.server) == []

        pair.client_address("10.20.17.10")
        listed = ganesha.parse_showmount(pair.run("showmount", "-e", SERVER, check=True).stdout)
        assert {"10.20.17.253/32", "10.20.17.0/24"} <= listed[str(root)]
        assert str(tmp_path / "export" / "home") in listed

        # A subnet client reads the instance root but cannot write it.
        assert pair.run("nfs-cat", url(root / "etc/motd"), check=True).stdout == "served by sidus\n"
        denied = pair.run("nfs-cp", str(local), url(root / "intruder.txt"))
        assert denied.returncode != 0 and "ROFS" in denied.stdout + denied.stderr
        assert not (root / "intruder.txt").exists()
        # Home is read-write for the subnet, root squashed: a user writes into their own dir.
        home = tmp_path / "export" / "home" / "alice"
        pair.run("nfs-cp", str(local), url(home / "note.txt", "?uid=1000&gid=1000"), check=True)
        assert (home / "note.txt").read_text() == "written over NFS\n"
        squashed = pair.run("nfs-cp", str(local), url(tmp_path / "export" / "home" / "root.txt"))
        assert squashed.returncode != 0

        # The master's single address writes the instance root, as root.
        pair.client_address("10.20.17.253")
        pair.run("nfs-cp", str(local), url(root / "from-master.txt"), check=True)
        assert (root / "from-master.txt").read_text() == "written over NFS\n"
        assert (root / "from-master.txt").stat().st_uid == 0

        # A second instance appears on reload (SIGHUP), without restarting the server.
        pid = nfs.ganesha_pid(config)
        (tmp_path / "nfsroot" / "second").mkdir()
        config2 = parse_config(config_text(tmp_path, ["demo", "second"]), "test.yaml")
        apply_in_netns(config2, messages.append, pair.server)
        assert nfs.ganesha_pid(config2) == pid
        for _ in range(50):
            listed = ganesha.parse_showmount(pair.run("showmount", "-e", SERVER).stdout)
            if str(tmp_path / "nfsroot" / "second") in listed:
                break
            subprocess.run(["sleep", "0.1"], check=False)
        assert str(tmp_path / "nfsroot" / "second") in listed
        assert nfs.check(config2, netns=pair.server) == []
    finally:
        with contextlib.suppress(Exception):
            nfs.stop_ganesha(config, messages.append)
    assert nfs.ganesha_pid(config) is None


def test_ganesha_dies_with_a_killed_caller(pair: Pair, tmp_path: Path) -> None:
    """tie_to_caller: a SIGKILLed test run leaves no NFS server behind in its namespace."""
    (tmp_path / "nfsroot" / "demo").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(config_text(tmp_path, ["demo"]))
    script = (
        "import os, sys\n"
        "from sidus_appliance import nfs\n"
        "from sidus_appliance.lab.ganesha import apply_in_netns\n"
        "from sidus_appliance.config import load_config\n"
        f"config = load_config({str(tmp_path / 'config.yaml')!r})\n"
        f"apply_in_netns(config, lambda m: None, {pair.server!r}, tie_to_caller=True)\n"
        "print(nfs.ganesha_pid(config), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == -9, result.stderr
    pid = int(result.stdout.split()[0])
    config = parse_config(config_text(tmp_path, ["demo"]), "test.yaml")
    for _ in range(50):
        if nfs.ganesha_pid(config) is None:
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or nfs.ganesha_pid(config) is None
    assert ganesha._pid_alive(nfs.ganesha_paths(config).rpcbind_pidfile, "rpcbind") is None
