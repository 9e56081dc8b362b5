"""What follows from a run's outcome: final states, and the messages and states it sends on.

A success sends its ``on_success`` callbacks (the results prepended to their args) and its
chain's next link (the results appended), and records its chord member's results (the last one
sends the callback, in Redis). A final failure sends its ``on_error`` callbacks (the error
string first), fails the later links of its chain and its chord's callback. Everything is built
here, encoded (and signed), and handed to the Flusher with the outcome, so it is enqueued by the
same settle call that acks the message.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from vecna_async.broker.base import ChordFailure, ChordSuccess, Claimed, Done, ExtraState
from vecna_async.keys import Keys
from vecna_async.messages import State, TaskMessage, TaskState, encode
from vecna_async.signing import Signer
from vecna_async.tasks.wire import Outgoing, outgoing, split_for_results

log = logging.getLogger("vecna_async.worker")


def final_state(task_id: str, name: str, state: State, *, error: str = "", tb: str = "") -> bytes:
    """An encoded TaskState without results."""
    return encode(
        TaskState(task_id=task_id, state=state, task_name=name, error=error, traceback=tb)
    )


class FollowUps:
    """Builds the follow-ups of outcomes for one worker (its key layout, limits and signer)."""

    def __init__(self, keys: Keys, max_message_bytes: int, signer: Signer | None) -> None:
        self._keys = keys
        self._max_bytes = max_message_bytes
        self._signer = signer

    def on_success(self, msg: TaskMessage, results: list[Any]) -> list[Outgoing]:
        follow: list[Outgoing | None] = []
        for cb in msg.on_success:
            passes = not (msg.immutable or cb.immutable)
            follow.append(self.out(cb, results if passes else [], prepend=True))
        if msg.chain_next is not None:
            nxt = msg.chain_next
            passes = not (msg.immutable or nxt.immutable)
            follow.append(self.out(nxt, results if passes else [], prepend=False))
        return [m for m in follow if m is not None]

    def chord_success(self, msg: TaskMessage, results: list[Any]) -> ChordSuccess | None:
        cb = msg.chord_callback
        if cb is None or not msg.group_id:
            return None
        out = self.out(cb, [], prepend=False, sign=False)  # its body is the two halves below
        if out is None:
            return None
        prefix, suffix = split_for_results(cb, self._signer)
        qk = self._keys.queue(cb.queue)
        return ChordSuccess(
            group_key=qk.chord_results(msg.group_id),
            fired_key=qk.chord_fired(msg.group_id),
            index=msg.group_index,
            count=msg.group_task_count,
            # "[a,b]" -> "a,b": spliced into the callback's args (none for an immutable one)
            results=b"" if cb.immutable else encode(results)[1:-1],
            callback=out,
            body_prefix=prefix,
            body_suffix=suffix,
        )

    def failure(self, c: Claimed, msg: TaskMessage, err: str, tb: str) -> Done:
        """A final failure: its state, its on_error callbacks (error string first), FAILURE on
        the later links of its chain, and its chord marked failed."""
        state = final_state(msg.id, msg.name, State.FAILURE, error=err, tb=tb)
        follow = [self.out(cb, [err], prepend=True) for cb in msg.on_error]
        done = Done(c.id, c.token, state, [m for m in follow if m is not None])
        cause = f"task {msg.name!r} ({msg.id}) failed: {err}"
        link = msg.chain_next
        while link is not None:  # the chain stops here: its later links will never run
            stopped = final_state(
                link.id, link.name, State.FAILURE, error=f"chain stopped: {cause}"
            )
            done.extra_states.append(ExtraState(link.queue, link.id, stopped, link.reply_to))
            link = link.chain_next
        cb = msg.chord_callback
        if cb is not None and msg.group_id:
            failed = final_state(cb.id, cb.name, State.FAILURE, error=f"chord member {cause}")
            fired = self._keys.queue(cb.queue).chord_fired(msg.group_id)
            done.chord = ChordFailure(fired, ExtraState(cb.queue, cb.id, failed, cb.reply_to))
        return done

    def out(
        self, cb: TaskMessage, values: list[Any], *, prepend: bool, sign: bool = True
    ) -> Outgoing | None:
        """A follow-up message with ``values`` added to its args; None (logged) if it is too big."""
        if values:
            cb = msgspec.structs.replace(
                cb,
                args=[*values, *cb.args] if prepend else [*cb.args, *values],
                arg_types=_shifted(cb.arg_types, len(cb.args), len(values), prepend),
                arg_names=_shifted(cb.arg_names, len(cb.args), len(values), prepend),
            )
        try:
            out = outgoing(cb, self._max_bytes, self._signer if sign else None)
        except Exception as exc:
            log.error("follow-up task %s (%s) not sent: %s", cb.name, cb.id, exc)
            return None
        log.debug("follow-up task %s (%s) goes out with this outcome", cb.name, cb.id)
        return out


def _shifted(column: list[str], n: int, added: int, prepend: bool) -> list[str]:
    """A per-argument column (types, names) after ``added`` untyped values join the args."""
    if not column:
        return []
    padded, new = padded_to(column, n), [""] * added
    return [*new, *padded] if prepend else [*padded, *new]


def padded_to(column: list[str], n: int) -> list[str]:
    """A per-argument column cut or padded with "" to ``n`` entries."""
    return column + [""] * (n - len(column)) if len(column) < n else column[:n]
