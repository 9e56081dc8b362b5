"""Arguments and results are converted to the task's annotations: datetime, date, UUID, Decimal,
bytes, Enum, msgspec Structs, dataclasses and TypedDicts arrive as those types. A value of the
wrong kind is an ArgumentTypeError at send when the sending Server knows the function, and fails
the task at the worker otherwise; a value msgspec cannot encode is an error at send naming the
task and the argument."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypedDict

import msgspec
import pytest

from tests.support.vecna import running_worker
from vecna_async import ArgumentTypeError, Config, Server, Signature, TaskFailed

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

QUEUE = "vecna_tasks"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Size:
    width: int
    height: int


class Box(TypedDict):
    label: str
    weight: float


async def identity_of(value: Any) -> Any:
    return value


VALUES: list[tuple[str, Any, Any]] = [
    ("datetime", datetime, datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("date", date, date(2024, 5, 1)),
    ("uuid", uuid.UUID, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("decimal", Decimal, Decimal("12.50")),
    ("bytes", bytes, b"\x00\x01\xff"),
    ("enum", Color, Color.BLUE),
    ("struct", Point, Point(1, 2)),
    ("dataclass", Size, Size(3, 4)),
    ("typeddict", Box, Box(label="x", weight=1.5)),
]


def register_echoes(server: Server) -> dict[str, Any]:
    """One task per type: it checks what it got and returns it (annotated both ways)."""
    handles: dict[str, Any] = {}
    for label, annotation, _ in VALUES:

        async def echo(value: Any, /) -> Any:
            return {"type": type(value).__name__, "value": value}

        echo.__annotations__ = {"value": annotation, "return": Any}

        async def back(value: Any, /) -> Any:
            return value

        back.__annotations__ = {"value": annotation, "return": annotation}
        server.register_task(f"echo_{label}", echo)
        handles[label] = server.task(name=f"back_{label}")(back)
    return handles


@pytest.mark.parametrize(("label", "annotation", "value"), VALUES, ids=[v[0] for v in VALUES])
async def test_each_type_arrives_as_itself(
    config: Config, label: str, annotation: Any, value: Any
) -> None:
    runtime_type = dict if label == "typeddict" else annotation  # a TypedDict's values are dicts
    async with Server(config) as worker_side, Server(config) as producer:
        handles = register_echoes(worker_side)
        async with running_worker(worker_side, 5):
            # by name, from a Server that does not know the function
            seen = await (await producer.send_task(Signature(f"echo_{label}", args=[value]))).get(
                timeout=5
            )
            assert seen["type"] == runtime_type.__name__
            # by handle: the result converts back to the return annotation too
            returned = await (await handles[label].send(value)).get(timeout=5)
    assert type(returned) is runtime_type
    assert returned == value


async def test_a_value_of_the_wrong_kind_is_refused_at_send_by_a_server_that_knows_the_task(
    server: Server,
) -> None:
    @server.task(name="greet")
    async def greet(name: str) -> str:
        return f"hello {name}"

    for send in (
        lambda: greet.send(b"ann"),  # type: ignore[arg-type]
        lambda: server.send_task(Signature("greet", args=[b"ann"])),
    ):
        with pytest.raises(ArgumentTypeError) as info:
            await send()
        assert str(info.value) == "task 'greet', argument 0: expected str, got bytes"
    assert await server.get_broker().get_pending_tasks(QUEUE) == []  # nothing was sent


async def test_a_server_that_does_not_know_the_task_leaves_the_check_to_the_worker(
    config: Config,
) -> None:
    async with Server(config) as worker_side, Server(config) as producer:

        @worker_side.task(name="greet")
        async def greet(name: str) -> str:
            return f"hello {name}"

        r = await producer.send_task(Signature("greet", args=[5]))
        async with running_worker(worker_side, 5):
            with pytest.raises(TaskFailed) as info:
                await r.get(timeout=5)
    assert info.value.error == "ArgumentTypeError: task 'greet', argument 0: expected str, got int"


async def test_a_value_msgspec_cannot_encode_fails_at_send_naming_task_and_argument(
    server: Server,
) -> None:
    class Session:
        pass

    with pytest.raises(ArgumentTypeError) as info:
        await server.send_task(Signature("fetch", args=["https://x"], kwargs={"s": Session()}))
    assert str(info.value).startswith(
        "task 'fetch', keyword argument 's': expected a value msgspec can encode, got Session"
    )
    assert await server.get_broker().get_pending_tasks(QUEUE) == []
