"""The command line: ``vecna-async worker pkg.module:server [options]``, ``vecna-async check``,
and the operator's commands (``inspect``, ``queues``, ``workers``, ``running``, ``delayed``,
``periodic``, ``dead-letters``, ``task``, ``dashboard``: ``cli_inspect.py``).

``python -m vecna_async ...`` is the same. Exit status: 0 done (or healthy); 1 an error at start
(a VecnaError: a bad setting, credentials Redis refuses, an unsupported Redis, Redis unreachable
past ``--startup-timeout``) or an unhealthy check, as one line without a traceback; 2 a usage
error (a bad ``module:attribute``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

import anyio
import msgspec

from vecna_async import logs
from vecna_async.config import Config
from vecna_async.exceptions import VecnaError
from vecna_async.memory import refuse_other_process
from vecna_async.server import Server
from vecna_async.supervisor import BOOT_ERROR, default_name, supervise

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
    refuse_other_process(obj.config.broker, obj.config.result_backend)
    return obj


def target_server(args: argparse.Namespace) -> Server:
    """TARGET (``pkg.module:server``) or ``--broker URL`` (then the rest of the configuration
    comes from the ``VECNA_*`` environment, as ``Config.from_env``)."""
    if bool(args.target) == bool(args.broker):
        raise CliError("give the Server as pkg.module:server, or a Redis URL with --broker")
    if args.broker:
        server = Server(msgspec.structs.replace(Config.from_env(), broker=args.broker))
        refuse_other_process(server.config.broker, server.config.result_backend)
        return server
    return load_server(args.target)


def run_async(main: object) -> None:
    """Run a coroutine function under asyncio, with uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    anyio.run(main, backend="asyncio", backend_options=options)  # type: ignore[arg-type]


def setup_logging(args: argparse.Namespace) -> None:
    """After the app was imported, so its own logging setup (if any) is left alone."""
    if args.no_log_config:
        return
    if not logs.configure(args.log_level or "INFO", args.log_format) and args.log_level:
        logging.getLogger("vecna_async").setLevel(args.log_level.upper())


def worker_command(args: argparse.Namespace) -> int:
    server = load_server(args.target)
    setup_logging(args)
    name = args.name or default_name()
    port = args.metrics_port
    if port is not None:
        try:
            from vecna_async.integrations import prometheus
        except ImportError as exc:  # the extra is missing: say how to get it
            print(f"vecna-async: error: --metrics-port: {exc}", file=sys.stderr)
            return BOOT_ERROR if args.supervised else 1
    if args.processes is not None:
        # one endpoint per child, on consecutive ports: child i serves port + i
        metrics = (lambda i: ["--metrics-port", str(port + i)]) if port is not None else None
        return supervise(child_argv(args), args.processes, name, metrics)
    worker = server.new_worker(
        name, args.concurrency, queues=args.queue or None, scheduler=not args.no_scheduler
    )
    worker.startup_timeout = args.startup_timeout
    launch = worker.launch
    if port is not None:
        launch = lambda: prometheus.run_worker_with_metrics(server, worker, port)  # noqa: E731
    try:
        run_async(launch)
    except VecnaError as exc:
        if not args.supervised:
            raise
        print(f"vecna-async: error: {exc}", file=sys.stderr)
        return BOOT_ERROR
    return 0


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line of one supervised worker process (``--name`` is added per child)."""
    argv = ["worker", args.target, "--supervised", "--concurrency", str(args.concurrency)]
    for queue in args.queue or ():
        argv += ["--queue", queue]
    if args.no_scheduler:
        argv.append("--no-scheduler")
    if args.startup_timeout is not None:
        argv += ["--startup-timeout", str(args.startup_timeout)]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    if args.no_log_config:
        argv.append("--no-log-config")
    return [*argv, "--log-format", args.log_format]


def check_command(args: argparse.Namespace) -> int:
    from vecna_async.health import check

    server = target_server(args)
    if args.log_level:
        setup_logging(args)
    verdict = anyio.run(
        lambda: check(server, worker=args.worker, any_worker=args.any_worker, timeout=args.timeout)
    )
    if verdict.healthy:
        print(f"ok: {verdict.line}")
        return 0
    print(f"vecna-async: check failed: {verdict.line}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    from vecna_async.cli_inspect import CommandParser, add_inspect_commands  # (imports this)

    parser = argparse.ArgumentParser(prog="vecna-async", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    w = sub.add_parser("worker", help="run a worker for the Server at pkg.module:attribute")
    w.add_argument("target", help="where the Server is, e.g. myapp.tasks:server")
    w.add_argument("--concurrency", "-c", type=int, default=10, help="tasks at once (0 = no limit)")
    w.add_argument(
        "--queue",
        "-q",
        action="append",
        help="a queue to consume; repeat it for several, served in strict order (the first is "
        "drained before the next gets a slot); default_queue if none",
    )
    w.add_argument("--name", "-n", default="", help="worker name (default: host-pid)")
    w.add_argument(
        "--processes",
        "-p",
        type=positive_int,
        default=None,
        help="run N worker processes under a supervisor that restarts any that dies (also for "
        "N=1); without it the worker runs in this process, and nothing restarts it if it dies",
    )
    w.add_argument("--no-scheduler", action="store_true", help="do not run a scheduler here")
    w.add_argument(
        "--startup-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit with status 1 if Redis cannot be reached within this many seconds of "
        "starting (default: wait as long as it takes); a running worker always waits outages out",
    )
    w.add_argument(
        "--metrics-port",
        type=port_number,
        default=None,
        metavar="N",
        help="serve Prometheus metrics on http://0.0.0.0:N/metrics (needs the prometheus extra); "
        "with --processes, worker <name>-i (i from 0) serves port N+i",
    )
    add_logging_options(w)
    w.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    w.set_defaults(func=worker_command)

    c = sub.add_parser(
        "check",
        help="exit 0 if Redis answers (and a worker is alive), 1 otherwise: a health probe",
    )
    c.add_argument("target", nargs="?", default="", help="pkg.module:server (or use --broker)")
    c.add_argument("--broker", default="", help="a Redis URL instead of TARGET (other settings "
                   "from VECNA_* variables)")  # fmt: skip
    who = c.add_mutually_exclusive_group()
    who.add_argument("--worker", metavar="NAME", help="a live worker of this name (glob: 'web-*')")
    who.add_argument("--any-worker", action="store_true", help="any live worker")
    c.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default 5")
    c.add_argument("--log-level", default=None, help=argparse.SUPPRESS)
    c.set_defaults(func=check_command, no_log_config=False, log_format="text")
    add_inspect_commands(sub)
    return parser


def add_logging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO (the default), WARNING ...; with the app's own logging setup, the "
        "level of the vecna_async loggers",
    )
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="text (default) or json"
    )
    p.add_argument(
        "--no-log-config",
        action="store_true",
        help="leave logging to the app (by default it is set up only if the app did not)",
    )


def port_number(value: str) -> int:
    n = int(value)
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError(f"a TCP port is 1 to 65535, got {n}")
    return n


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"vecna-async: error: {exc}", file=sys.stderr)
        return 2
    except VecnaError as exc:  # at startup: a bad setting, refused credentials, old Redis ...
        print(f"vecna-async: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
