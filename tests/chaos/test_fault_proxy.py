"""The fault proxy itself: RESP framing, and cuts that land before or after Redis runs a command."""

from __future__ import annotations

import itertools
from typing import Literal

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.fault_proxy import (
    CutRule,
    FaultProxy,
    IncompleteResp,
    command_name,
    parse_command,
    skip_reply,
)
from tests.support.redis_procs import RedisProcess

pytestmark = pytest.mark.chaos


def test_commands_and_replies_are_framed_across_chunks() -> None:
    wire = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nv1\r\n*1\r\n$4\r\nPING\r\n"
    cmd, end = parse_command(wire)
    assert cmd == [b"SET", b"k", b"v\r\nv1"]
    assert parse_command(wire, end) == ([b"PING"], len(wire))
    for cut in range(1, end):
        with pytest.raises(IncompleteResp):
            parse_command(wire[:cut])
    replies = b"+OK\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$2\r\nab\r\n%1\r\n+k\r\n_\r\n>2\r\n+a\r\n+b\r\n"
    bounds = [0]
    while bounds[-1] < len(replies):
        bounds.append(skip_reply(replies, bounds[-1]))
    assert len(bounds) == 6  # +OK, a null, a nested array, a RESP3 map, a RESP3 push
    for start, end in itertools.pairwise(bounds):
        for cut in range(start + 1, end):
            with pytest.raises(IncompleteResp):
                skip_reply(replies[:cut], start)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_cut_lands_before_or_after_redis_runs_the_command(
    broker_proc: RedisProcess, when: Literal["before", "after"]
) -> None:
    direct = broker_proc.client()
    with FaultProxy(broker_proc.address) as proxy:
        proxy.rules = [
            CutRule(lambda c: command_name(c) == "SET" and c[1] == b"cut", every=2, when=when)
        ]
        client = redis.Redis(host=proxy.address[0], port=proxy.port, retry=Retry(NoBackoff(), 0))
        client.set("cut", "1")  # the first match passes
        with pytest.raises(redis.ConnectionError):
            client.set("cut", "2")  # the second is cut
        assert direct.get("cut") == (b"2" if when == "after" else b"1")
        assert client.set("other", "x")  # a new connection goes through
        assert proxy.cuts() == 1
        client.close()
    direct.close()
