"""Testing tasks without Redis: the demo's tasks, end to end, over memory://.

The fixtures are in ``examples/conftest.py``. Run: ``pytest examples/test_with_memory.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from examples.demo.tasks import add, divide, flaky, multiply
from vecna_async import Chain, Server, State, TaskFailed

pytestmark = pytest.mark.anyio


async def test_add_runs_on_a_worker(app: Server) -> None:
    result = await add.send(2, 3)
    assert await result.get(timeout=5) == 5


async def test_a_failure_comes_back_as_task_failed(app: Server) -> None:
    result = await divide.send(1, 0)
    with pytest.raises(TaskFailed, match="ZeroDivisionError"):
        await result.get(timeout=5)


async def test_retries_and_workflows(app: Server) -> None:
    assert await (await flaky.send("job")).get(timeout=5) == "job done after 3 attempts"
    chain = await app.send_chain(Chain(add.signature(1, 1), multiply.signature(10)))
    assert await chain.get(timeout=5) == 20


async def test_a_delayed_task_can_be_canceled(app: Server) -> None:
    later = add.signature(1, 1)
    later.eta = datetime.now(UTC) + timedelta(minutes=5)
    result = await app.send_task(later)
    assert await app.cancel_delayed_task(later)
    state = await result.get_state()
    assert state is not None
    assert state.state is State.CANCELED
