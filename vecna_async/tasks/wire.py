"""Between the user's ``Signature`` and the wire's ``TaskMessage``.

``prepare`` turns a Signature into a TaskMessage (ids, codes and queues filled in, recursively for
callbacks, so a chain's last id is known when it is sent) and ``outgoing`` turns a TaskMessage into
what the broker stores. ``to_signature`` goes back, for pending-task listings and error handlers.

What the sending Server knows about its own tasks (``KnownTasks``: the registry) applies at
``prepare``: each task's registered options fill the Signature fields it leaves at their defaults,
and its plain arguments are checked against the function's annotations.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from vecna_async.exceptions import MessageTooLarge
from vecna_async.keys import check_name
from vecna_async.messages import CHORD_RESULTS_MARK, State, TaskMessage, TaskState, encode
from vecna_async.signing import Signer, signed_body
from vecna_async.tasks.args import unencodable
from vecna_async.tasks.limits import limits_spec
from vecna_async.tasks.options import apply_options
from vecna_async.tasks.signature import Arg, Signature
from vecna_async.tasks.workflows import Chain, Chord

if TYPE_CHECKING:
    from vecna_async.broker.base import Broker

log = logging.getLogger("vecna_async.producer")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class Outgoing:
    """One message ready for the broker's enqueue script."""

    queue: str
    id: str
    name: str
    body: bytes
    priority: int
    due_ms: int
    ignore_unregistered: bool
    reply_to: str
    limits: str = ""

    @property
    def flags(self) -> str:
        """What the enqueue script stores as the record's 'i' and 'l' fields: the
        ignore-if-unregistered flag, then the limits (``tasks.limits``) if any."""
        return f"{int(self.ignore_unregistered)}{self.limits}"

    @property
    def pending_state(self) -> bytes:
        """Its PENDING state, for a result backend on another Redis (on the broker's, PENDING
        is derived from the message record and never stored)."""
        return encode(TaskState(task_id=self.id, state=State.PENDING, task_name=self.name))


def eta_ms(eta: datetime | None) -> int:
    """Epoch milliseconds of an ETA; a naive datetime is taken as UTC; None is 0 (now)."""
    if eta is None:
        return 0
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)
    return int(eta.timestamp() * 1000)


class KnownTasks(Protocol):
    """What a sending Server knows about the tasks it registered (``TaskRegistry``)."""

    def options_of(self, name: str) -> Mapping[str, Any]: ...

    def check_arguments(
        self, name: str, args: list[Any], kwargs: dict[str, Any], *, positional: bool = True
    ) -> None: ...


def prepare(
    sig: Signature,
    default_queue: str,
    reply_to: str = "",
    known: KnownTasks | None = None,
    *,
    args_first: bool = True,
) -> TaskMessage:
    """Fill in ``sig.id``/``sig.code`` (as the seed does) and ``sig.routing_key`` (the queue it goes
    to), and build its TaskMessage.

    With ``known``, the task's registered options fill the fields ``sig`` leaves at their
    defaults (``sig`` shows what was sent, as its id does), and its arguments are checked
    (ArgumentTypeError). ``args_first=False``: values will be put before its own args (an
    ``on_success`` or ``on_error`` callback), so only its keywords can be checked."""
    if known is not None:
        options = known.options_of(sig.name)
        if options:
            apply_options(sig, options)
        known.check_arguments(sig.name, sig.args, sig.kwargs, positional=args_first)
    if sig.id is None:
        sig.id = new_id()
    check_name("task id", sig.id)
    if not sig.code:
        sig.code = sig.group_id or sig.id
    if not sig.routing_key:  # filled in as the id is: the Signature shows where it went
        sig.routing_key = default_queue
    args: list[object] = []
    arg_types: list[str] = []
    arg_names: list[str] = []
    for a in sig.args:
        typed = isinstance(a, Arg)
        args.append(a.value if typed else a)
        arg_types.append(a.type if typed else "")
        arg_names.append(a.name if typed else "")

    def child(s: Signature, args_first: bool = True) -> TaskMessage:
        return prepare(s, default_queue, reply_to, known, args_first=args_first)

    return TaskMessage(
        id=sig.id,
        name=sig.name,
        queue=sig.routing_key,
        args=args,
        arg_types=arg_types if any(arg_types) else [],
        arg_names=arg_names if any(arg_names) else [],
        kwargs=sig.kwargs,
        eta_ms=eta_ms(sig.eta),
        retry_count=sig.retry_count,
        retry_timeout=sig.retry_timeout,
        on_success=[child(s, sig.immutable or s.immutable) for s in sig.on_success],
        on_error=[child(s, False) for s in sig.on_error],
        chord_callback=child(sig.chord_callback) if sig.chord_callback else None,
        group_id=sig.group_id,
        group_task_count=sig.group_task_count,
        immutable=sig.immutable,
        priority=sig.priority,
        headers=sig.headers,
        ignore_when_task_not_registered=sig.ignore_when_task_not_registered,
        code=sig.code,
        spec=sig.spec,
        concurrency_limit=sig.concurrency_limit,
        rate_limit=sig.rate_limit,
        timeout=sig.timeout or 0.0,
        reply_to=reply_to,
    )


def prepare_chain(
    chain: Chain, default_queue: str, reply_to: str = "", known: KnownTasks | None = None
) -> TaskMessage:
    """The chain's first message, with every later link nested as ``chain_next`` (a link's
    own args come first: the previous result is appended)."""
    msgs = [prepare(s, default_queue, reply_to, known) for s in chain.tasks]
    head = msgs[-1]
    for m in reversed(msgs[:-1]):
        head = msgspec.structs.replace(m, chain_next=head)
    return head


def prepare_chord(
    chord: Chord, default_queue: str, reply_to: str = "", known: KnownTasks | None = None
) -> list[TaskMessage]:
    """The chord's member messages, each carrying the callback and its index in the group."""
    callback = prepare(chord.callback, default_queue, reply_to, known)
    members = []
    for i, sig in enumerate(chord.group.tasks):
        msg = prepare(sig, default_queue, reply_to, known)
        members.append(msgspec.structs.replace(msg, chord_callback=callback, group_index=i))
    return members


def split_for_results(callback: TaskMessage, signer: Signer | None = None) -> tuple[bytes, bytes]:
    """The callback's encoded body, split where the chord's results go (appended to its args).

    The Lua side joins the members' encoded results with commas and puts them in between, so
    results are never decoded or re-encoded there (Lua's JSON would lose 64-bit integers). With a
    ``signer`` the body is a signed template: ``chord_args`` counts the args before the results,
    and the signature covers the body with the placeholder in the results' place (the results
    themselves cannot be covered: see ``vecna_async.signing``).
    """
    template = msgspec.structs.replace(callback, args=[*callback.args, CHORD_RESULTS_MARK])
    if signer is None:
        body = encode(template)
    else:
        template = msgspec.structs.replace(template, chord_args=len(callback.args))
        body = signed_body(template, signer)
    prefix, _, suffix = body.partition(encode(CHORD_RESULTS_MARK))
    return prefix, suffix


def outgoing(msg: TaskMessage, max_bytes: int, signer: Signer | None = None) -> Outgoing:
    """Encode a message for the broker (signed when there is a ``signer``); refuse one over
    ``max_bytes``, or one msgspec cannot encode (ArgumentTypeError naming the task and the
    argument), before anything is sent."""
    try:
        body = encode(msg) if signer is None else signed_body(msg, signer)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise _unencodable_part(msg, exc) from None
    if len(body) > max_bytes:
        raise MessageTooLarge(msg.name, len(body), max_bytes)
    due = msg.eta_ms if msg.eta_ms > time.time() * 1000 else 0
    return Outgoing(
        queue=msg.queue,
        id=msg.id,
        name=msg.name,
        body=body,
        priority=msg.priority,
        due_ms=due,
        ignore_unregistered=msg.ignore_when_task_not_registered,
        reply_to=msg.reply_to,
        limits=limits_spec(msg.concurrency_limit, msg.rate_limit)
        if msg.concurrency_limit or msg.rate_limit
        else "",
    )


def _unencodable_part(msg: TaskMessage, exc: Exception) -> TypeError:
    """Which argument (of which task: callbacks included) msgspec cannot encode."""
    for m in walk([msg]):
        values: list[tuple[int | str, Any]] = [*enumerate(m.args), *m.kwargs.items()]
        for index, value in values:
            try:
                encode(value)
            except (TypeError, ValueError, msgspec.EncodeError) as bad:
                return unencodable(m.name, index, value, bad)
        try:
            encode(m.headers)
        except (TypeError, ValueError, msgspec.EncodeError) as bad:
            return TypeError(f"task {m.name!r}: headers: msgspec cannot encode them ({bad})")
    return TypeError(f"task {msg.name!r}: msgspec cannot encode the message ({exc})")


async def publish(
    broker: Broker,
    messages: Sequence[TaskMessage],
    max_bytes: int,
    *,
    concurrency: int = 0,
    signer: Signer | None = None,
) -> None:
    """Encode (and sign, with a ``signer``) and check every message first (nothing is sent if one
    is too large), then enqueue them ``concurrency`` at a time (0: all in one call per queue)."""
    out = [outgoing(m, max_bytes, signer) for m in messages]
    size = concurrency or len(out) or 1
    for start in range(0, len(out), size):
        chunk = out[start : start + size]
        await broker.publish(chunk)
        if log.isEnabledFor(logging.DEBUG):
            for m in chunk:
                _log_sent(m)


def _log_sent(m: Outgoing) -> None:
    """The DEBUG line of a task that became PENDING."""
    fields = {"task_id": m.id, "task_name": m.name, "queue": m.queue}
    if m.due_ms:
        due = datetime.fromtimestamp(m.due_ms / 1000, UTC).isoformat(timespec="milliseconds")
        log.debug("task %s (%s) sent to %r, due %s", m.name, m.id, m.queue, due, extra=fields)
    else:
        log.debug("task %s (%s) sent to %r", m.name, m.id, m.queue, extra=fields)


def walk(messages: Sequence[TaskMessage]) -> Iterator[TaskMessage]:
    """Every message of a workflow, nested callbacks and chain links included."""
    for m in messages:
        yield m
        yield from walk(m.on_success)
        yield from walk(m.on_error)
        if m.chain_next is not None:
            yield from walk([m.chain_next])
        if m.chord_callback is not None:
            yield from walk([m.chord_callback])


def to_signature(msg: TaskMessage) -> Signature:
    """The Signature a TaskMessage came from (typed args come back as ``Arg``)."""
    args: list[object] = list(msg.args)
    names = msg.arg_names + [""] * (len(args) - len(msg.arg_names))
    for i, t in enumerate(msg.arg_types):
        if t and i < len(args):
            args[i] = Arg(t, args[i], names[i])
    return Signature(
        msg.name,
        args=args,
        kwargs=dict(msg.kwargs),
        eta=datetime.fromtimestamp(msg.eta_ms / 1000, UTC) if msg.eta_ms else None,
        retry_count=msg.retry_count,
        retry_timeout=msg.retry_timeout,
        on_success=[to_signature(m) for m in msg.on_success],
        on_error=[to_signature(m) for m in msg.on_error],
        immutable=msg.immutable,
        routing_key=msg.queue,
        priority=msg.priority,
        headers=dict(msg.headers),
        ignore_when_task_not_registered=msg.ignore_when_task_not_registered,
        id=msg.id,
        code=msg.code,
        group_id=msg.group_id,
        group_task_count=msg.group_task_count,
        chord_callback=to_signature(msg.chord_callback) if msg.chord_callback else None,
        spec=msg.spec,
        concurrency_limit=msg.concurrency_limit,
        rate_limit=msg.rate_limit,
        timeout=msg.timeout or None,
    )
