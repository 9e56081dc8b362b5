"""The operator's commands: ``inspect``, ``queues``, ``workers``, ``running``, ``delayed``,
``periodic``, ``dead-letters``, ``task`` and ``dashboard`` (``cli.py`` registers them).

Each takes TARGET (``pkg.module:server``) or ``--broker URL`` (the other settings from ``VECNA_*``
variables), reads through ``server.inspect()`` and prints aligned tables, or JSON with
``--json``. Only ``periodic cancel``, ``delayed cancel`` and ``dead-letters requeue|purge``
change anything. Exit status: 0 done; 1 Redis could not be reached or refused (within
``--timeout``), or what was asked for does not exist (an unknown task id or code); 2 a usage
error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import anyio

from vecna_async.cli import CliError, target_server
from vecna_async.config import mask_url
from vecna_async.inspection import tables
from vecna_async.inspection.inspector import Inspector
from vecna_async.inspection.types import to_json

T = TypeVar("T")
Command = Callable[[Inspector, argparse.Namespace], Awaitable[int]]
ACTIONS = {"delayed": ("cancel",), "periodic": ("cancel",), "dead-letters": ("requeue", "purge")}

EXAMPLES = """\
examples:
  vecna-async inspect myapp.tasks:server                  queues, workers, periodic entries
  vecna-async inspect --broker redis://redis:6379/0 --json
  vecna-async queues myapp.tasks:server --queue emails    also a queue no live worker consumes
  vecna-async running myapp.tasks:server                  what runs where, lease deadlines
  vecna-async delayed myapp.tasks:server --limit 20
  vecna-async delayed cancel myapp.tasks:server 3f2c9a...
  vecna-async periodic myapp.tasks:server
  vecna-async periodic cancel myapp.tasks:server nightly-report
  vecna-async dead-letters myapp.tasks:server --queue emails
  vecna-async dead-letters requeue myapp.tasks:server --queue emails 3f2c9a... 8d01e2...
  vecna-async dead-letters purge myapp.tasks:server --queue emails --all
  vecna-async task myapp.tasks:server 3f2c9a...
  vecna-async dashboard myapp.tasks:server --port 8080    read-only web page, no auth

TARGET is pkg.module:server, or leave it out and give --broker URL (the other settings, such as
VECNA_REDIS_KEY_PREFIX, come from the environment). Exit status: 0 done, 1 Redis unreachable
or nothing found, 2 usage error.
"""


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose positionals may come between options when ``intermixed`` is set:
    ``dead-letters requeue TARGET --queue Q ID ID`` (a plain parse takes only the positionals
    before the first option). ``cli.py`` makes every subcommand's parser one; only the commands
    with free words (IDs, a CODE) turn it on."""

    intermixed = False
    _inside = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if not self.intermixed or self._inside:  # (the intermixed parse calls this twice)
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


@dataclass(frozen=True)
class Spec:
    """One command: its name, help, what ``--queue`` means to it, and its positionals: TARGET
    only (``words`` None) or free words (an action, TARGET, IDs or a CODE) shown as ``words``."""

    name: str
    run: Command
    help: str
    queue_help: str
    words: str | None = None
    paged: bool = False
    usage: str | None = None


def _specs() -> list[Spec]:
    every = "this queue only (default: every known queue)"
    return [
        Spec("inspect", _inspect, "one screen: queues, workers, periodic entries",
             "show this queue too (it may repeat)"),
        Spec("queues", _queues, "message counts of each known queue",
             "only this queue (it may repeat); shown even if not known"),
        Spec("workers", _workers, "the live workers", "only workers consuming this queue"),
        Spec("running", _running, "tasks running now, with their worker and lease deadline",
             every, paged=True),
        Spec("delayed", _delayed, "tasks waiting for their ETA or retry; 'cancel' one",
             f"{every}; cancel: the queue that holds the id", "[cancel] TARGET [ID ...]", True,
             "vecna-async delayed [cancel] (TARGET | --broker URL) [ID ...] [--queue Q] [--json]"),
        Spec("periodic", _periodic, "periodic entries, next and last fire; 'cancel' one by code",
             "only entries sending to this queue", "[cancel] TARGET [CODE]",
             usage="vecna-async periodic [cancel] (TARGET | --broker URL) [CODE] [--json]"),
        Spec("dead-letters", _dead, "dead letters with their reason; 'requeue' or 'purge' them",
             f"{every}; requeue/purge: default_queue unless given",
             "[requeue|purge] TARGET [ID ...]", True,
             "vecna-async dead-letters [requeue|purge] (TARGET | --broker URL) [--queue Q] "
             "[ID ... | --all] [--json]"),
        Spec("task", _task, "one task by id: state, arguments, result or error, where it is",
             "the task's queue (default: search the known queues)", "TARGET ID",
             usage="vecna-async task (TARGET | --broker URL) ID [--queue Q] [--json]"),
        Spec("dashboard", _dashboard, "serve a read-only web page of the inspect tables",
             "show this queue too (it may repeat)"),
    ]  # fmt: skip


def add_inspect_commands(sub: Any) -> None:
    """Register the commands on the ``vecna-async`` subparsers (made with ``CommandParser``)."""
    for spec in _specs():
        p = sub.add_parser(
            spec.name,
            help=spec.help,
            description=spec.help,
            usage=spec.usage,
            epilog=EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=lambda args, run=spec.run: _run(args, run))
        if spec.words is None:
            p.add_argument("target", nargs="?", default="", help="pkg.module:server")
        else:
            p.add_argument("words", nargs="*", metavar=spec.words, help=argparse.SUPPRESS)
            p.intermixed = True
        p.add_argument("--broker", default="", metavar="URL", help="a Redis URL instead of TARGET")
        p.add_argument("--queue", "-q", action="append", metavar="Q", help=spec.queue_help)
        p.add_argument(
            "--timeout", type=float, default=10.0, metavar="SECONDS",
            help="give up (status 1) if Redis does not answer within this long (default 10)",
        )  # fmt: skip
        if spec.name == "dashboard":
            _dashboard_options(p)
            continue
        p.add_argument("--json", action="store_true", help="print JSON (times in ISO 8601 UTC)")
        if spec.paged:
            p.add_argument(
                "--offset", type=_count, default=0, metavar="N", help="skip this many (per queue)"
            )
            p.add_argument(
                "--limit", type=_count, default=100, metavar="N", help="at most this many (100)"
            )
        if spec.name == "dead-letters":
            p.add_argument("--all", action="store_true", help="requeue/purge every dead letter")


def _dashboard_options(p: Any) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    p.add_argument(
        "--refresh", type=float, default=2.0, metavar="SECONDS", help="page refresh (default 2)"
    )


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _split(args: argparse.Namespace, actions: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[action] [TARGET] rest...`` of a command whose positionals are free words."""
    words = list(args.words)
    action = words.pop(0) if words and words[0] in actions else None
    # without --broker the next word is TARGET; none at all: target_server says what to give
    args.target = words.pop(0) if words and not args.broker else ""
    return action, words


def _run(args: argparse.Namespace, run: Command) -> int:
    if hasattr(args, "words"):
        args.action, args.rest = _split(args, ACTIONS.get(args.command, ()))
    server = target_server(args)
    timeout = None if run is _dashboard else args.timeout  # the dashboard runs until stopped

    async def main() -> int:
        async with server:
            with anyio.fail_after(timeout):
                return await run(server.inspect(args.queue or ()), args)

    try:
        return anyio.run(main)
    except TimeoutError:
        _error(f"error: Redis at {mask_url(server.config.broker)} did not answer within "
               f"{args.timeout:g}s")  # fmt: skip
        return 1
    except ValueError as exc:  # a task id or queue name no key could hold
        raise CliError(str(exc)) from None


def _error(line: str) -> None:
    print(f"vecna-async: {line}", file=sys.stderr)


def _print_json(value: object) -> None:
    sys.stdout.write(to_json(value).decode() + "\n")


# -- read-only commands ---------------------------------------------------------------------------


async def _inspect(insp: Inspector, args: argparse.Namespace) -> int:
    snap = await insp.snapshot()
    if args.json:
        _print_json(snap)
    else:
        sys.stdout.write(tables.render_text(tables.snapshot_tables(snap)))
    return 0


async def _queues(insp: Inspector, args: argparse.Namespace) -> int:
    queues = await insp.queues()
    if args.queue:
        queues = [q for q in queues if q.name in args.queue]
    return await _show(insp, args, queues, lambda items, _: tables.queues_table(items))


async def _workers(insp: Inspector, args: argparse.Namespace) -> int:
    workers = await insp.workers()
    if args.queue:
        workers = [w for w in workers if set(w.queues) & set(args.queue)]
    return await _show(insp, args, workers, tables.workers_table)


async def _running(insp: Inspector, args: argparse.Namespace) -> int:
    return await _show(insp, args, await _pages(insp, args, insp.running), tables.running_table)


async def _task(insp: Inspector, args: argparse.Namespace) -> int:
    if len(args.rest) != 1:
        raise CliError("task: give one task ID")
    if args.queue and len(args.queue) > 1:
        raise CliError("task: give at most one --queue")
    (task_id,) = args.rest
    info = await insp.task(task_id, args.queue[0] if args.queue else None)
    if info is None:
        where = f"queue {args.queue[0]!r}" if args.queue else "the known queues"
        _error(f"no task {task_id} in {where} (never sent, or its result expired)")
        return 1
    if args.json:
        _print_json(info)
    else:
        sys.stdout.write(tables.task_text(info, await insp.now()))
    return 0


async def _pages(
    insp: Inspector, args: argparse.Namespace, page: Callable[[str, int, int], Awaitable[list[T]]]
) -> list[T]:
    """One page (``--offset``, ``--limit``) of each ``--queue``, or of each known queue."""
    found: list[T] = []
    for queue in args.queue or await insp.queue_names():
        found += await page(queue, args.offset, args.limit)
    return found


async def _show(
    insp: Inspector,
    args: argparse.Namespace,
    items: list[T],
    table: Callable[[list[T], datetime], tables.Table],
) -> int:
    """Print ``items`` as JSON, or as their table (times relative to Redis's clock)."""
    if args.json:
        _print_json(items)
    else:
        sys.stdout.write(tables.render_text([table(items, await insp.now())]))
    return 0


# -- commands with an action ----------------------------------------------------------------------


async def _delayed(insp: Inspector, args: argparse.Namespace) -> int:
    if args.action == "cancel":
        return await _cancel_delayed(insp, args)
    _no_rest(args, "delayed")
    return await _show(insp, args, await _pages(insp, args, insp.delayed), tables.delayed_table)


async def _cancel_delayed(insp: Inspector, args: argparse.Namespace) -> int:
    if not args.rest:
        raise CliError("delayed cancel: give the ID of the task to cancel")
    if args.queue and len(args.queue) > 1:
        raise CliError("delayed cancel: give at most one --queue")
    status = 0
    for task_id in args.rest:
        queue = args.queue[0] if args.queue else await insp.find_queue(task_id)
        if queue is None:
            _error(f"no task {task_id} in the known queues; give its --queue")
            status = 1
        elif await insp.cancel_delayed(queue, task_id):
            print(f"canceled {task_id} in queue {queue!r}: it will not run")
        else:
            info = await insp.task(task_id, queue)
            state = f"it is {info.state.value}" if info else "no such task there"
            _error(f"{task_id} in queue {queue!r} was not canceled: {state}")
            status = 1
    return status


async def _periodic(insp: Inspector, args: argparse.Namespace) -> int:
    if args.action == "cancel":
        if len(args.rest) != 1:
            raise CliError("periodic cancel: give one CODE")
        (code,) = args.rest
        if await insp.cancel_periodic(code):
            print(f"canceled periodic entry {code!r}: no later tick fires")
            return 0
        _error(f"no periodic entry {code!r}")
        return 1
    _no_rest(args, "periodic")
    entries = await insp.periodic()
    if args.queue:
        entries = [p for p in entries if set(p.queues) & set(args.queue)]
    return await _show(insp, args, entries, tables.periodic_table)


async def _dead(insp: Inspector, args: argparse.Namespace) -> int:
    if args.action is None:
        _no_rest(args, "dead-letters")
        if args.all:
            raise CliError("dead-letters: --all goes with requeue or purge")
        letters = await _pages(insp, args, insp.dead_letters)
        return await _show(insp, args, letters, tables.dead_letters_table)
    if bool(args.rest) == bool(args.all):
        raise CliError(f"dead-letters {args.action}: give the IDs, or --all (not both)")
    if args.queue and len(args.queue) > 1:
        raise CliError(f"dead-letters {args.action}: give at most one --queue")
    queue = args.queue[0] if args.queue else insp.default_queue
    ids = args.rest or None
    if args.action == "requeue":
        n = await insp.requeue_dead_letters(queue, ids)
        print(f"requeued {n} dead letter(s) of queue {queue!r}")
    else:
        n = await insp.purge_dead_letters(queue, ids)
        print(f"purged {n} dead letter(s) of queue {queue!r}")
    if ids is not None and n < len(ids):
        _error(f"{len(ids) - n} of the {len(ids)} ids are not dead letters of queue {queue!r}")
        return 1
    return 0


def _no_rest(args: argparse.Namespace, command: str) -> None:
    if args.rest:
        raise CliError(f"{command}: unexpected {' '.join(args.rest)!r}")


async def _dashboard(insp: Inspector, args: argparse.Namespace) -> int:
    from vecna_async.inspection.dashboard import serve

    await serve(insp, args.host, args.port, refresh=args.refresh, redis_timeout=args.timeout)
    return 0
