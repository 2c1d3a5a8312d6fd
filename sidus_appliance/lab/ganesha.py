"""nfs-ganesha inside a lab namespace (tests, demo): never on the serving path.

rpcbind and ganesha.nfsd run in the namespace with a private /run, so nothing leaks to the
host, and (`tie_to_caller`) they end with the process that started them, however it dies.
"""

from __future__ import annotations

import os
import subprocess

from ..config import Config
from ..nfs.exports import Log
from ..nfs.ganesha import GaneshaPaths, Launcher, apply_ganesha

# Runs inside `unshare -m` in the target namespace: a private /run gives rpcbind its own socket
# (/run/rpcbind.sock), so a namespaced rpcbind never collides with the host's. With a caller PID
# ($5), a watcher ends ganesha and rpcbind once that process is gone, however it died (rpcbind
# drops to user _rpc, which clears a parent-death signal, hence the polling watcher).
_NETNS_LAUNCHER = r"""
set -e
mount -t tmpfs -o mode=0755 sidus-run /run
mkdir -p /run/rpcbind
rpcbind -f -w &
rpc=$!
echo $rpc > "$4"
i=0
while [ ! -S /run/rpcbind.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -n "$5" ]; then
    server=$$
    (
        while kill -0 "$5" 2> /dev/null && kill -0 "$server" 2> /dev/null; do sleep 0.5; done
        kill -9 "$server" "$rpc" 2> /dev/null
    ) < /dev/null > /dev/null 2>&1 &
fi
exec ganesha.nfsd -F -f "$1" -L "$2" -p "$3"
"""


def netns_launcher(netns: str, *, tie_to_caller: bool = False) -> Launcher:
    """Start rpcbind + ganesha.nfsd in `netns`; with `tie_to_caller` they end with this process."""

    def launch(paths: GaneshaPaths) -> None:
        with open(paths.state / "launcher.err", "w") as errors:
            subprocess.Popen(
                ["ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private",
                 "sh", "-c", _NETNS_LAUNCHER, "sidus-ganesha",
                 str(paths.config), str(paths.log), str(paths.pidfile), str(paths.rpcbind_pidfile),
                 str(os.getpid()) if tie_to_caller else ""],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
            )

    return launch


def apply_in_netns(config: Config, log: Log, netns: str, *, tie_to_caller: bool = True) -> None:
    """`exports apply` with the ganesha backend, its servers inside `netns`."""
    apply_ganesha(config, log, launcher=netns_launcher(netns, tie_to_caller=tie_to_caller), netns=netns)
