"""The master's symlink race, for the hostile tests: swap two paths atomically, again and again.

    python tftp_swap.py A B --seconds 10

renameat2(RENAME_EXCHANGE) between A (the instance's real `boot/` directory) and B (a symlink
to a directory outside the instance) in a loop for SECONDS, ending on an even number of swaps
so that A is the directory again. Prints the number of swaps. Touches nothing else.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    a, b = os.fsencode(args.a), os.fsencode(args.b)

    def exchange() -> None:
        if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    swaps = 0
    deadline = time.monotonic() + min(args.seconds, 60)
    while time.monotonic() < deadline:
        exchange()
        exchange()
        swaps += 2
    print(swaps, flush=True)


if __name__ == "__main__":
    main()
