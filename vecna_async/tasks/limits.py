"""Limits across all workers: ``concurrency_limit`` and ``rate_limit`` of a task.

They travel with each message and are enforced by the claim script (``lua/_lib.lua``,
``limits_take``), so they hold across every worker and process consuming the queue: a message
over its limit is held aside and tried again when a delivery of its task ends (concurrency) or
its rate window has room (rate), without holding up other tasks behind it.

>>> parse_rate_limit("100/s")
(100, 1000)
>>> limits_spec(3, "10/m")
'c=3;r=10/60000'
"""

from __future__ import annotations

import functools
import re

_PERIODS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


@functools.lru_cache(maxsize=256)
def parse_rate_limit(rate: str) -> tuple[int, int]:
    """``"100/s"`` (also ``/m``, ``/h``) -> (count, period in ms). Raises ValueError naming it.
    Cached: a task's limit is one string, parsed by its Signature and again for its message."""
    match = _RATE.match(rate)
    if match is None or int(match[1]) < 1:
        raise ValueError(
            f"rate_limit {rate!r} is not valid: expected '<count>/<s|m|h>' with a count >= 1, "
            "e.g. '100/s', '30/m', '1000/h'"
        )
    return int(match[1]), _PERIODS_MS[match[2]]


def check_concurrency_limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"concurrency_limit must be >= 0 (0 = none), got {limit}")
    return limit


def limits_spec(concurrency_limit: int, rate_limit: str) -> str:
    """The limits as the claim script reads them ("" when the task has none)."""
    parts = []
    if concurrency_limit:
        parts.append(f"c={concurrency_limit}")
    if rate_limit:
        count, period_ms = parse_rate_limit(rate_limit)
        parts.append(f"r={count}/{period_ms}")
    return ";".join(parts)
