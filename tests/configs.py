"""Config texts the tests share: the lab's addresses, one master, instances and NFS paths under `tmp`."""

from __future__ import annotations

from pathlib import Path

SERVER = "10.20.17.254"
MASTER_MAC = "08:00:aa:bb:cc:dd"


def nfs_config_text(tmp: Path, instances: list[str], *, interface: str = "s0", backend: str = "ganesha",
                    extra: str = "") -> str:
    """A config whose state, exports and instance roots all live under `tmp` (`extra`: more YAML)."""
    listed = "\n".join(f"  - {{name: {name}}}" for name in instances) or "  []"
    ganesha = f"  ganesha_config: {tmp}/state/ganesha.conf\n" if backend == "ganesha" else ""
    return f"""
interface: {interface}
address: {SERVER}/24
domain: sidus.zone
state_dir: {tmp}/state
hosts:
  - {{name: master, mac: "{MASTER_MAC}", address: 10.20.17.253, profile: master}}
instances:
{listed}
nfs:
  backend: {backend}
  export_root: {tmp}/export
  home: {tmp}/export/home
  instances_dir: {tmp}/nfsroot
{ganesha}{extra}"""
