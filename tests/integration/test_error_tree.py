"""Errors stay in our tree (issue 11, item 6): whatever a user calls, Redis trouble comes out as
a ``VecnaError`` (BrokerUnavailable, BrokerRefused) with redis-py's exception as its cause, never
as redis-py's own exception. (A full Redis refusing a send: test_faults.py.)"""

from __future__ import annotations

import anyio
import pytest
from redis.exceptions import RedisError

from tests.support.redis_procs import RedisProcess, free_port
from vecna_async import BrokerRefused, BrokerUnavailable, Config, Server

pytestmark = pytest.mark.anyio


async def test_waiting_for_a_result_while_redis_is_down_raises_broker_unavailable() -> None:
    """Seen: ``AsyncResult.get()`` subscribed the result listener outside ``redis_errors``, so
    redis-py's ConnectionError reached the caller."""
    async with Server(Config(broker=f"redis://127.0.0.1:{free_port()}/0")) as server:
        r = server.result("some-task-id")
        with anyio.fail_after(30), pytest.raises(BrokerUnavailable) as info:
            await r.get(timeout=1.0)
        assert isinstance(info.value.__cause__, RedisError)
        with anyio.fail_after(30), pytest.raises(BrokerUnavailable):
            await r.get_state()


async def test_a_listener_the_acl_refuses_raises_broker_refused() -> None:
    with RedisProcess() as proc:
        client = proc.client()
        common = {"enabled": True, "passwords": ["+pw"], "keys": ["*"], "commands": ["+@all"]}
        client.acl_setuser("nochan", reset_channels=True, **common)  # type: ignore[arg-type]
        client.close()
        config = Config(broker=f"redis://nochan:pw@127.0.0.1:{proc.port}/0")
        async with Server(config) as server:
            with anyio.fail_after(30), pytest.raises(BrokerRefused) as info:
                await server.result("some-task-id").get(timeout=1.0)
            assert info.value.reply.startswith("NOPERM"), info.value.reply
