"""Task options (``@server.task(retry_count=3)``): which are valid, checked at decoration."""

from __future__ import annotations

import dataclasses

import pytest

from vecna_async import Config, Server, Signature
from vecna_async.tasks.options import PER_CALL, TASK_OPTIONS, check_options


def test_the_options_are_signature_fields_minus_the_per_call_ones() -> None:
    fields = {f.name for f in dataclasses.fields(Signature)}
    assert fields - PER_CALL == TASK_OPTIONS  # a field added to Signature is an option at once
    assert {
        "retry_count", "retry_timeout", "routing_key", "priority", "headers", "immutable",
        "ignore_when_task_not_registered",
    } <= TASK_OPTIONS  # fmt: skip
    assert not {"name", "args", "kwargs", "eta", "id", "code", "on_success", "on_error"} & (
        TASK_OPTIONS
    )


def test_the_authoring_options_are_accepted() -> None:
    """API.md's task options for time and limits (Signature fields, so options at once)."""
    server = Server(Config())

    @server.task(name="limited", timeout=5.0, concurrency_limit=2, rate_limit="10/s")
    async def limited() -> None: ...

    sig = limited.signature()
    assert (sig.timeout, sig.concurrency_limit, sig.rate_limit) == (5.0, 2, "10/s")
    with pytest.raises(ValueError, match="rate_limit '10 a second' is not valid"):
        check_options("x", {"rate_limit": "10 a second"})


@pytest.mark.parametrize(
    "option", ["retries", "timeout_seconds", "on_success", "eta", "id", "args"]
)
def test_an_unknown_option_is_a_type_error_at_decoration(option: str) -> None:
    server = Server(Config())
    with pytest.raises(TypeError, match=f"task 'x': unknown option '{option}'") as info:

        @server.task(name="x", **{option: 5})
        async def x() -> None: ...

    assert "retry_count" in str(info.value)  # it lists the valid ones
    assert "x" not in server.registry  # nothing registered

    async def y() -> None: ...

    with pytest.raises(TypeError, match=f"unknown option '{option}'"):
        server.register_task("y", y, **{option: 5})


def test_option_values_are_checked_against_the_signature_field() -> None:
    with pytest.raises(TypeError, match="option retry_count='3'"):
        check_options("x", {"retry_count": "3"})
    with pytest.raises(TypeError, match="option immutable=1"):
        check_options("x", {"immutable": 1})
    with pytest.raises(ValueError, match="retry_count and retry_timeout must be >= 0"):
        check_options("x", {"retry_count": -1})
    assert check_options("x", {"headers": {"a": 1}, "priority": 3}) == {
        "headers": {"a": 1},
        "priority": 3,
    }


def test_the_handle_and_the_registry_keep_the_options() -> None:
    server = Server(Config())

    @server.task(name="flaky", retry_count=3, routing_key="slow")
    async def flaky(n: int) -> int:
        return n

    assert server.registry.options_of("flaky") == {"retry_count": 3, "routing_key": "slow"}
    sig = flaky.signature(1)
    assert (sig.retry_count, sig.routing_key, sig.args) == (3, "slow", [1])


def test_a_handle_signature_owns_its_headers() -> None:
    """A send hook edits ``signature.headers`` in place: that must not reach the task's options
    or the next Signature the handle builds."""
    server = Server(Config())

    @server.task(name="tagged", headers={"team": "growth"})
    async def tagged(n: int) -> int:
        return n

    first = tagged.signature(1)
    first.headers["trace"] = "abc"
    assert tagged.signature(2).headers == {"team": "growth"}
    assert server.registry.options_of("tagged") == {"headers": {"team": "growth"}}
