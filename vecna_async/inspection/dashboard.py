"""``vecna-async dashboard``: a small read-only web page of the ``inspect`` tables.

No web framework, no new dependency: a minimal HTTP/1.1 server on anyio's TCP listener (GET and
HEAD only, one request per connection). Routes:

* ``/``: the queues, workers and periodic tables as HTML, refreshing itself every few seconds
  (a meta refresh: no JavaScript);
* ``/api/inspect``: the same as JSON, exactly what ``vecna-async inspect --json`` prints;
* ``/healthz``: ``200 ok`` while Redis answers, ``503`` otherwise.

It never writes to Redis and has no authentication: it binds 127.0.0.1 unless told otherwise; put
it behind your own authenticating proxy to reach it from elsewhere.
"""

from __future__ import annotations

import contextlib
import html
import signal
import sys
from collections.abc import Callable

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from vecna_async.exceptions import VecnaError
from vecna_async.inspection import tables
from vecna_async.inspection.inspector import Inspector
from vecna_async.inspection.types import Snapshot, to_json

HEAD_MAX = 16_384
READ_SECONDS = 10.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}  # fmt: skip

STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.2em}h2{font-size:1em;margin:1.4em 0 .4em}
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;white-space:nowrap}
th{border-bottom:1px solid #999;font-weight:600}tr:nth-child(even){background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}.error{color:#b00}"""


class Dashboard:
    """Answers one HTTP request at a time per connection from the Inspector's snapshots."""

    def __init__(self, insp: Inspector, title: str, refresh: float, redis_timeout: float) -> None:
        self._insp = insp
        self._title = title
        self._refresh = refresh
        self._redis_timeout = redis_timeout  # a request answers 503 after this long

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(READ_SECONDS):
                    head = await BufferedByteReceiveStream(stream).receive_until(
                        b"\r\n\r\n", HEAD_MAX
                    )
                method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            except (ValueError, TimeoutError, anyio.IncompleteRead, anyio.DelimiterNotFound):
                await _send(stream, 400, "text/plain", b"bad request\n", head_only=False)
                return
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            status, kind, body = await self.respond(method, path.split("?", 1)[0])
            await _send(stream, status, kind, body, head_only=method == "HEAD")

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """The status, content type and body for a request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"read-only: GET and HEAD only\n"
        if path == "/healthz":
            try:
                with anyio.fail_after(self._redis_timeout):
                    await self._insp.now()
            except (VecnaError, TimeoutError) as exc:
                return 503, "text/plain", f"unavailable: {_why(exc)}\n".encode()
            return 200, "text/plain", b"ok\n"
        if path not in ("/", "/api/inspect"):
            return 404, "text/plain", b"not found: try / or /api/inspect\n"
        try:
            with anyio.fail_after(self._redis_timeout):
                snap = await self._insp.snapshot()
        except (VecnaError, TimeoutError) as exc:
            if path == "/api/inspect":
                return 503, "application/json", to_json({"error": _why(exc)})
            return 503, "text/html; charset=utf-8", self.page(None, _why(exc))
        if path == "/api/inspect":
            return 200, "application/json", to_json(snap)
        return 200, "text/html; charset=utf-8", self.page(snap)

    def page(self, snap: Snapshot | None, error: str = "") -> bytes:
        """The HTML page: the three tables, or the error that kept them from being read."""
        title = html.escape(self._title)
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<meta http-equiv='refresh' content='{self._refresh:g}'>",
            f"<title>vecna_async: {title}</title><style>{STYLE}</style></head><body>",
            f"<h1>vecna_async <span class='muted'>{title}</span></h1>",
        ]
        if snap is None:
            parts.append(f"<p class='error'>{html.escape(error)}</p>")
        else:
            as_of = snap.time.strftime("%Y-%m-%d %H:%M:%SZ")
            parts.append(
                f"<p class='muted'>as of {as_of} (Redis's clock); read-only; refreshes every "
                f"{self._refresh:g}s; JSON at <a href='/api/inspect'>/api/inspect</a></p>"
            )
            parts += [_html_table(t) for t in tables.snapshot_tables(snap)]
        parts.append("</body></html>")
        return "".join(parts).encode()


def _html_table(t: tables.Table) -> str:
    if not t.rows:
        return f"<h2>{html.escape(t.title)}</h2><p class='muted'>{html.escape(t.empty)}</p>"

    def row(cells: list[str], tag: str) -> str:
        out = []
        for i, cell in enumerate(cells):
            numeric = " class='n'" if i in t.numeric and tag == "td" else ""
            out.append(f"<{tag}{numeric}>{html.escape(cell)}</{tag}>")
        return "<tr>" + "".join(out) + "</tr>"

    body = "".join(row(r, "td") for r in t.rows)
    return f"<h2>{html.escape(t.title)}</h2><table>{row(t.headers, 'th')}{body}</table>"


async def _send(stream: SocketStream, status: int, kind: str, body: bytes, head_only: bool) -> None:
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(head.encode() + (b"" if head_only else body))  # unless the client left


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, VecnaError) else "Redis did not answer in time"


async def serve(
    insp: Inspector,
    host: str,
    port: int,
    *,
    refresh: float = 2.0,
    redis_timeout: float = 10.0,
    title: str = "",
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard until SIGINT or SIGTERM. ``ready`` is called with its URL once it
    listens (default: print it)."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(SocketAttribute.local_port)
    url = f"http://{host}:{bound}/"
    dashboard = Dashboard(insp, title or insp.where, refresh, redis_timeout)
    if ready is None:
        print(f"vecna-async dashboard on {url} (read-only, no authentication)", flush=True)
    else:
        ready(url)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, dashboard.handle)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                print("vecna-async dashboard: stopping", file=sys.stderr, flush=True)
                tg.cancel_scope.cancel()
                break
