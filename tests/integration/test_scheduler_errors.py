"""``async with server.scheduler():`` lets an error of its block (and of its own start) come out as
itself, so a web app's lifespan catches it with a plain ``except``; with Redis down at start the
scheduler still starts (it waits Redis out in the background)."""

from __future__ import annotations

import logging
import socket
import traceback

import anyio
import pytest

from vecna_async import BrokerUnavailable, Config, RedisConfig, Server, Signature

pytestmark = pytest.mark.anyio


class Boom(ValueError):
    pass


async def test_an_error_in_the_block_comes_out_as_itself(server: Server) -> None:
    caught: ValueError | None = None
    try:
        async with server.scheduler():
            raise Boom("from the block")
    except ValueError as exc:  # a plain except, as in a lifespan: no ExceptionGroup to unwrap
        caught = exc
    assert isinstance(caught, Boom)
    printed = "".join(traceback.format_exception(caught))
    assert "ExceptionGroup" not in printed
    assert printed.count("Boom: from the block") == 1


async def test_a_cause_chained_in_the_block_is_kept(server: Server) -> None:
    async def fail_with_a_cause() -> None:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise Boom("outer") from inner

    with pytest.raises(Boom) as info:
        async with server.scheduler():
            await fail_with_a_cause()
    assert isinstance(info.value.__cause__, KeyError)


async def test_cancelling_the_block_from_outside_still_just_cancels(server: Server) -> None:
    with anyio.move_on_after(0.2) as scope:
        async with server.scheduler():
            await anyio.sleep(30)
    assert scope.cancelled_caught


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_with_redis_down_at_start_a_send_in_the_block_raises_plain_broker_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = Config(
        broker=f"redis://127.0.0.1:{free_port()}/0",
        redis=RedisConfig(retries=0, connect_timeout=1.0, delayed_tasks_poll_period=200),
    )
    server = Server(config)

    @server.periodic("0 6 * * *", name="report")
    async def report() -> None: ...

    caught: BrokerUnavailable | None = None
    with caplog.at_level(logging.WARNING, logger="vecna_async"):
        try:
            async with server, server.scheduler():  # starts: Redis is waited out, not raised
                await server.send_task(Signature("report"))
        except BrokerUnavailable as exc:
            caught = exc
    assert caught is not None
    assert "cannot reach Redis" in str(caught)
    assert "startup checks skipped" in caplog.text
