"""``vecna_async.tasks.wire``: Signature -> TaskMessage -> what the broker stores -> Signature."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from vecna_async import Arg, ArgumentTypeError, Chain, MessageTooLarge, Signature, State
from vecna_async.messages import TaskMessage, decode_state, decode_task, encode
from vecna_async.tasks.registry import TaskRegistry
from vecna_async.tasks.wire import eta_ms, outgoing, prepare, prepare_chain, to_signature, walk

QUEUE = "vecna_tasks"
REPLY = "vecna:reply:abc"


def test_prepare_fills_id_and_code() -> None:
    sig = Signature("add", args=[1, 2])
    msg = prepare(sig, QUEUE, REPLY)
    assert sig.id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", sig.id)
    assert sig.code == sig.id
    assert (msg.id, msg.code, msg.name, msg.queue) == (sig.id, sig.id, "add", QUEUE)
    assert msg.args == [1, 2]
    assert msg.arg_types == []  # no typed arg: nothing to check
    assert msg.reply_to == REPLY


def test_prepare_gives_each_signature_its_own_id() -> None:
    a, b = Signature("add"), Signature("add")
    assert prepare(a, QUEUE).id != prepare(b, QUEUE).id


def test_prepare_keeps_given_id_and_code() -> None:
    sig = Signature("add", id="my-id", code="my-code")
    msg = prepare(sig, QUEUE)
    assert (sig.id, sig.code, msg.id, msg.code) == ("my-id", "my-code", "my-id", "my-code")


def test_code_is_the_group_id_when_set() -> None:
    sig = Signature("add", group_id="g-1", group_task_count=2)
    msg = prepare(sig, QUEUE)
    assert sig.code == "g-1"
    assert msg.code == "g-1"
    assert sig.id != "g-1"
    assert (msg.group_id, msg.group_task_count) == ("g-1", 2)


def test_prepare_refuses_an_id_that_would_break_a_key() -> None:
    with pytest.raises(ValueError, match="task id"):
        prepare(Signature("add", id="has space"), QUEUE)


def test_routing_key_names_the_queue() -> None:
    assert prepare(Signature("add", routing_key="emails"), QUEUE).queue == "emails"
    assert prepare(Signature("add"), QUEUE).queue == QUEUE


def test_typed_args_keep_their_types_in_parallel() -> None:
    sig = Signature("add", args=[Arg("int64", 1), 2, Arg("[]string", ["a"])])
    msg = prepare(sig, QUEUE)
    assert msg.args == [1, 2, ["a"]]
    assert msg.arg_types == ["int64", "", "[]string"]


def test_callbacks_inherit_reply_to_and_get_ids() -> None:
    ok = Signature("multiply", args=[10], routing_key="other")
    err = Signature("record")
    nested = Signature("record", args=["nested"])
    ok.on_success.append(nested)
    chord_cb = Signature("sum_ints")
    sig = Signature("add", on_success=[ok], on_error=[err], chord_callback=chord_cb)
    msg = prepare(sig, QUEUE, REPLY)
    every = list(walk([msg]))
    assert len(every) == 5
    assert {m.reply_to for m in every} == {REPLY}
    assert all(s.id is not None for s in (ok, err, nested, chord_cb))
    assert len({m.id for m in every}) == 5
    assert msg.on_success[0].id == ok.id
    assert msg.on_success[0].queue == "other"
    assert msg.on_success[0].on_success[0].id == nested.id
    assert msg.on_error[0].queue == QUEUE
    assert msg.chord_callback is not None
    assert msg.chord_callback.id == chord_cb.id


def _rich_signature() -> Signature:
    return Signature(
        "add",
        args=[Arg("int64", 2**63 - 1), "plain", 1.5, Arg("[]float64", [1.5, 2.5]), [1, 2], None],
        kwargs={"k": {"nested": [1, "x"]}, "flag": True},
        eta=datetime(2031, 2, 3, 4, 5, 6, 789000, tzinfo=UTC),
        retry_count=3,
        retry_timeout=7,
        on_success=[Signature("multiply", args=[Arg("int32", 10)], immutable=True)],
        on_error=[Signature("record", args=["oops"], routing_key="errors")],
        immutable=True,
        routing_key="maths",
        priority=4,
        headers={"trace": "abc", "n": 1},
        ignore_when_task_not_registered=True,
        group_id="g-9",
        group_task_count=3,
        chord_callback=Signature("sum_ints", routing_key="maths"),
        spec="*/5 * * * *",
    )


def test_round_trip_keeps_everything() -> None:
    sig = _rich_signature()
    msg = prepare(sig, QUEUE, REPLY)
    back = to_signature(decode_task(encode(msg)))
    # callbacks without a routing key come back naming the queue they were sent to
    sig.on_success[0].routing_key = QUEUE
    assert back == sig
    assert isinstance(back.args[0], Arg)
    assert back.args[0] == Arg("int64", 2**63 - 1)
    assert back.args[1] == "plain"
    assert back.args[3] == Arg("[]float64", [1.5, 2.5])
    assert back.on_success[0].args == [Arg("int32", 10)]
    assert back.eta is not None
    assert back.eta.utcoffset() == timedelta(0)


def test_round_trip_keeps_arg_names() -> None:
    sig = Signature("add", args=[Arg("int64", 1, name="left"), Arg("int64", 2, name="right")])
    back = to_signature(decode_task(encode(prepare(sig, QUEUE))))
    assert back.args == sig.args


def test_message_wire_format_is_versioned_json() -> None:
    body = encode(prepare(Signature("add", args=[1]), QUEUE))
    data = msgspec.json.decode(body)
    assert data["v"] == 1
    assert data["name"] == "add"
    with pytest.raises(msgspec.ValidationError):
        decode_task(body.replace(b'"v":1', b'"v":99'))


def test_naive_eta_is_utc() -> None:
    naive = datetime(2030, 1, 1, 12, 0, 0)
    aware = naive.replace(tzinfo=UTC)
    assert eta_ms(naive) == eta_ms(aware) == int(aware.timestamp() * 1000)
    assert prepare(Signature("add", eta=naive), QUEUE).eta_ms == eta_ms(aware)
    plus_two = datetime(2030, 1, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert eta_ms(plus_two) == eta_ms(aware)
    assert eta_ms(None) == 0


def test_outgoing_delays_only_future_etas() -> None:
    future = datetime.now(UTC) + timedelta(minutes=5)
    out = outgoing(prepare(Signature("add", eta=future), QUEUE), 10_000)
    assert out.due_ms == eta_ms(future)
    past = datetime.now(UTC) - timedelta(minutes=5)
    assert outgoing(prepare(Signature("add", eta=past), QUEUE), 10_000).due_ms == 0
    assert outgoing(prepare(Signature("add"), QUEUE), 10_000).due_ms == 0


def test_outgoing_carries_what_the_broker_needs() -> None:
    sig = Signature("add", args=[1], priority=3, ignore_when_task_not_registered=True)
    msg = prepare(sig, QUEUE, REPLY)
    out = outgoing(msg, 10_000)
    assert (out.queue, out.id, out.name, out.priority) == (QUEUE, sig.id, "add", 3)
    assert out.ignore_unregistered is True
    assert out.reply_to == REPLY
    assert decode_task(out.body) == msg
    pending = decode_state(out.pending_state)
    assert (pending.task_id, pending.state, pending.task_name) == (sig.id, State.PENDING, "add")


def test_outgoing_refuses_oversized_messages() -> None:
    msg = prepare(Signature("concat", args=[["x" * 5000]]), QUEUE)
    size = len(encode(msg))
    assert outgoing(msg, size).body == encode(msg)
    with pytest.raises(MessageTooLarge) as info:
        outgoing(msg, size - 1)
    assert (info.value.task_name, info.value.size, info.value.limit) == ("concat", size, size - 1)


def test_to_signature_of_a_minimal_message() -> None:
    msg = TaskMessage(id="abc", name="add", queue="q")
    sig = to_signature(msg)
    assert (sig.id, sig.name, sig.routing_key, sig.args, sig.eta) == ("abc", "add", "q", [], None)


def test_eta_ms_is_current_for_now() -> None:
    now = datetime.now(UTC)
    assert abs(eta_ms(now) - time.time() * 1000) < 1000


# -- what the sending Server knows: options and argument checks ---------------------------------
class Unencodable:
    """msgspec cannot encode this."""


def test_outgoing_names_the_task_and_argument_msgspec_cannot_encode() -> None:
    for sig, where in [
        (Signature("fetch", args=["url", Unencodable()]), "task 'fetch', argument 1"),
        (Signature("fetch", kwargs={"session": Unencodable()}), "keyword argument 'session'"),
        (
            Signature("fetch", on_error=[Signature("alert", args=[Unencodable()])]),
            "task 'alert', argument 0",
        ),
    ]:
        with pytest.raises(TypeError) as info:
            outgoing(prepare(sig, QUEUE), 10_000)
        assert isinstance(info.value, ArgumentTypeError)
        assert where in str(info.value)
        assert "expected a value msgspec can encode, got Unencodable" in str(info.value)
    with pytest.raises(TypeError, match="task 'fetch': headers"):
        outgoing(prepare(Signature("fetch", headers={"x": Unencodable()}), QUEUE), 10_000)


def _registry() -> TaskRegistry:
    registry = TaskRegistry()

    async def flaky(n: int) -> int:
        return n

    async def greet(name: str, *, punctuation: str = "!") -> str:
        return name + punctuation

    registry.register("flaky", flaky, {"retry_count": 3, "routing_key": "slow", "priority": 2})
    registry.register("greet", greet, {"headers": {"team": "growth"}})
    return registry


def test_registered_options_fill_what_the_signature_left_at_its_defaults() -> None:
    registry = _registry()
    by_name = Signature("flaky", args=[1])
    msg = prepare(by_name, QUEUE, REPLY, registry)
    assert (msg.retry_count, msg.queue, msg.priority) == (3, "slow", 2)
    assert (by_name.retry_count, by_name.routing_key) == (3, "slow")  # as sent, like its id
    own = prepare(Signature("flaky", args=[1], retry_count=1, priority=5), QUEUE, "", registry)
    assert (own.retry_count, own.queue, own.priority) == (1, "slow", 5)
    # a field at its default counts as not set
    assert prepare(Signature("flaky", args=[1], priority=0), QUEUE, "", registry).priority == 2
    # options apply inside workflows too, and a copy of a mutable option per Signature
    chain_head = prepare_chain(
        Chain(Signature("greet", args=["a"]), Signature("flaky")), QUEUE, "", registry
    )
    assert chain_head.headers == {"team": "growth"}
    assert chain_head.chain_next is not None
    assert chain_head.chain_next.retry_count == 3
    parent = Signature("greet", args=["a"], on_success=[Signature("flaky")])
    assert prepare(parent, QUEUE, "", registry).on_success[0].retry_count == 3
    a, b = Signature("greet", args=["a"]), Signature("greet", args=["b"])
    prepare(a, QUEUE, "", registry)
    prepare(b, QUEUE, "", registry)
    a.headers["x"] = 1
    assert b.headers == {"team": "growth"}
    assert registry.options_of("greet") == {"headers": {"team": "growth"}}
    # a task this Server did not register gets nothing
    assert prepare(Signature("other"), QUEUE, "", registry).retry_count == 0


def test_arguments_of_known_tasks_are_checked_at_prepare() -> None:
    registry = _registry()
    with pytest.raises(
        ArgumentTypeError, match="task 'greet', argument 0: expected str, got bytes"
    ):
        prepare(Signature("greet", args=[b"ann"]), QUEUE, "", registry)
    with pytest.raises(ArgumentTypeError, match="keyword argument 'punctuation'"):
        prepare(Signature("greet", args=["a"], kwargs={"punctuation": 1}), QUEUE, "", registry)
    # seed-typed args are the worker's to check (a mismatch fails the task, as the seed says)
    prepare(Signature("flaky", args=[Arg("int64", 2**63)]), QUEUE, "", registry)
    # a mutable on_success callback gets the parent's results first: its own args shift, so only
    # its keywords are checked; an immutable one, or a chain link, keeps its own args first
    prepare(Signature("flaky", args=[1], on_success=[Signature("greet")]), QUEUE, "", registry)
    immutable = Signature("greet", args=[b"x"], immutable=True)
    with pytest.raises(ArgumentTypeError, match="task 'greet', argument 0"):
        prepare(Signature("flaky", args=[1], on_success=[immutable]), QUEUE, "", registry)
    with pytest.raises(ArgumentTypeError, match="task 'greet', argument 0"):
        prepare_chain(
            Chain(Signature("flaky", args=[1]), Signature("greet", args=[b"x"])),
            QUEUE,
            "",
            registry,
        )
