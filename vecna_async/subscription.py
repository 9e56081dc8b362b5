"""A Redis pub/sub subscription kept alive for as long as its task runs.

The worker's cancel notices and the scheduler's wake-ups both listen on a channel for the life of
their task: when the connection is lost, redis-py resubscribes on a new one at the next
subscribe, so the loop logs, waits and subscribes again; nothing ends it but cancellation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from vecna_async.connection import AnyRedis


async def subscribe_forever(
    client: AnyRedis,
    channel: str,
    on_message: Callable[[bytes], None],
    *,
    log: logging.Logger,
    what: str,
    backoff: tuple[float, float],
    on_lost: Callable[[], None] | None = None,
) -> None:
    """Call ``on_message`` with each message's data until cancelled. A lost subscription logs
    ``"<what> lost (<error>); resubscribing"`` at WARNING, calls ``on_lost`` and waits ``backoff``
    (first, most: doubled after each failure in a row) before it subscribes again."""
    first, most = backoff
    pause = first
    while True:
        pubsub: PubSub | None = None
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe(channel)
            pause = first
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if msg and msg.get("type") == "message":
                    on_message(msg["data"])
        except Exception as exc:
            log.warning("%s lost (%s); resubscribing", what, exc)
            if on_lost is not None:
                on_lost()
            await anyio.sleep(pause)
            pause = min(pause * 2, most)
        finally:
            if pubsub is not None:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
