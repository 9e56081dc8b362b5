"""``VECNA_*`` environment variables into a Config (``Config.from_env`` and ``from_yaml``).

Every field has a variable: ``VECNA_<FIELD>`` for Config's own fields, ``VECNA_REDIS_<FIELD>`` for
RedisConfig's, and each may come from a file instead, ``<VARIABLE>_FILE`` naming it (how
Kubernetes and Docker mount secrets; one trailing newline is dropped). The namespace is strict:
a ``VECNA_*`` variable that names no field is an error (with the closest name), because a typo
such as ``VECNA_BROKR`` would otherwise silently leave the default broker in place -- on a shared
host, another application's Redis.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from vecna_async.exceptions import ConfigError

PREFIX = "VECNA_"
FILE_SUFFIX = "_FILE"
LIST_FIELDS = frozenset({"signing_keys"})  # comma- (or line-) separated in a variable
T = TypeVar("T", bound=msgspec.Struct)


def known_variables(cls: type[msgspec.Struct]) -> dict[str, tuple[str, ...]]:
    """Each variable name -> the path of its field (``("redis", "max_active")``)."""
    out: dict[str, tuple[str, ...]] = {}
    for field in msgspec.structs.fields(cls):
        if field.name == "redis":
            for sub in msgspec.structs.fields(field.type):
                out[f"{PREFIX}REDIS_{sub.name.upper()}"] = ("redis", sub.name)
        else:
            out[f"{PREFIX}{field.name.upper()}"] = (field.name,)
    return out


def variables(env: Mapping[str, str]) -> list[str]:
    """The ``VECNA_*`` names set in ``env``."""
    return sorted(name for name in env if name.startswith(PREFIX))


def load(cls: type[T], env: Mapping[str, str], base: dict[str, Any]) -> T:
    """``base`` (field values, e.g. from a YAML file) with the variables of ``env`` on top."""
    known = known_variables(cls)
    data = dict(base)
    data["redis"] = dict(base.get("redis") or {})
    for name in variables(env):
        var, value = _read(name, env, known)
        path = known[var]
        target = data if len(path) == 1 else data["redis"]
        target[path[-1]] = _shaped(path[-1], value)
    if not data["redis"]:
        del data["redis"]
    try:
        return msgspec.convert(data, type=cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"environment: {env_path(str(exc))}") from None


def _read(name: str, env: Mapping[str, str], known: Mapping[str, Any]) -> tuple[str, str]:
    """The variable a name sets and its value (read from the file for ``<VARIABLE>_FILE``)."""
    if name in known:
        return name, env[name]
    var = name.removesuffix(FILE_SUFFIX)
    if var == name or var not in known:
        names = [*known, *(f"{k}{FILE_SUFFIX}" for k in known)]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"environment: {name}: not a vecna_async setting{hint}; every VECNA_* variable must "
            "name a Config or RedisConfig field (see Config.from_env)"
        )
    if var in env:
        raise ConfigError(f"environment: {var} and {name} are both set; set one of them")
    try:
        text = Path(env[name]).read_text()
    except OSError as exc:
        raise ConfigError(
            f"environment: {name}: cannot read {env[name]!r}: {exc.strerror or exc}"
        ) from None
    return var, text.removesuffix("\n").removesuffix("\r")


def _shaped(field: str, value: str) -> Any:
    if field in LIST_FIELDS:  # msgspec's lax mode makes no list from a string
        return [x.strip() for x in re.split(r"[,\n]", value) if x.strip()]
    if field == "result_backend" and not value:
        return None  # set but empty: the broker's Redis, as when unset
    return value


def env_path(message: str) -> str:
    """Name the variable the user set: msgspec's ``$.redis.max_active`` path, or the field our own
    checks name (``redis.max_active must be >= 0``, ``redis.tls_ca_certs: no such file``),
    becomes ``VECNA_REDIS_MAX_ACTIVE``."""
    text, _, where = message.partition(" - at `$")
    own = re.match(r"(?P<path>(redis\.)?[a-z_]+)( \([^)]*\))?(:| must )", text)
    path = own["path"] if own else where.strip("`.")
    if not path:
        return text
    return f"{PREFIX}{path.replace('.', '_').upper()}: {text}"
