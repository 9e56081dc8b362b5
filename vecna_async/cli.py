"""The command line: ``vecna-async worker pkg.module:server [options]``.

``python -m vecna_async worker ...`` is the same. ``--processes N`` starts N worker processes and
restarts any that dies; SIGTERM/SIGINT stops them all gracefully.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import anyio

from vecna_async.exceptions import VecnaError
from vecna_async.server import Server

log = logging.getLogger("vecna_async.cli")


class CliError(Exception):
    """A user error on the command line: printed without a traceback, exit status 2."""


def load_server(target: str) -> Server:
    """Import ``pkg.module:attribute`` and return the Server it names."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise CliError(f"expected 'pkg.module:server', got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: the current directory is importable
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CliError(f"cannot import module {module_name!r}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Server):
        raise CliError(f"{target!r} is a {type(obj).__name__}, not a vecna_async.Server")
    return obj


def run_async(main: object) -> None:
    """Run a coroutine function under asyncio, with uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    anyio.run(main, backend="asyncio", backend_options=options)  # type: ignore[arg-type]


def worker_command(args: argparse.Namespace) -> int:
    server = load_server(args.target)
    if args.processes > 1:
        return supervise(args)
    worker = server.new_worker(
        args.name or f"{os.uname().nodename}-{os.getpid()}",
        args.concurrency,
        queue=args.queue,
        scheduler=not args.no_scheduler,
    )
    run_async(worker.launch)
    return 0


def supervise(args: argparse.Namespace) -> int:
    """Keep ``--processes`` single-process workers running; stop them all on a signal."""
    base = [sys.executable, "-m", "vecna_async", "worker", args.target, "--processes", "1"]
    base += ["--concurrency", str(args.concurrency), "--log-level", args.log_level]
    if args.queue:
        base += ["--queue", args.queue]
    if args.no_scheduler:
        base.append("--no-scheduler")
    name = args.name or f"{os.uname().nodename}-{os.getpid()}"

    def spawn(i: int) -> subprocess.Popen[bytes]:
        # Own process group: a Ctrl-C in the terminal reaches the children only through us,
        # once, instead of twice (which a worker would take as "skip the grace period").
        return subprocess.Popen([*base, "--name", f"{name}-{i}"], process_group=0)

    children = {i: spawn(i) for i in range(args.processes)}
    stopping = False

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
            else:
                log.warning("worker process %d exited with %s; restarting it", child.pid, code)
                time.sleep(1.0)
                children[i] = spawn(i)
        time.sleep(0.2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vecna-async", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a worker for the Server at pkg.module:attribute")
    w.add_argument("target", help="where the Server is, e.g. myapp.tasks:server")
    w.add_argument("--concurrency", "-c", type=int, default=10, help="tasks at once (0 = no limit)")
    w.add_argument("--queue", "-q", default=None, help="queue to consume (default_queue if unset)")
    w.add_argument("--name", "-n", default="", help="worker name (default: host-pid)")
    w.add_argument("--processes", "-p", type=int, default=1, help="worker processes to run")
    w.add_argument("--no-scheduler", action="store_true", help="do not run a scheduler here")
    w.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ...")
    w.set_defaults(func=worker_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"vecna-async: error: {exc}", file=sys.stderr)
        return 2
    except VecnaError as exc:  # at startup: a bad setting, an unsupported Redis ...
        print(f"vecna-async: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
