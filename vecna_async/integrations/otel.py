"""OpenTelemetry tracing (``pip install 'vecna_async[otel]'``, plus the SDK and an exporter of your
choice): a PRODUCER span per task sent, a CONSUMER span per run, one trace from end to end.

::

    from vecna_async.integrations.otel import OpenTelemetryMiddleware

    server.add_middleware(OpenTelemetryMiddleware())   # the global TracerProvider, or pass one

The sending side starts ``send <task>`` (kind PRODUCER) as a child of the current span -- the
web request's, say -- and writes its context into the message's headers with the configured
propagator (W3C ``traceparent``, ``tracestate`` and ``baggage`` by default). The worker extracts
it and runs the task inside ``process <task>`` (kind CONSUMER), the current span while the task
runs, so what the task sends (and the HTTP calls and queries it makes, when instrumented) joins
the trace. A request, the task it sends and the tasks that task sends are one trace. The
headers reach the Signature's ``on_success``/``on_error`` callbacks too (unless they carry their
own), and each link of a chain and each member and the callback of a chord get a send span of
their own. A retried task's runs share the send span as their parent.

Attributes, after the messaging semantic conventions: ``messaging.system`` ("vecna_async"),
``messaging.destination.name`` (the queue), ``messaging.message.id`` (the task id),
``messaging.operation.type`` ("send" / "process"), ``messaging.operation`` ("publish" /
"process", the older name), plus ``vecna_async.task.name``, ``vecna_async.task.attempt`` and
``vecna_async.task.outcome`` (``Outcome.status``). A failure or a timeout records the exception
and sets the span's status to ERROR; a retry records the exception as an event; a send that
raised records it on the send span.
"""

from __future__ import annotations

from contextvars import ContextVar
from itertools import islice
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    raise ImportError(
        "vecna_async's OpenTelemetry tracing needs opentelemetry-api: "
        "pip install 'vecna_async[otel]'"
    ) from exc

from vecna_async.context import Context
from vecna_async.middleware import Middleware, Outcome, signature_tree

if TYPE_CHECKING:
    from vecna_async.backend.results import AsyncResult
    from vecna_async.tasks.signature import Signature

SYSTEM = "vecna_async"
Running = tuple[Span, Any]
"""A run's span and the token that detaches it (a ``Token[Context]``, typed ``object`` by older
opentelemetry-api releases)."""


def _attributes(operation: str, name: str, queue: str, task_id: str | None) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.operation": "publish" if operation == "send" else operation,
        "messaging.destination.name": queue,
        "messaging.message.id": task_id or "",
        "vecna_async.task.name": name,
    }


def _record(span: Span, error: BaseException, *, failed: bool = True) -> None:
    span.record_exception(error)
    if failed:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class OpenTelemetryMiddleware(Middleware):
    """Traces sends and runs (see the module docstring). ``tracer_provider``: default the global
    one (``opentelemetry.trace.set_tracer_provider``)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from vecna_async import __version__

        self._tracer = trace.get_tracer(SYSTEM, __version__, tracer_provider=tracer_provider)
        # by id() of the Signature, from before_send to after_send (a list: one Signature
        # object may be sent twice in one call)
        self._sending: dict[int, list[Span]] = {}
        self._running: ContextVar[Running | None] = ContextVar("vecna_otel_run", default=None)

    async def before_send(self, signature: Signature) -> None:
        span = self._tracer.start_span(
            f"send {signature.name}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes("send", signature.name, signature.routing_key, signature.id),
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        if carrier:
            # a new dict: the old one may be shared (by the caller, by other Signatures)
            signature.headers = {**signature.headers, **carrier}
            _to_callbacks(signature, carrier)
        self._sending.setdefault(id(signature), []).append(span)

    async def after_send(
        self,
        signature: Signature,
        result: AsyncResult[Any] | None,
        error: BaseException | None,
    ) -> None:
        spans = self._sending.get(id(signature))
        if not spans:
            return
        span = spans.pop(0)
        if not spans:
            del self._sending[id(signature)]
        if error is not None:
            _record(span, error)
        span.end()

    async def before_run(self, ctx: Context) -> None:
        parent = propagate.extract(ctx.headers)
        attributes = _attributes("process", ctx.name, ctx.queue, ctx.task_id)
        attributes["vecna_async.task.attempt"] = ctx.attempt
        span = self._tracer.start_span(
            f"process {ctx.name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        # the current span while the task runs (same asyncio task: the hooks share its context)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._running.set((span, token))

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        running = self._running.get()
        if running is None:
            return
        self._running.set(None)
        span, token = running
        span.set_attribute("vecna_async.task.outcome", outcome.status)
        if outcome.error is not None:
            _record(span, outcome.error, failed=outcome.status in ("failure", "timeout"))
        span.end()
        otel_context.detach(token)


def _to_callbacks(signature: Signature, carrier: dict[str, str]) -> None:
    """Carry the trace context to nested callbacks that have none of their own."""
    for cb in islice(signature_tree(signature), 1, None):  # the callbacks, not the Signature
        if not any(key in cb.headers for key in carrier):
            cb.headers = {**cb.headers, **carrier}
