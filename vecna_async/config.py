"""Configuration: ``Config`` and ``RedisConfig``, from code, a YAML file or the environment.

Field names follow the seed's YAML where the seed has them (``broker``, ``default_queue``,
``result_backend``, ``results_expire_in``, ``redis.max_active``, ``redis.read_timeout``, ...).

>>> cnf = Config(broker="redis://127.0.0.1:6379/0", default_queue="emails")
>>> cnf.redis.lease_timeout
30.0
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec

from vecna_async.exceptions import ConfigError


class RedisConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Connection pools, timeouts, key names and delivery settings (times in seconds unless the
    name says ms). Pool and timeout fields keep the seed's names; polling is only a safety net,
    wake-ups come from Redis."""

    # Pool: connections a pool may open (0 = no limit); with `wait`, a caller waits for a free
    # one instead of failing. max_idle and max_idle_timeout: idle connections kept, and seconds
    # before an idle connection is health-checked again.
    max_idle: int = 10
    max_active: int = 100
    max_idle_timeout: int = 300
    wait: bool = True
    # Socket timeouts, and how often redis-py retries a command after a dropped connection or a
    # timeout before the error reaches us (every vecna script is safe to run twice).
    read_timeout: float = 15.0
    write_timeout: float = 15.0
    connect_timeout: float = 15.0
    retries: int = 3
    # The longest an idle worker waits before it looks at its queue again, and the longest a
    # scheduler sleeps before it looks at the delayed set again (both ms).
    normal_tasks_poll_period: int = 1000
    delayed_tasks_poll_period: int = 1000
    # Every key starts with this prefix (keys.py has the layout).
    key_prefix: str = "vecna"
    # Delivery: a claimed message stays with its worker for lease_timeout without a heartbeat;
    # workers renew every heartbeat_interval; a message handed out max_deliveries times without
    # an ack goes to the dead-letter set; one claim takes at most claim_batch messages; an
    # encoded message may be at most max_message_bytes.
    lease_timeout: float = 30.0
    heartbeat_interval: float = 10.0
    max_deliveries: int = 5
    claim_batch: int = 100
    max_message_bytes: int = 16 * 1024 * 1024
    # A task whose encoded result is larger than this fails with ResultTooLarge instead.
    max_result_bytes: int = 16 * 1024 * 1024
    # Dead letters kept per queue: at most dead_letters_max (the oldest go first), none older
    # than dead_letters_max_age seconds.
    dead_letters_max: int = 10_000
    dead_letters_max_age: int = 7 * 86_400
    # Durability with replicas (Sentinel, or a replicated master): with wait_replicas > 0 every
    # send and every settle waits (Redis WAIT) until that many replicas have it, at most
    # wait_timeout seconds, and counts as failed otherwise. 0: Redis's asynchronous replication.
    wait_replicas: int = 0
    wait_timeout: float = 1.0
    # Sentinel (master_name may also come from the URL) and TLS for rediss:// URLs.
    master_name: str = ""
    sentinel_password: str = ""
    tls_ca_certs: str = ""
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_verify: bool = True
    # Accepted so a seed config.yml loads unchanged; vecna_async builds every key name from
    # key_prefix (keys.py), so these are not used.
    delayed_tasks_key: str = ""
    delayed_tasks_cache_key: str = ""
    periodic_tasks_key: str = ""
    canceled_tasks_key: str = ""

    def __post_init__(self) -> None:
        _positive(self, "max_active", allow_zero=True)
        _positive(self, "max_deliveries")
        _positive(self, "claim_batch")
        _positive(self, "max_message_bytes")
        _positive(self, "max_result_bytes")
        _positive(self, "dead_letters_max")
        _positive(self, "dead_letters_max_age")
        _positive(self, "wait_replicas", allow_zero=True)
        _positive(self, "wait_timeout")
        _positive(self, "lease_timeout")
        _positive(self, "heartbeat_interval")
        _positive(self, "read_timeout")
        _positive(self, "connect_timeout")
        _positive(self, "normal_tasks_poll_period")
        _positive(self, "delayed_tasks_poll_period")
        _positive(self, "retries", allow_zero=True)
        if self.claim_batch > 1000:
            raise ConfigError(f"redis.claim_batch must be <= 1000, got {self.claim_batch}")
        if self.heartbeat_interval >= self.lease_timeout:
            raise ConfigError(
                f"redis.heartbeat_interval ({self.heartbeat_interval}) must be shorter than "
                f"redis.lease_timeout ({self.lease_timeout}), or leases expire between heartbeats"
            )


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything a Server needs.

    broker: a Redis URL (see the README's URL table). result_backend: None keeps states and
    results on the broker's Redis (fastest: results are written in the same script as the ack).
    results_expire_in: seconds states and results are kept. shutdown_grace: seconds a stopping
    worker waits for running tasks before it hands their messages back. signing_keys: secrets
    that sign and verify every message (HMAC-SHA256); the first signs, every one verifies, so
    keys rotate by putting the new one first; empty: messages are not signed.
    """

    broker: str = "redis://127.0.0.1:6379/0"
    default_queue: str = "vecna_tasks"
    result_backend: str | None = None
    results_expire_in: int = 3600
    shutdown_grace: float = 30.0
    lock: str = ""  # the seed's lock URL; accepted for compatibility, not used
    signing_keys: list[str] = []
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)

    def __post_init__(self) -> None:
        _positive(self, "results_expire_in")
        _positive(self, "shutdown_grace", allow_zero=True)
        if not self.default_queue:
            raise ConfigError("default_queue must not be empty")
        for i, key in enumerate(self.signing_keys):
            if len(key) < MIN_SIGNING_KEY_LENGTH:  # the message never shows the key
                raise ConfigError(
                    f"signing_keys must be at least {MIN_SIGNING_KEY_LENGTH} characters each "
                    f"(key {i + 1} of {len(self.signing_keys)} has {len(key)})"
                )

    @property
    def backend_url(self) -> str:
        """The result backend's URL (the broker's when ``result_backend`` is unset)."""
        return self.result_backend or self.broker

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Config:
        """Load a YAML file with the seed's field names; a bad field is named in the error."""
        data = Path(path).read_bytes()
        try:
            return msgspec.yaml.decode(data, type=cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Read ``VECNA_*`` variables: ``VECNA_BROKER``, ``VECNA_DEFAULT_QUEUE``,
        ``VECNA_RESULT_BACKEND``, ``VECNA_RESULTS_EXPIRE_IN``, ``VECNA_SHUTDOWN_GRACE`` and
        ``VECNA_REDIS_<FIELD>`` for every RedisConfig field (``VECNA_REDIS_MAX_ACTIVE=50``).
        ``VECNA_SIGNING_KEYS`` is a comma-separated list (blanks around the commas and empty
        items are dropped). Unset variables keep their defaults; a value of the wrong type
        names the variable."""
        env = os.environ if environ is None else environ
        top: dict[str, Any] = {}
        redis: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            if field.name != "redis" and f"VECNA_{field.name.upper()}" in env:
                value = env[f"VECNA_{field.name.upper()}"]
                if field.name in _LIST_FIELDS:  # strict=False makes no list from a string
                    top[field.name] = [x.strip() for x in value.split(",") if x.strip()]
                else:
                    top[field.name] = value
        for field in msgspec.structs.fields(RedisConfig):
            var = f"VECNA_REDIS_{field.name.upper()}"
            if var in env:
                redis[field.name] = env[var]
        if redis:
            top["redis"] = redis
        try:
            return msgspec.convert(top, type=cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"environment: {_env_path(str(exc))}") from None


MIN_SIGNING_KEY_LENGTH = 16
_LIST_FIELDS = frozenset({"signing_keys"})


def _positive(obj: object, name: str, *, allow_zero: bool = False) -> None:
    value = getattr(obj, name)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        section = "redis." if isinstance(obj, RedisConfig) else ""
        raise ConfigError(f"{section}{name} must be {bound}, got {value!r}")


def _env_path(message: str) -> str:
    """Name the variable the user set: msgspec's ``$.redis.max_active`` path, or the field our own
    checks name (``redis.max_active must be >= 0``), becomes ``VECNA_REDIS_MAX_ACTIVE``."""
    text, _, where = message.partition(" - at `$")
    own = re.match(r"(?P<path>(redis\.)?[a-z_]+)( \([^)]*\))? must ", text)
    path = own["path"] if own else where.strip("`.")
    if not path:
        return text
    return f"VECNA_{path.replace('.', '_').upper()}: {text}"
