"""pytest fixtures for testing tasks without Redis: copy this file next to your own tests.

The demo app (``examples/demo/tasks.py``, like yours) builds its Server from the environment
(``Config.from_env()``), so pointing ``VECNA_BROKER`` at ``memory://`` before the app is imported
puts its broker and results in the test process: no redis-server, the same scripts as on Redis.
Each test gets a fresh store and a worker running in its own event loop.

    pytest examples/test_with_memory.py
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
import pytest

from vecna_async import Server, memory

# Set, not setdefault: a developer's own VECNA_BROKER must not send test tasks to a real Redis.
os.environ["VECNA_BROKER"] = "memory://"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app() -> AsyncIterator[Server]:
    """The app's Server on a clean memory:// store, with a worker running while the test runs."""
    from examples.demo.tasks import server  # after VECNA_BROKER is set: it reads it at import

    memory.discard("memory://")  # what an earlier test left behind
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("test-worker", concurrency=10)
        tg.start_soon(worker.launch)
        yield server
        worker.quit()  # finishes what runs, then the task group ends
