"""redis-py's errors, turned into ours at the edge (every Redis call goes through ``redis_errors``).

Two kinds matter to a caller: Redis could not be reached (``BrokerUnavailable``: refused, timed
out, the connection dropped, a cluster node unknown), or Redis answered with an error reply
(``BrokerRefused``, naming the reply). Replies that go away by themselves (out of memory, a
read-only replica after a failover, a busy script, a loading or migrating server, a cluster
that is down) are ``BrokerRefused.transient``: the worker's loops back off and retry those and
keep the outcomes they hold; ``send_task`` raises them to the caller. Credentials Redis refuses
(``WRONGPASS``, ``NOAUTH``: redis-py raises those as a kind of ConnectionError) are a
``BrokerRefused`` that is not transient, never an outage to wait out: a worker that starts with
a wrong password stops at once. The redis-py exception is kept as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vecna_async.exceptions import BrokerError, BrokerRefused, BrokerUnavailable

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)
"""Errors that mean Redis cannot be reached right now (as opposed to an answer from it)."""


@contextmanager
def redis_errors(where: str, doing: str = "") -> Iterator[None]:
    """Re-raise redis-py's errors as vecna's, saying where (and what we were doing)."""
    try:
        yield
    except (AuthenticationError, AuthorizationError) as exc:  # before REDIS_DOWN: a subclass
        raise BrokerRefused(where, auth_reply(exc), doing) from exc
    except REDIS_DOWN as exc:
        raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
    except ResponseError as exc:
        raise BrokerRefused(where, reply_text(exc), doing) from exc
    except ClusterError as exc:  # redis-py gave up after a run of TRYAGAIN / ASK / MOVED replies
        reply = f"TRYAGAIN the cluster is resharding or failing over (redis-py: {exc})"
        raise BrokerRefused(where, reply, doing) from exc
    except RedisError as exc:
        what = f" {doing}" if doing else ""
        raise BrokerError(f"Redis at {where} failed{what}: {exc}") from exc


def reply_text(exc: ResponseError) -> str:
    """Redis's error reply as Redis wrote it: redis-py strips the code ("OOM", "READONLY" ...)
    off the message of the replies it has a class for, and keeps it as ``status_code``."""
    message = str(exc)
    code = getattr(exc, "status_code", None)
    if code and not message.startswith(f"{code} "):
        return f"{code} {message}"
    return message


def auth_reply(exc: AuthenticationError | AuthorizationError) -> str:
    """The refusal with Redis's code: redis-py strips it, and raises some without one (``ERR
    invalid password`` of old servers)."""
    code = getattr(exc, "status_code", None)
    if not code:
        code = "NOPERM" if isinstance(exc, AuthorizationError) else "WRONGPASS"
    return f"{code} {exc}"


def is_transient(exc: BaseException) -> bool:
    """An error a long-running loop (claim, settle, heartbeat, scheduler) waits out and retries."""
    return isinstance(exc, BrokerUnavailable) or (isinstance(exc, BrokerRefused) and exc.transient)
