"""Startup checks: is this Redis one vecna_async can keep its promises on?

Run once per process when a worker or an embedded scheduler starts (``Runtime.preflight``):

* ``redis_version`` older than 7.0: ``UnsupportedRedis`` (the scripts need Redis 7).
* ``maxmemory_policy`` other than ``noeviction``: a warning — Redis may evict queued messages,
  leases and results under memory pressure, silently.
* nothing on disk (``aof_enabled:0`` and no RDB save points): a warning — a restart loses every
  queued task. ``CONFIG GET save`` is often disabled on managed Redis; then only AOF is judged.

Missing INFO fields (a proxy, a fork that leaves some out, an ACL that refuses INFO) are not
judged. On a Cluster every master is checked and the warnings name the node.

``check_channels`` makes sure the Redis user may use vecna's pub/sub channels: an ACL user made
without channel rights (Redis 7's default, ``acl-pubsub-default resetchannels``) can run every
script but gets ``NOPERM`` on ``SUBSCRIBE``, so its schedulers would never be woken and its result
waiters would wait for the re-read. That is refused at start (``BrokerRefused``, naming the
channels and the ACL rule to add) instead of being retried, with warnings, for ever.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from vecna_async.broker.redis import unavailable_as
from vecna_async.connection import AnyRedis, text
from vecna_async.exceptions import BrokerRefused, BrokerUnavailable, UnsupportedRedis

log = logging.getLogger("vecna_async.preflight")
MIN_VERSION = (7, 0)
SECTIONS = ("server", "memory", "persistence")


async def check_redis(client: AnyRedis, where: str) -> list[str]:
    """Check the Redis behind ``client`` (``where`` names it in the messages); return the
    warnings. Raises UnsupportedRedis for a Redis older than 7.0, BrokerUnavailable if it cannot
    be reached."""
    async with unavailable_as(where):
        if isinstance(client, RedisCluster):
            await client.initialize()
            warnings: list[str] = []
            for node in client.get_primaries():
                info, save = await _read(node)
                warnings += judge(info, save, f"{where} (master {node.name})")
            return warnings
        info, save = await _read(client)
    return judge(info, save, where)


async def check_channels(
    client: AnyRedis, where: str, channels: list[str], timeout: float, prefix: str
) -> None:
    """Subscribe to ``channels`` and leave again; raises BrokerRefused (``NOPERM ...``, with the
    ACL rule that fixes it: ``&<prefix>:*``) when the user may not, BrokerUnavailable when Redis
    cannot be reached or does not confirm within ``timeout`` seconds."""
    pubsub = client.pubsub()
    try:
        async with unavailable_as(where, "subscribing to its channels"):
            await pubsub.subscribe(*channels)
            confirmed = 0
            with anyio.move_on_after(timeout):
                while confirmed < len(channels):
                    msg = await pubsub.get_message(timeout=timeout)
                    if msg and msg.get("type") == "subscribe":
                        confirmed += 1
        if confirmed < len(channels):
            raise BrokerUnavailable(
                f"cannot reach Redis at {where}: SUBSCRIBE was not confirmed within {timeout:g}s"
            )
    except BrokerRefused as exc:
        if not exc.reply.startswith("NOPERM"):
            raise
        raise BrokerRefused(
            where,
            f"{exc.reply} (vecna_async publishes and subscribes to {', '.join(channels)}: let "
            f"the Redis user use its channels: ACL SETUSER <user> &{prefix}:*)",
            "subscribing to its channels",
        ) from exc
    finally:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _read(target: Redis | ClusterNode) -> tuple[dict[str, Any], str | None]:
    """INFO server, memory and persistence (one at a time: Redis < 7 takes one section), and
    the RDB save points (None when CONFIG GET is refused)."""
    info: dict[str, Any] = {}
    for section in SECTIONS:
        try:
            reply = await target.execute_command("INFO", section)
        except ResponseError as exc:  # NOPERM, a proxy without INFO ...: judge what we have
            log.debug("INFO %s refused: %s", section, exc)
            continue
        info.update(_info_dict(reply))
    try:
        reply = await target.execute_command("CONFIG", "GET", "save")
    except ResponseError as exc:  # CONFIG disabled or renamed (managed Redis)
        log.debug("CONFIG GET save refused: %s", exc)
        return info, None
    return info, _config_value(reply, "save")


def _info_dict(reply: Any) -> dict[str, Any]:
    """redis-py parses INFO into a dict; a raw reply (no callback) is parsed here."""
    if isinstance(reply, Mapping):
        return {text(k): v for k, v in reply.items()}
    fields: dict[str, Any] = {}
    for line in text(reply).splitlines():
        key, colon, value = line.partition(":")
        if colon and not line.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def _config_value(reply: Any, name: str) -> str | None:
    if isinstance(reply, Mapping):
        for k, v in reply.items():
            if text(k) == name:
                return text(v)
        return None
    if isinstance(reply, list | tuple):
        for k, v in zip(reply[::2], reply[1::2], strict=False):
            if text(k) == name:
                return text(v)
    return None


def parse_version(value: object) -> tuple[int, ...] | None:
    """``"7.0.15"`` -> (7, 0, 15); None when it does not start with a number."""
    numbers = re.match(r"\s*(\d+(?:\.\d+)*)", str(value))
    return tuple(int(x) for x in numbers.group(1).split(".")) if numbers else None


def judge(info: Mapping[str, Any], save: str | None, where: str) -> list[str]:
    """The verdict on one Redis from its INFO fields and its ``save`` setting (None: unknown).
    Raises UnsupportedRedis; returns the warnings."""
    version = parse_version(info["redis_version"]) if "redis_version" in info else None
    if version is not None and version < MIN_VERSION:
        raise UnsupportedRedis(
            f"Redis {info['redis_version']} at {where}: vecna_async needs Redis "
            f"{'.'.join(map(str, MIN_VERSION))} or newer"
        )
    warnings = []
    policy = str(info.get("maxmemory_policy", "noeviction")).strip()
    if policy != "noeviction":
        warnings.append(
            f"Redis at {where} evicts keys under memory pressure (maxmemory-policy {policy}): "
            "queued tasks and results can silently disappear; set maxmemory-policy noeviction"
        )
    aof = info.get("aof_enabled")
    if aof is not None and str(aof).strip() == "0":
        if save is None:
            warnings.append(
                f"Redis at {where} has AOF off (appendonly no) and its RDB save points cannot be "
                "read (CONFIG GET save is refused): unless it snapshots to disk, a restart loses "
                "every queued task; enable appendonly yes"
            )
        elif not save.strip():
            warnings.append(
                f"Redis at {where} keeps nothing on disk (appendonly no, no RDB save points): "
                "a restart loses every queued task; enable appendonly yes"
            )
    return warnings
