"""Run a command that ends with the process that started it, however that process ends.

    python lifeline.py COMMAND [ARG...]    (stdin: a pipe whose write end only the starter holds)

The embedded database is started through this script (models/embedded.py). It forks a
watcher, then becomes COMMAND by exec, so the starter waits on and signals the command's
own pid. The watcher blocks on stdin: every end of a pipe closes when its process dies,
even by SIGKILL, so end-of-file means the starter is gone, and the command then gets one
SIGTERM (on which the database writes its files out). The watcher also goes when the
command ends by itself.

Why not PR_SET_PDEATHSIG (`setpriv --pdeathsig`): when a multi-threaded starter dies, the
child is handed from each dying thread to the next and signalled every time, and the
database's SIGTERM handler deadlocks when a second SIGTERM lands while it handles the first.

Standard library only: it runs before, and apart from, the app's imports.
"""

from __future__ import annotations

import os
import select
import signal
import sys


def main(argv: list[str]) -> int:
    command = argv[1:]
    if not command:
        print("usage: lifeline.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    target = os.getpid()
    if os.fork() == 0:
        _watch(target)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # only the watcher keeps the lifeline's read end
    os.close(devnull)
    os.execvp(command[0], command)
    return 1  # not reached: exec replaced this process


def _watch(target: int) -> None:
    """Until the starter's end of stdin closes (then one SIGTERM to `target`) or `target` ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it answers to the pipe alone
    while True:
        ready, _, _ = select.select([0], [], [], 1.0)
        if os.getppid() != target:  # the command ended and this watcher was handed on
            os._exit(0)
        if ready and not os.read(0, 512):
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass
            os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
