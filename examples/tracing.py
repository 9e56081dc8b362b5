"""OpenTelemetry: a web request, the task it sends and the task that task sends, as one trace.

pip install 'vecna_async[otel]' opentelemetry-sdk    (and an exporter: OTLP, Jaeger ...)
Configure the SDK in the web app and in the worker process as usual (a TracerProvider with
your exporter), add the middleware to the Server, and run them as always:
    vecna-async worker examples.tracing:server
    uvicorn examples.tracing:app
Here all in one process, the spans kept in memory and printed as a tree:
    VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/tracing.py
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import FastAPI, Request, Response
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vecna_async import Config, Server
from vecna_async.integrations.otel import OpenTelemetryMiddleware

server = Server(Config.from_env())
server.add_middleware(OpenTelemetryMiddleware())  # the global TracerProvider, once it is set


@server.task(name="send_receipt")
async def send_receipt(order: str) -> str:
    return f"receipt for {order} sent"


@server.task(name="checkout")
async def checkout(order: str) -> str:
    await send_receipt.send(order)  # joins the trace: this run's span is the current one
    return f"{order} paid"


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with server:
        yield


app = FastAPI(lifespan=lifespan)  # recent FastAPI releases trace each request themselves


async def trace_requests(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """A SERVER span per request, for FastAPI releases that do not trace: in a real app,
    opentelemetry-instrumentation-fastapi's ``FastAPIInstrumentor.instrument_app(app)``."""
    incoming = propagate.extract(dict(request.headers))
    tracer = trace.get_tracer("examples.tracing")
    name = f"{request.method} {request.url.path}"
    with tracer.start_as_current_span(name, context=incoming, kind=trace.SpanKind.SERVER):
        return await call_next(request)


if importlib.util.find_spec("fastapi.telemetry") is None:
    app.middleware("http")(trace_requests)


@app.post("/checkout/{order}")
async def post_checkout(order: str) -> dict[str, str]:
    return {"task_id": (await checkout.send(order)).task_id}


def print_trace(spans: list[ReadableSpan]) -> None:
    """The spans of the trace as a tree (leaving out FastAPI's INTERNAL ones)."""
    by_id = {s.context.span_id: s for s in spans if s.context}

    def depth(span: ReadableSpan) -> int:
        parent = by_id.get(span.parent.span_id) if span.parent else None
        if parent is None:
            return 0
        return depth(parent) + (parent.kind != trace.SpanKind.INTERNAL)

    for span in sorted(spans, key=lambda s: s.start_time or 0):
        if span.kind != trace.SpanKind.INTERNAL:
            print(f"{'  ' * depth(span)}{span.name} ({span.kind.name})")


def span_names(exporter: InMemorySpanExporter) -> set[str]:
    return {s.name for s in exporter.get_finished_spans()}


async def main() -> None:
    exporter = InMemorySpanExporter()  # in production: an OTLP exporter, batched
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("tracing-example", concurrency=5)
        tg.start_soon(worker.launch)
        web = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop")
        async with web:
            task_id = (await web.post("/checkout/o-17")).json()["task_id"]
        print("checkout:", await server.result(task_id).get(timeout=10))
        with anyio.fail_after(10):  # the child task runs after checkout returned
            while "process send_receipt" not in span_names(exporter):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        worker.quit()

    spans = list(exporter.get_finished_spans())
    (last,) = [s for s in spans if s.name == "process send_receipt"]
    trace_id = last.context.trace_id if last.context else 0
    ours = [s for s in spans if s.context and s.context.trace_id == trace_id]
    print(f"one trace, {trace_id:032x}:")
    print_trace(ours)


if __name__ == "__main__":
    anyio.run(main)
