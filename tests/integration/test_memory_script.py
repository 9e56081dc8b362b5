"""``benchmarks/memory.py``, the script the README's capacity guide quotes, runs and cleans up."""

from __future__ import annotations

import redis

from benchmarks.memory import main


def test_the_memory_script_measures_every_kind_and_leaves_nothing(redis_url: str) -> None:
    out = main(["--url", redis_url, "--count", "50", "--prefix", "memcheck"])
    for kind in ("queued task", "result kept", "delayed task", "periodic entry", "periodic code"):
        assert kind in out
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter("memcheck:*")) == []
    finally:
        client.close()
