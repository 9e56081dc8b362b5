"""``vecna-async worker --processes N``: N single-process workers, each restarted when it dies.

The children are ``vecna-async worker`` processes of their own (``--supervised``), named
``<name>-<i>``. A child that dies -- a task that called ``os._exit``, a segfault, the OOM killer
-- is started again after a second. A child that could not start (its configuration, credentials
or Redis version are wrong: it exits with ``BOOT_ERROR`` after printing why) would fail the same
way every time, so then the supervisor stops the others and exits with status 1 instead of
restarting it for ever. SIGTERM/SIGINT are passed on once: every child drains gracefully.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("vecna_async.cli")
BOOT_ERROR = 3
"""Exit status of a supervised child that could not start (as gunicorn's worker boot error)."""


def supervise(
    child_argv: Sequence[str],
    processes: int,
    name: str,
    per_child: Callable[[int], Sequence[str]] | None = None,
) -> int:
    """Run ``processes`` children (``child_argv`` plus ``--name <name>-<i>`` and what
    ``per_child(i)`` adds) until a signal. A restarted child gets the same arguments."""

    def spawn(i: int) -> subprocess.Popen[bytes]:
        # Own process group: a Ctrl-C in the terminal reaches the children only through us,
        # once, instead of twice (which a worker would take as "skip the grace period").
        argv = [sys.executable, "-m", "vecna_async", *child_argv, "--name", f"{name}-{i}"]
        argv += per_child(i) if per_child is not None else ()
        return subprocess.Popen(argv, process_group=0)

    children = {i: spawn(i) for i in range(processes)}
    stopping = False
    status = 0

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:
        for i, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            if stopping:
                del children[i]
            elif code == BOOT_ERROR:
                del children[i]
                status = 1
                stop(signal.SIGTERM, None)  # it printed why; the others would fail alike
            else:
                log.warning("worker process %d exited with %s; restarting it", child.pid, code)
                time.sleep(1.0)
                children[i] = spawn(i)
        time.sleep(0.2)
    return status


def default_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"
