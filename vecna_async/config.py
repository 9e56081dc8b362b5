"""Configuration: ``Config`` and ``RedisConfig``, from code, a YAML file or the environment.

Field names follow the seed's YAML where the seed has them (``broker``, ``default_queue``,
``result_backend``, ``results_expire_in``, ``redis.max_active``, ``redis.read_timeout``, ...).

Precedence: ``Config(...)`` in code reads nothing else; ``Config.from_yaml(path)`` is the YAML
file with the ``VECNA_*`` environment on top (code defaults < YAML < environment, so a deployment
overrides a committed file, and secrets never need to be in it); ``Config.from_env()`` is the
defaults with the environment on top. Every value is checked when the Config is built: a wrong
type, an unknown field or ``VECNA_*`` variable, an unusable URL or a TLS file that does not exist
is a ``ConfigError`` naming the field (or the variable) at load, not a surprise at connect time.

>>> cnf = Config(broker="redis://127.0.0.1:6379/0", default_queue="emails")
>>> cnf.redis.lease_timeout
30.0
>>> Config(broker="redis://app:s3cret@10.0.0.5/0", signing_keys=["0123456789abcdef"])
Config(broker='redis://app:***@10.0.0.5/0', signing_keys=['***'])
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from vecna_async import config_env, memory
from vecna_async.exceptions import ConfigError

MASK = "***"


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
    # Credentials for the broker's and the result backend's Redis, kept out of the URLs (so a
    # URL can live in a committed file and the secret in VECNA_REDIS_PASSWORD or a mounted
    # VECNA_REDIS_PASSWORD_FILE). When set they replace the URL's own user and password.
    username: str = ""
    password: str = ""
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
    # A message parked because no worker that claimed it knew its task is dead-lettered (with
    # the reason "no worker for task X within N s") once it has been parked this long (s).
    parked_max_age: int = 86_400
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
        _check_types(self)
        for name in _POSITIVE_REDIS:
            _positive(self, name)
        for name in ("max_active", "wait_replicas", "retries"):
            _positive(self, name, allow_zero=True)
        if self.claim_batch > 1000:
            raise ConfigError(f"redis.claim_batch must be <= 1000, got {self.claim_batch}")
        if self.heartbeat_interval >= self.lease_timeout:
            raise ConfigError(
                f"redis.heartbeat_interval ({self.heartbeat_interval}) must be shorter than "
                f"redis.lease_timeout ({self.lease_timeout}), or leases expire between heartbeats"
            )
        for name in ("tls_ca_certs", "tls_certfile", "tls_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"redis.{name}: no such file {path!r}")
        if self.tls_keyfile and not self.tls_certfile:
            raise ConfigError("redis.tls_keyfile: set redis.tls_certfile too (the client cert)")

    def __repr__(self) -> str:
        return _masked_repr(self)


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything a Server needs.

    broker: a Redis URL (see the README's URL table). result_backend: None keeps states and
    results on the broker's Redis (fastest: results are written in the same script as the ack).
    results_expire_in: seconds states and results are kept (the setting of the worker that
    finishes a task is the one that applies). shutdown_grace: seconds a stopping worker waits
    for running tasks before it hands their messages back. signing_keys: secrets that sign and
    verify every message (HMAC-SHA256); the first signs, every one verifies, so keys rotate by
    putting the new one first; empty: messages are not signed. ``repr()`` masks passwords and
    keys.
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
        _check_types(self)
        _positive(self, "results_expire_in")
        _positive(self, "shutdown_grace", allow_zero=True)
        if not self.default_queue:
            raise ConfigError("default_queue must not be empty")
        if not self.broker:
            raise ConfigError("broker must not be empty (a URL such as redis://host:6379/0)")
        _check_url(self.broker, "broker", self.redis.master_name)
        if self.result_backend:
            _check_url(self.result_backend, "result_backend", self.redis.master_name)
        memory.check_config(self.broker, self.result_backend, self.redis.wait_replicas)
        for i, key in enumerate(self.signing_keys):
            if len(key) < MIN_SIGNING_KEY_LENGTH:  # the message never shows the key
                raise ConfigError(
                    f"signing_keys must be at least {MIN_SIGNING_KEY_LENGTH} characters each "
                    f"(key {i + 1} of {len(self.signing_keys)} has {len(key)})"
                )

    def __repr__(self) -> str:
        return _masked_repr(self)

    @property
    def backend_url(self) -> str:
        """The result backend's URL (the broker's when ``result_backend`` is unset)."""
        return self.result_backend or self.broker

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], environ: dict[str, str] | None = None
    ) -> Config:
        """Load a YAML file with the seed's field names, then apply the ``VECNA_*`` variables of
        ``environ`` (default: ``os.environ``; pass ``{}`` for the file alone) on top. A bad field
        is named in the error with the file, a bad variable by its name."""
        data = Path(path).read_bytes()
        try:
            from_file = msgspec.yaml.decode(data, type=cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        env = os.environ if environ is None else environ
        if not config_env.variables(env):
            return from_file
        return config_env.load(cls, env, base=msgspec.to_builtins(from_file))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Read ``VECNA_*`` variables over the defaults: ``VECNA_BROKER``, ``VECNA_DEFAULT_QUEUE``,
        ``VECNA_RESULT_BACKEND``, ``VECNA_RESULTS_EXPIRE_IN``, ``VECNA_SHUTDOWN_GRACE``,
        ``VECNA_SIGNING_KEYS`` (comma-separated) and ``VECNA_REDIS_<FIELD>`` for every
        RedisConfig field (``VECNA_REDIS_MAX_ACTIVE=50``, ``VECNA_REDIS_PASSWORD``). Each may be
        given as ``<NAME>_FILE`` instead, naming a file that holds the value (a mounted secret).
        An unknown ``VECNA_*`` variable or a bad value is a ConfigError naming the variable."""
        env = os.environ if environ is None else environ
        return config_env.load(cls, env, base={})


MIN_SIGNING_KEY_LENGTH = 16
_POSITIVE_REDIS = (
    "max_deliveries", "claim_batch", "max_message_bytes", "max_result_bytes", "dead_letters_max",
    "dead_letters_max_age", "parked_max_age", "wait_timeout", "lease_timeout",
    "heartbeat_interval", "read_timeout", "connect_timeout", "normal_tasks_poll_period",
    "delayed_tasks_poll_period",
)  # fmt: skip
_SECRET_FIELDS = frozenset({"password", "sentinel_password"})
_URL_FIELDS = frozenset({"broker", "result_backend", "lock"})


def _section(obj: object) -> str:
    return "redis." if isinstance(obj, RedisConfig) else ""


def _check_types(obj: msgspec.Struct) -> None:
    """msgspec checks types when it decodes, not when code builds a Struct: check them here, so
    ``Config(results_expire_in="soon")`` is a ConfigError naming the field, not a TypeError
    from a comparison later."""
    for field in msgspec.structs.fields(obj):
        value = getattr(obj, field.name)
        try:
            if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
                if not isinstance(value, field.type):  # convert() would accept a dict
                    what = type(value).__name__
                    raise msgspec.ValidationError(f"Expected `{field.type.__name__}`, got `{what}`")
            else:
                msgspec.convert(value, field.type)
        except msgspec.ValidationError as exc:
            shown = MASK if field.name in _SECRET_FIELDS else repr(value)
            raise ConfigError(
                f"{_section(obj)}{field.name}: {exc} ({shown})".replace(" - at `$`", "")
            ) from None


def _positive(obj: object, name: str, *, allow_zero: bool = False) -> None:
    value = getattr(obj, name)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{_section(obj)}{name} must be {bound}, got {value!r}")


def _check_url(url: str, field: str, master_name: str) -> None:
    """Parse the URL now, so a typo in it fails at load rather than at the first connect."""
    from vecna_async.connection import parse_url  # connection.py imports this module

    parse_url(url, field_name=field, master_name=master_name)


def mask_url(url: str) -> str:
    """The URL with its password (the user-info part) replaced by ``***``.

    >>> mask_url("redis://user:pw@host:6379/0"), mask_url("redis://pw@host")
    ('redis://user:***@host:6379/0', 'redis://***@host')
    """
    scheme, sep, rest = url.partition("://")
    auth, at, tail = rest.rpartition("@")
    if not (at and auth):
        return url
    user, colon, _ = auth.partition(":")
    shown = f"{user}:{MASK}" if colon else MASK
    return f"{scheme}{sep}{shown}@{tail}"


def _masked_repr(obj: msgspec.Struct) -> str:
    """``repr`` without secrets: URL passwords, ``password`` fields and signing keys are masked;
    fields at their default are left out."""
    parts = []
    for field in msgspec.structs.fields(obj):
        value = getattr(obj, field.name)
        default = (
            field.default_factory()
            if field.default_factory is not msgspec.NODEFAULT
            else field.default
        )
        if value == default:
            continue
        if field.name in _URL_FIELDS and isinstance(value, str):
            value = mask_url(value)
        elif field.name in _SECRET_FIELDS and value:
            value = MASK
        elif field.name == "signing_keys":
            value = [MASK for _ in value]
        parts.append(f"{field.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"
