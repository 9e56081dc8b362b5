"""OpenTelemetry spans, captured with the SDK's in-memory exporter: a FastAPI request, the task it
sends and the task that task sends are one trace, PRODUCER and CONSUMER spans linked parent to
child through the message headers; errors are recorded on the spans."""

from __future__ import annotations

import importlib.util
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from opentelemetry import propagate
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support.vecna import eventually, running_worker
from vecna_async import Chain, Config, Context, RetryTaskLater, Server, Signature, TaskFailed
from vecna_async.integrations.otel import OpenTelemetryMiddleware

Tracing = tuple[TracerProvider, InMemorySpanExporter]
NATIVE = importlib.util.find_spec("fastapi.telemetry") is not None
"""Recent FastAPI releases trace requests themselves; older ones need an instrumentation."""


@pytest.fixture
def tracing() -> Tracing:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def traced_app(config: Config, provider: TracerProvider) -> tuple[FastAPI, Server]:
    """A web app sending ``checkout``, which sends ``receipt``; a worker runs in its lifespan."""
    server = Server(config)
    server.add_middleware(OpenTelemetryMiddleware(provider))
    tracer = provider.get_tracer("test-web")

    @server.task(name="receipt")
    async def receipt(order: str) -> str:
        return f"receipt for {order}"

    @server.task(name="checkout")
    async def checkout(order: str) -> str:
        sent = await receipt.send(order)
        return sent.task_id

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server, running_worker(server, 5):
            yield

    if NATIVE:  # FastAPI traces its requests itself
        native: dict[str, Any] = {"telemetry": {"tracer_provider": provider}}
        app = FastAPI(lifespan=lifespan, **native)
    else:
        app = FastAPI(lifespan=lifespan)

        @app.middleware("http")
        async def trace_requests(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            # what opentelemetry-instrumentation-fastapi does, in short
            incoming = propagate.extract(dict(request.headers))
            name = f"{request.method} {request.url.path}"
            with tracer.start_as_current_span(name, context=incoming, kind=SpanKind.SERVER):
                return await call_next(request)

    @app.post("/orders/{order}")
    async def order(order: str) -> dict[str, str]:
        return {"task_id": (await checkout.send(order)).task_id}

    @app.get("/results/{task_id}")
    async def result(task_id: str) -> dict[str, Any]:
        return {"value": await server.result(task_id).get(timeout=10)}

    return app, server


def wait_for_spans(exporter: InMemorySpanExporter, name: str) -> None:
    deadline = time.monotonic() + 10
    while not any(s.name == name for s in exporter.get_finished_spans()):
        assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
        time.sleep(0.02)


def test_a_request_its_task_and_that_tasks_task_are_one_trace(
    config: Config, tracing: Tracing
) -> None:
    provider, exporter = tracing
    app, _ = traced_app(config, provider)
    with TestClient(app) as client:
        task_id = client.post("/orders/o-17").json()["task_id"]
        receipt_id = client.get(f"/results/{task_id}").json()["value"]
        assert client.get(f"/results/{receipt_id}").json() == {"value": "receipt for o-17"}
        wait_for_spans(exporter, "process receipt")
    finished = exporter.get_finished_spans()
    spans = {s.name: s for s in finished}
    chain = [spans["send checkout"], spans["process checkout"]]
    chain += [spans["send receipt"], spans["process receipt"]]
    assert [s.kind for s in chain] == [
        SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.PRODUCER, SpanKind.CONSUMER
    ]  # fmt: skip
    trace_id = _ctx(chain[0]).trace_id
    assert {_ctx(s).trace_id for s in chain} == {trace_id}
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None
        assert child.parent.span_id == _ctx(parent).span_id, (parent.name, child.name)
    # the send is inside the request's SERVER span (directly, or under FastAPI's own spans)
    (request,) = [s for s in finished if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
    assert _ctx(request).trace_id == trace_id
    assert request.parent is None
    assert _ctx(request).span_id in _ancestors(chain[0], finished)
    assert dict(spans["send checkout"].attributes or {}) == {
        "messaging.system": "vecna_async",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.operation": "publish",
        "messaging.destination.name": "vecna_tasks",
        "messaging.message.id": task_id,
        "vecna_async.task.name": "checkout",
    }
    run = dict(spans["process receipt"].attributes or {})
    assert run["messaging.operation"] == "process"
    assert run["messaging.operation.type"] == "process"
    assert run["messaging.message.id"] == receipt_id
    assert run["messaging.destination.name"] == "vecna_tasks"
    assert (run["vecna_async.task.attempt"], run["vecna_async.task.outcome"]) == (1, "success")
    for s in chain[1:]:
        assert s.status.status_code == StatusCode.UNSET


def test_an_incoming_traceparent_is_continued(config: Config, tracing: Tracing) -> None:
    provider, exporter = tracing
    app, _ = traced_app(config, provider)
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with TestClient(app) as client:
        task_id = client.post("/orders/o-1", headers={"traceparent": upstream}).json()["task_id"]
        client.get(f"/results/{task_id}")
        wait_for_spans(exporter, "process receipt")
    spans = exporter.get_finished_spans()
    ours = [s for s in spans if _ctx(s).trace_id == 0x0AF7651916CD43DD8448EB211C80319C]
    names = {s.name for s in ours}
    assert any(s.kind == SpanKind.SERVER and s.name.startswith("POST") for s in ours)
    assert {"send checkout", "process checkout"} <= names
    assert {"send receipt", "process receipt"} <= names


@pytest.mark.anyio
async def test_errors_retries_and_workflows_on_the_spans(config: Config, tracing: Tracing) -> None:
    provider, exporter = tracing
    server = Server(config)
    server.add_middleware(OpenTelemetryMiddleware(provider))
    tracer = provider.get_tracer("test")

    @server.task(name="boom")
    async def boom() -> None:
        raise ValueError("bad input")

    @server.task(name="later")
    async def later(ctx: Context) -> str:
        if ctx.attempt == 1:
            raise RetryTaskLater("not yet", delay=0.05)
        return "ok"

    @server.task(name="add")
    async def add(*n: int) -> int:
        return sum(n)

    async with server, running_worker(server):
        with tracer.start_as_current_span("root") as root:
            bad = await boom.send()
            retried = await later.send()
            first = add.signature(1, 1)
            first.on_success = [add.signature(10)]  # a callback: same trace
            chain = await server.send_chain(Chain(first, add.signature(100)))
            with pytest.raises(TypeError):
                await server.send_task(Signature("nobody_knows", args=[object()]))
            twice = add.signature(5)
            await server.send_tasks([twice, twice])  # one object twice: one task, two sends
        with pytest.raises(TaskFailed):
            await bad.get(timeout=10)
        assert await retried.get(timeout=10) == "ok"
        assert await chain.get(timeout=10) == 102

        async def all_runs() -> bool:
            runs = [s for s in exporter.get_finished_spans() if s.name == "process add"]
            return len(runs) == 4

        await eventually(all_runs)
    spans = exporter.get_finished_spans()
    trace_id = root.get_span_context().trace_id
    assert [s.name for s in spans if _ctx(s).trace_id != trace_id] == []  # callbacks too

    (failed,) = [s for s in spans if s.name == "process boom"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "ValueError: bad input"
    assert [e.name for e in failed.events] == ["exception"]
    assert (failed.attributes or {})["vecna_async.task.outcome"] == "failure"

    runs = sorted(
        (s for s in spans if s.name == "process later"),
        key=lambda s: str((s.attributes or {})["vecna_async.task.attempt"]),
    )
    assert [(s.attributes or {})["vecna_async.task.outcome"] for s in runs] == ["retry", "success"]
    assert runs[0].status.status_code == StatusCode.UNSET
    assert [e.name for e in runs[0].events] == ["exception"]
    (sent_later,) = [s for s in spans if s.name == "send later"]
    assert {_parent(s) for s in runs} == {_ctx(sent_later).span_id}  # both runs: one send

    sent_twice = [s for s in spans if s.name == "send add" and _id(s) == twice.id]
    assert len(sent_twice) == 2  # both ended
    (unsent,) = [s for s in spans if s.name == "send nobody_knows"]
    assert unsent.status.status_code == StatusCode.ERROR
    assert [e.name for e in unsent.events] == ["exception"]


def _ctx(span: ReadableSpan) -> Any:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx


def _ancestors(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[int]:
    by_id = {_ctx(s).span_id: s for s in spans}
    out = []
    while span.parent is not None:
        out.append(span.parent.span_id)
        if span.parent.span_id not in by_id:
            break
        span = by_id[span.parent.span_id]
    return out


def _id(span: ReadableSpan) -> Any:
    return (span.attributes or {}).get("messaging.message.id")


def _parent(span: ReadableSpan) -> int:
    assert span.parent is not None
    return span.parent.span_id
