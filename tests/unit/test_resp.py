"""The pinned connection's own RESP packing must produce exactly what redis-py would send."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from vecna_async.pinned import _pack

CASES: list[tuple[Any, ...]] = [
    ("PING",),
    ("EVALSHA", "a" * 40, 1, "{q}:k", b"\x00\xff\r\n", 12, -3, 1.5, 1e-7, "é"),
    ("SET", "k", "x" * 7000),  # redis-py sends large values as separate buffers
    ("SET", "k", b"y" * 100_000),
    ("ECHO", ""),
]


@pytest.mark.parametrize("args", CASES, ids=range(len(CASES)))
def test_pack_matches_redis_py(args: tuple[Any, ...]) -> None:
    expected = b"".join(Connection().pack_command(*args))
    assert _pack(args) == expected
