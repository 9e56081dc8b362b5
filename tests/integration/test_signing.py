"""Message signing (``Config.signing_keys``) against a real Redis and real workers.

A producer and a worker are separate ``Server`` objects on the same Redis and key prefix, so
each can have its own keys. Tasks leave markers in Redis under ``<key prefix>:sg:``, so a test
can prove a task never ran. Synchronisation is by awaiting results or polling with deadlines.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker
from vecna_async import (
    Chain,
    Chord,
    Config,
    Group,
    InvalidSignature,
    RetryTaskLater,
    Server,
    Signature,
    TaskFailed,
)
from vecna_async.messages import TaskMessage, decode_task, encode, periodic_decoder
from vecna_async.signing import Signer, key_id, verify_definition
from vecna_async.tasks.wire import split_for_results

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"
OLD = "old-signing-key-0123456789abcdef"
NEW = "new-signing-key-fedcba9876543210"
OTHER = "someone-elses-key-000000000000000"


def keyed(config: Config, *keys: str) -> Config:
    return msgspec.structs.replace(config, signing_keys=list(keys))


class Marks:
    def __init__(self, rc_text: aioredis.Redis, prefix: str) -> None:
        self.rc_text = rc_text
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}:sg:{name}"

    async def runs(self, name: str) -> int:
        return int(await self.rc_text.hget(self.key("runs"), name) or 0)

    async def list(self, name: str) -> list[Any]:
        return [json.loads(x) for x in await self.rc_text.lrange(self.key(name), 0, -1)]


@pytest.fixture
def marks(rc_text: aioredis.Redis, config: Config) -> Marks:
    return Marks(rc_text, config.redis.key_prefix)


def register(server: Server, marks: Marks) -> Server:
    rc, key = marks.rc_text, marks.key

    async def count(name: str) -> None:
        await rc.hincrby(key("runs"), name, 1)

    async def add(*numbers: int) -> int:
        await count("add")
        return sum(numbers)

    async def multiply(*numbers: int) -> int:
        await count("multiply")
        product = 1
        for n in numbers:
            product *= n
        return product

    async def collect(tag: str, *values: Any) -> list[Any]:
        await count(tag)
        await rc.rpush(key(tag), json.dumps(list(values)))
        return list(values)

    async def flaky(tag: str, *values: Any) -> list[Any]:
        """Asks for another attempt the first time (the retry body is re-signed)."""
        if await rc.hincrby(key("attempts"), tag, 1) == 1:
            raise RetryTaskLater("first attempt", delay=0.05)
        await count(tag)
        return list(values)

    async def fail_once(tag: str) -> str:
        """Fails its first attempt (a counted retry, 1 s back-off), then succeeds."""
        if await rc.hincrby(key("attempts"), tag, 1) == 1:
            raise RuntimeError("first attempt fails")
        await count(tag)
        return tag

    async def note(*args: Any) -> None:
        """A callback (results or the error string are prepended): records the values it got
        under its last arg, its tag."""
        *values, tag = args
        await count(tag)
        await rc.rpush(key(tag), json.dumps(values))

    async def boom(*args: Any) -> None:
        await count("boom")
        raise RuntimeError("boom")

    server.register_tasks(
        {
            "add": add,
            "multiply": multiply,
            "collect": collect,
            "flaky": flaky,
            "fail_once": fail_once,
            "boom": boom,
            "note": note,
        }
    )
    return server


async def record_body(rc: aioredis.Redis, server: Server, task_id: str) -> bytes:
    body = await rc.hget(server.keys.queue(QUEUE).record(task_id), "b")
    assert isinstance(body, bytes), f"no record for {task_id}"
    return body


async def dead_reason(server: Server, task_id: str) -> str:
    async def find() -> str:
        for d in await server.get_broker().get_dead_letters(QUEUE):
            if d.task_id == task_id:
                return d.reason
        return ""

    return await eventually(find, timeout=10)


# -- round trips ---------------------------------------------------------------------------------


async def test_signed_round_trip(config: Config, rc: aioredis.Redis, marks: Marks) -> None:
    async with register(Server(keyed(config, NEW)), marks) as srv:
        r = await srv.send_task(Signature("add", args=[1, 2]))
        body = await record_body(rc, srv, r.task_id)
        msg = decode_task(body)
        assert msg.sig.startswith(key_id(NEW) + ".")
        assert NEW.encode() not in body
        assert Signer([NEW]).verify(encode(msgspec.structs.replace(msg, sig="")), msg.sig)
        async with running_worker(srv):
            assert await r.get(timeout=10) == 3


async def test_unsigned_bodies_are_unchanged_when_signing_is_off(
    server: Server, rc: aioredis.Redis
) -> None:
    r = await server.send_task(Signature("add", args=[1, 2]))
    body = await record_body(rc, server, r.task_id)
    assert b'"sig"' not in body
    assert b"chord_args" not in body


async def test_rotation_old_key_still_verifies(config: Config, marks: Marks) -> None:
    """Producer still signs with the old key; the worker signs with the new one and still accepts
    the old: the task and the chain link the worker re-signs both run."""
    producer, worker_srv = Server(keyed(config, OLD)), Server(keyed(config, NEW, OLD))
    async with producer, register(worker_srv, marks):
        ch = await producer.send_chain(
            Chain(Signature("add", args=[1, 1]), Signature("multiply", args=[10]))
        )
        async with running_worker(worker_srv):
            assert await ch.get(timeout=10) == 20


async def test_signing_off_accepts_signed_messages(config: Config, marks: Marks) -> None:
    """Mixed rollout: producers sign first, workers without keys still run what they sign."""
    producer, worker_srv = Server(keyed(config, NEW)), Server(config)
    async with producer, register(worker_srv, marks):
        r = await producer.send_task(Signature("add", args=[2, 3]))
        async with running_worker(worker_srv):
            assert await r.get(timeout=10) == 5


# -- what never runs -------------------------------------------------------------------------------


async def assert_never_runs(
    worker_srv: Server, task_id: str, marks: Marks, *words: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_worker(worker_srv):
        reason = await dead_reason(worker_srv, task_id)
        with pytest.raises(TaskFailed) as info:
            await worker_srv.result(task_id).get(timeout=10)
    assert reason.startswith("InvalidSignature: "), reason
    for word in words:
        assert word in reason, reason
    assert reason in info.value.error
    assert await marks.runs("add") == 0
    assert await marks.runs("cb") == 0, "a callback of a rejected message ran"
    logged = [r for r in caplog.records if r.levelname == "ERROR" and task_id in r.getMessage()]
    assert logged, "no ERROR log naming the task id"
    for secret in (OLD, NEW, OTHER):
        assert secret not in caplog.text
        assert secret not in reason


async def test_unsigned_message_is_dead_lettered(
    config: Config, marks: Marks, caplog: pytest.LogCaptureFixture
) -> None:
    async with Server(config) as producer:
        sig = Signature("add", args=[1, 2], on_success=[Signature("note", args=["cb"])])
        r = await producer.send_task(sig)
    async with register(Server(keyed(config, NEW)), marks) as worker_srv:
        await assert_never_runs(worker_srv, r.task_id, marks, "unsigned", caplog=caplog)


async def test_tampered_args_are_dead_lettered(
    config: Config, rc: aioredis.Redis, marks: Marks, caplog: pytest.LogCaptureFixture
) -> None:
    async with register(Server(keyed(config, NEW)), marks) as srv:
        r = await srv.send_task(Signature("add", args=[1, 2]))
        body = await record_body(rc, srv, r.task_id)
        assert body.count(b'"args":[1,2]') == 1
        tampered = body.replace(b'"args":[1,2]', b'"args":[1,3]')  # one flipped byte
        await rc.hset(srv.keys.queue(QUEUE).record(r.task_id), "b", tampered)
        await assert_never_runs(srv, r.task_id, marks, "altered", key_id(NEW), caplog=caplog)


async def test_unknown_key_is_dead_lettered(
    config: Config, marks: Marks, caplog: pytest.LogCaptureFixture
) -> None:
    async with Server(keyed(config, OTHER)) as producer:
        r = await producer.send_task(Signature("add", args=[1, 2]))
    async with register(Server(keyed(config, NEW, OLD)), marks) as worker_srv:
        await assert_never_runs(
            worker_srv, r.task_id, marks, key_id(OTHER), "none of", caplog=caplog
        )


async def test_a_forged_message_dead_lettered_by_a_claim_sends_no_callbacks(
    config: Config, rc: aioredis.Redis, marks: Marks
) -> None:
    """An unsigned message the claim itself dead-letters (its deliveries ran out): the worker
    settles its FAILURE but does not send its on_error callbacks, which would go out signed by
    the worker. A signed one in the same situation does get its callbacks."""
    forged_id, signed_id = f"forged-{uuid.uuid4().hex}", f"signed-{uuid.uuid4().hex}"
    async with Server(config) as producer:  # unsigned
        await producer.send_task(
            Signature("add", args=[1], id=forged_id, on_error=[Signature("note", args=["x"])])
        )
    async with register(Server(keyed(config, NEW)), marks) as srv:
        await srv.send_task(
            Signature("add", args=[2], id=signed_id, on_error=[Signature("note", args=["y"])])
        )
        q = srv.keys.queue(QUEUE)
        max_deliveries = config.redis.max_deliveries
        for task_id in (forged_id, signed_id):  # as if every delivery's lease had expired
            await rc.zrem(q.ready, task_id)
            await rc.hset(q.record(task_id), "d", max_deliveries)
            await rc.zadd(q.leases, {task_id: 0})
        async with running_worker(srv):
            await eventually(lambda: marks.runs("y"), timeout=10)
            for task_id in (forged_id, signed_id):
                with pytest.raises(TaskFailed) as info:
                    await srv.result(task_id).get(timeout=10)
                assert "dead-lettered" in info.value.error
                if task_id == forged_id:
                    assert "InvalidSignature" in info.value.error
            await anyio.sleep(0.3)  # the worker had time to send a callback, if it would
        assert await marks.runs("x") == 0
        assert await marks.runs("add") == 0


# -- what the worker re-signs -------------------------------------------------------------------


async def test_retries_callbacks_and_chains_run_with_signing(config: Config, marks: Marks) -> None:
    async with register(Server(keyed(config, NEW)), marks) as srv:
        async with running_worker(srv):
            retried = await srv.send_task(Signature("fail_once", args=["r1"], retry_count=2))
            later = await srv.send_task(Signature("flaky", args=["r2", 7]))
            with_cb = await srv.send_task(
                Signature("add", args=[2, 3], on_success=[Signature("note", args=["cb"])])
            )
            with_err = await srv.send_task(
                Signature("boom", on_error=[Signature("note", args=["err"])])
            )
            ch = await srv.send_chain(
                Chain(
                    Signature("add", args=[1, 1]),
                    Signature("multiply", args=[4]),
                    Signature("add", args=[100]),
                )
            )
            assert await retried.get(timeout=15) == "r1"
            assert await later.get(timeout=10) == [7]
            assert await with_cb.get(timeout=10) == 5
            assert await ch.get(timeout=10) == 108
            with pytest.raises(TaskFailed):
                await with_err.get(timeout=10)
            assert await eventually(lambda: marks.list("cb")) == [[5]]
            errors = await eventually(lambda: marks.list("err"))
            assert errors[0][0].startswith("RuntimeError: boom")
        assert await srv.get_broker().get_dead_letters(QUEUE) == []


async def test_chord_of_three_completes_with_signing(
    config: Config, rc: aioredis.Redis, marks: Marks
) -> None:
    """The members run on a worker that does not know the callback, so the callback (enqueued by
    the settle script, its results spliced in) waits parked and can be looked at; a worker that
    knows it then runs it."""
    async with register(Server(keyed(config, NEW)), marks) as srv:
        members_only = Server(keyed(config, NEW))
        members_only.register_task("add", srv.registry.find("add").fn)  # type: ignore[union-attr]
        chord = Chord(
            Group(*(Signature("add", args=[i, i]) for i in range(1, 4))),
            Signature("collect", args=["chord"]),
        )
        cr = await srv.send_chord(chord)
        async with members_only, running_worker(members_only):
            body = await eventually(
                lambda: rc.hget(srv.keys.queue(QUEUE).record(cr.callback.task_id), "b")
            )
        assert isinstance(body, bytes)
        cb = decode_task(body)
        assert cb.args == ["chord", 2, 4, 6]
        assert cb.chord_args == 1  # "chord" is covered; the results after it are not
        assert cb.sig.startswith(key_id(NEW) + ".")
        async with running_worker(srv):
            assert await cr.get(timeout=10) == [2, 4, 6]
        assert await srv.get_broker().get_dead_letters(QUEUE) == []


async def test_chord_callback_retry_and_immutable_callback_with_signing(
    config: Config, marks: Marks
) -> None:
    """A chord callback that retries is re-signed as a whole (results included); an immutable
    callback gets no results spliced in and still verifies."""
    async with register(Server(keyed(config, NEW)), marks) as srv:
        async with running_worker(srv):
            retried = await srv.send_chord(
                Chord(
                    Group(*(Signature("add", args=[i]) for i in range(3))),
                    Signature("flaky", args=["cb-retry"]),
                )
            )
            immutable = await srv.send_chord(
                Chord(
                    Group(*(Signature("add", args=[i]) for i in range(3))),
                    Signature("collect", args=["imm", "only"], immutable=True),
                )
            )
            assert await retried.get(timeout=10) == [0, 1, 2]
            assert await immutable.get(timeout=10) == ["only"]
        assert await marks.runs("cb-retry") == 1
        assert await srv.get_broker().get_dead_letters(QUEUE) == []


async def test_a_spliced_chord_callback_with_other_args_before_the_results_is_rejected(
    config: Config, rc: aioredis.Redis, marks: Marks
) -> None:
    """The signed part of a chord callback is its own args; changing those is caught even though
    the results after them are not covered."""
    async with register(Server(keyed(config, NEW)), marks) as srv:
        ok, bad = f"ok-{uuid.uuid4().hex}", f"bad-{uuid.uuid4().hex}"
        q = srv.keys.queue(QUEUE)
        for task_id in (ok, bad):
            cb = TaskMessage(id=task_id, name="collect", queue=QUEUE, args=["chord"])
            prefix, suffix = split_for_results(cb, Signer([NEW]))
            body = prefix + b"1,2" + suffix  # as the settle script splices two results
            assert decode_task(body).chord_args == 1
            if task_id == bad:
                body = body.replace(b'"args":["chord"', b'"args":["other"')
            await rc.hset(
                q.record(task_id),
                mapping={"b": body, "n": "collect", "p": 0, "d": 0, "i": 0, "r": ""},
            )
            await rc.zadd(q.ready, {task_id: 0})
        async with running_worker(srv):
            assert await srv.result(ok).get(timeout=10) == [1, 2]
            reason = await dead_reason(srv, bad)
        assert reason.startswith("InvalidSignature: "), reason
        assert "altered" in reason
        assert await marks.list("chord") == [[1, 2]]
        assert await marks.runs("other") == 0


async def test_periodic_firing_is_signed(config: Config, rc: aioredis.Redis, marks: Marks) -> None:
    async with register(Server(keyed(config, NEW)), marks) as srv:
        code = await srv.send_periodic_task("* * * * * *", Signature("collect", args=["tick"]))
        stored = await rc.hget(srv.keys.periodic_defs, code)
        assert stored is not None
        defn = periodic_decoder.decode(stored)
        verify_definition(defn, Signer([OLD, NEW]))  # any configured key verifies
        with pytest.raises(InvalidSignature, match=code):
            verify_definition(defn, Signer([OTHER]))
        with pytest.raises(InvalidSignature, match="altered"):
            verify_definition(msgspec.structs.replace(defn, spec="* * * * *"), Signer([NEW]))
        async with running_worker(srv):
            await eventually(lambda: marks.runs("tick"), timeout=10)
            await srv.cancel_periodic_task(code)
        assert await srv.get_broker().get_dead_letters(QUEUE) == []  # the firing verified


@pytest.mark.anyio
async def test_an_unsigned_periodic_definition_is_quarantined_not_fired(
    config: Config, rc: aioredis.Redis
) -> None:
    """A definition written by someone without a key (here: a Server without signing keys)
    never fires where signing is on; it is moved aside with the reason, and a signed one fires."""
    keys = ["a-signing-key-long-enough", "the-old-key-also-long-enough"]
    signed_cfg = msgspec.structs.replace(config, signing_keys=keys)
    async with Server(config) as unsigned, Server(signed_cfg) as signed:
        now_s, _ = await rc.time()
        bad = await unsigned.send_periodic_task("* * * * * *", Signature("echo", args=[1]))
        good = await signed.send_periodic_task("* * * * * *", Signature("echo", args=[2]))
        for code in (bad, good):
            await rc.zadd(signed.keys.periodic_next, {code: int(now_s) * 1000})
        sched = signed.new_scheduler()
        await sched.run_once()
        [entry] = await sched.periodic.quarantined()
        assert entry.code == bad
        assert entry.reason.startswith("InvalidSignature"), entry.reason
        assert sched.periodic.fired == 1
        assert set(await sched.periodic.definitions()) == {good}
