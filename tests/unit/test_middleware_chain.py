"""The middleware chain on its own: only the hooks a middleware defines are called, in order,
and what is not a middleware is refused at registration."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from vecna_async import Context, Server
from vecna_async.middleware import Middleware, Middlewares, Outcome

pytestmark = pytest.mark.anyio


class OnlyAfterRun(Middleware):
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        self.log.append(f"{self.name}:{outcome.status}")


async def test_only_defined_hooks_are_kept_and_after_hooks_run_in_reverse() -> None:
    chain = Middlewares()
    assert not chain  # the worker and the Server skip everything then
    log: list[str] = []
    chain.add(OnlyAfterRun(log, "first"))
    chain.add(OnlyAfterRun(log, "second"))
    assert chain
    assert len(chain) == 2
    assert chain._hooks["before_run"] == []
    assert chain._hooks["before_send"] == []
    await chain.after_run(Context(task_id="t", name="x"), Outcome("success", 0.1))
    assert log == ["second:success", "first:success"]


async def test_a_duck_typed_middleware_is_accepted() -> None:
    seen: list[str] = []

    class Duck:
        async def before_run(self, ctx: Context) -> None:
            seen.append(ctx.task_id)

    chain = Middlewares()
    chain.add(Duck())
    await chain.before_run(Context(task_id="t1", name="x"))
    assert seen == ["t1"]


def test_what_is_not_a_middleware_is_refused() -> None:
    server = Server()
    with pytest.raises(TypeError, match="int is not a middleware"):
        server.add_middleware(1)  # type: ignore[arg-type]


def test_an_outcome_names_the_state_it_leaves() -> None:
    states: dict[Any, Any] = {
        status: Outcome(status, 0.0).state
        for status in ("success", "failure", "timeout", "retry", "canceled", "interrupted")
    }
    assert states == {
        "success": "SUCCESS",
        "failure": "FAILURE",
        "timeout": "FAILURE",
        "retry": "RETRY",
        "canceled": "CANCELED",
        "interrupted": None,
    }


def test_add_middleware_is_the_contracts() -> None:
    """API.md "Operations (contract v2)": ``server.add_middleware(middleware)``."""
    params = list(inspect.signature(Server.add_middleware).parameters)
    assert params == ["self", "middleware"]
    assert Server.add_middleware.__doc__
