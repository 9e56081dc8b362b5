"""A TCP proxy on loopback that cuts Redis connections at chosen commands.

Clients connect to :attr:`FaultProxy.url` instead of the Redis server; the proxy forwards bytes
both ways and parses RESP just enough to know where each command and each reply ends. A
:class:`CutRule` picks commands by a predicate on their arguments and cuts every ``every``-th
match, either

* ``"after"``: the command is forwarded, Redis runs it and replies, and the proxy closes both
  sides instead of relaying that reply -- the client cannot tell whether it was applied; or
* ``"before"``: the proxy closes both sides without forwarding it -- it was not applied.

Connections that subscribe (pub/sub) are relayed untouched from then on: their replies no longer
pair with commands.

The proxy runs its own event loop in a daemon thread, so a test blocking its own loop (or not
running one) does not stall the traffic of worker subprocesses going through it. Rules can be
changed at any time from any thread. Nothing here talks to the Redis on port 6379 unless told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from tests.support.redis_procs import HOST

__all__ = ["CutRule", "FaultProxy", "IncompleteResp", "command_name", "parse_command", "skip_reply"]

Command = list[bytes]


class IncompleteResp(Exception):
    """The buffer ends before the RESP value does: wait for more bytes."""


def _line(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise IncompleteResp
    return bytes(buf[pos:end]), end + 2


def parse_command(buf: bytes | bytearray, pos: int = 0) -> tuple[Command, int]:
    """One client command (a RESP array of bulk strings, or an inline command) starting at
    ``pos``: its arguments and the position after it. Raises IncompleteResp."""
    if pos >= len(buf):
        raise IncompleteResp
    if buf[pos : pos + 1] != b"*":
        line, nxt = _line(buf, pos)
        return line.split(), nxt
    header, pos = _line(buf, pos + 1)
    args: Command = []
    for _ in range(int(header)):
        if buf[pos : pos + 1] != b"$":
            if pos >= len(buf):
                raise IncompleteResp
            raise ValueError(
                f"expected a bulk string in a command, got {bytes(buf[pos : pos + 20])!r}"
            )
        size_text, pos = _line(buf, pos + 1)
        size = int(size_text)
        if len(buf) < pos + size + 2:
            raise IncompleteResp
        args.append(bytes(buf[pos : pos + size]))
        pos += size + 2
    return args, pos


_LINE_TYPES = b"+-:_,#("
_BULK_TYPES = b"$!="
_AGGREGATE_TYPES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}


def skip_reply(buf: bytes | bytearray, pos: int = 0) -> int:
    """The position after one RESP2/RESP3 reply starting at ``pos``. Raises IncompleteResp."""
    if pos >= len(buf):
        raise IncompleteResp
    kind = buf[pos]
    header, pos = _line(buf, pos + 1)
    if kind in _LINE_TYPES:
        return pos
    if kind in _BULK_TYPES:
        size = int(header)
        if size < 0:
            return pos
        if len(buf) < pos + size + 2:
            raise IncompleteResp
        return pos + size + 2
    per_item = _AGGREGATE_TYPES.get(kind)
    if per_item is None:
        raise ValueError(f"unknown RESP type byte {bytes([kind])!r}")
    count = int(header)
    for _ in range(max(0, count) * per_item):
        pos = skip_reply(buf, pos)
    if kind == ord("|"):  # an attribute precedes the reply it annotates
        pos = skip_reply(buf, pos)
    return pos


def command_name(cmd: Command) -> str:
    return cmd[0].decode(errors="replace").upper() if cmd else ""


@dataclass
class CutRule:
    """Cut the connection at every ``every``-th command for which ``matches`` is true."""

    matches: Callable[[Command], bool]
    every: int
    when: Literal["before", "after"] = "after"
    seen: int = 0
    cuts: int = 0

    def fires(self, cmd: Command) -> bool:
        if not self.matches(cmd):
            return False
        self.seen += 1
        return self.seen % self.every == 0


_SUBSCRIBING = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"}


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client_w: asyncio.StreamWriter
    server_w: asyncio.StreamWriter
    pending: deque[bool] = field(default_factory=deque)  # per forwarded command: cut its reply?
    passthrough: bool = False
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client_w, self.server_w):
            with contextlib.suppress(Exception):
                w.transport.abort()  # a reset, like a dropped network path


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``, cutting connections by :attr:`rules`.

    >>> # with FaultProxy(redis.address) as proxy:
    >>> #     proxy.rules = [CutRule(lambda c: command_name(c) == "EVALSHA", every=5)]
    >>> #     ... clients use proxy.url ...
    """

    def __init__(self, upstream: tuple[str, int], *, db: int = 0) -> None:
        self.upstream = upstream
        self._db = db
        self._lock = threading.Lock()
        self._rules: list[CutRule] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._links: set[_Link] = set()
        self.port = 0
        self.connections = 0
        self.commands = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/{self._db}"

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def rules(self) -> list[CutRule]:
        with self._lock:
            return list(self._rules)

    @rules.setter
    def rules(self, rules: Sequence[CutRule]) -> None:
        with self._lock:
            self._rules = list(rules)

    def cuts(self) -> int:
        """Connections cut so far by the current rules."""
        with self._lock:
            return sum(r.cuts for r in self._rules)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._accept, HOST, 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-proxy->{self.upstream}")
        self._thread.daemon = True
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        if not self.port:
            raise RuntimeError("the fault proxy did not start")
        return self

    def drop_all(self) -> None:
        """Cut every open connection now (from any thread)."""
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._drop_all(), loop).result(10)

    async def _drop_all(self) -> None:
        for link in list(self._links):
            link.close()

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            await self._drop_all()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- forwarding --------------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self.connections += 1
        link = _Link(client_w, server_w)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._client_to_server(link, client_r), self._server_to_client(link, server_r)
            )
        finally:
            link.close()
            self._links.discard(link)

    def _decide(self, cmd: Command) -> Literal["pass", "before", "after"]:
        with self._lock:
            for rule in self._rules:
                if rule.fires(cmd):
                    rule.cuts += 1
                    return rule.when
        return "pass"

    async def _client_to_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        try:
            while not link.closed:
                data = await reader.read(65536)
                if not data:
                    break
                if link.passthrough:
                    link.server_w.write(data)
                    continue
                buf += data
                start = 0
                while True:
                    try:
                        cmd, end = parse_command(buf, start)
                    except IncompleteResp:
                        break
                    self.commands += 1
                    decision = self._decide(cmd)
                    if decision == "before":
                        link.server_w.write(bytes(buf[:start]))
                        link.close()
                        return
                    link.pending.append(decision == "after")
                    if command_name(cmd) in _SUBSCRIBING:
                        link.passthrough = True
                    start = end
                    if link.passthrough:
                        start = len(buf)
                        break
                if start:
                    link.server_w.write(bytes(buf[:start]))
                    del buf[:start]
        except (ConnectionError, OSError):
            pass
        finally:
            link.close()

    async def _server_to_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        try:
            while not link.closed:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
                start = 0
                while not link.passthrough:
                    try:
                        end = skip_reply(buf, start)
                    except IncompleteResp:
                        break
                    cut = link.pending.popleft() if link.pending else False
                    if cut:
                        link.client_w.write(bytes(buf[:start]))
                        link.close()
                        return
                    start = end
                if link.passthrough:
                    start = len(buf)
                if start:
                    link.client_w.write(bytes(buf[:start]))
                    del buf[:start]
        except (ConnectionError, OSError):
            pass
        finally:
            link.close()
