"""``vecna_async.preflight``: the verdict on parsed INFO fields (the Redis installed here is too
new to drive the version check for real)."""

from __future__ import annotations

from typing import Any

import pytest

from vecna_async import UnsupportedRedis
from vecna_async.preflight import _config_value, _info_dict, judge, parse_version

WHERE = "redis://127.0.0.1:1234/0"
GOOD: dict[str, Any] = {
    "redis_version": "7.0.15",
    "maxmemory_policy": "noeviction",
    "aof_enabled": 1,
}


def test_old_redis_is_refused() -> None:
    with pytest.raises(UnsupportedRedis) as info:
        judge({**GOOD, "redis_version": "6.2.14"}, "", WHERE)
    assert str(info.value) == (
        "Redis 6.2.14 at redis://127.0.0.1:1234/0: vecna_async needs Redis 7.0 or newer"
    )


@pytest.mark.parametrize("version", ["7.0.0", "7.0.15", "7.2.4", "8.0.2", "10.0.0", "7.4.0-rc1"])
def test_supported_versions(version: str) -> None:
    assert judge({**GOOD, "redis_version": version}, "3600 1", WHERE) == []


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("7.0.15", (7, 0, 15)), ("6.2", (6, 2)), (7.2, (7, 2)), ("7.4.0-rc1", (7, 4, 0)), ("x", None)],
)
def test_parse_version(text: object, parsed: tuple[int, ...] | None) -> None:
    assert parse_version(text) == parsed


def test_missing_fields_are_not_judged() -> None:
    assert judge({}, None, WHERE) == []
    assert judge({"redis_version": "weird"}, None, WHERE) == []


def test_eviction_policy_warns() -> None:
    (warning,) = judge({**GOOD, "maxmemory_policy": "allkeys-lru"}, "", WHERE)
    assert warning == (
        f"Redis at {WHERE} evicts keys under memory pressure (maxmemory-policy allkeys-lru): "
        "queued tasks and results can silently disappear; set maxmemory-policy noeviction"
    )


@pytest.mark.parametrize(
    ("aof", "save", "warns"),
    [
        (1, "", None),
        (0, "3600 1 300 100", None),
        (0, "", "keeps nothing on disk"),
        (0, "  ", "keeps nothing on disk"),
        ("0", "", "keeps nothing on disk"),
        (0, None, "CONFIG GET save is refused"),
        (1, None, None),
    ],
)
def test_persistence(aof: object, save: str | None, warns: str | None) -> None:
    warnings = judge({**GOOD, "aof_enabled": aof}, save, WHERE)
    if warns is None:
        assert warnings == []
    else:
        (warning,) = warnings
        assert warns in warning
        assert warning.startswith(f"Redis at {WHERE} ")
        assert warning.endswith("a restart loses every queued task; enable appendonly yes")


def test_several_warnings() -> None:
    info = {"redis_version": "7.2.0", "maxmemory_policy": "volatile-ttl", "aof_enabled": 0}
    assert len(judge(info, "", WHERE)) == 2


def test_raw_replies_parse() -> None:
    raw = b"# Server\r\nredis_version:7.0.15\r\n\r\n# Memory\r\nmaxmemory_policy:allkeys-lru\r\n"
    assert _info_dict(raw) == {"redis_version": "7.0.15", "maxmemory_policy": "allkeys-lru"}
    assert _info_dict({b"aof_enabled": 0}) == {"aof_enabled": 0}
    assert _config_value({b"save": b""}, "save") == ""
    assert _config_value([b"save", b"3600 1"], "save") == "3600 1"
    assert _config_value({}, "save") is None
