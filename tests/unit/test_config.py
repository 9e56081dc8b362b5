"""``vecna_async.config`` (Config, RedisConfig, from_yaml, from_env) and the URL forms of
``vecna_async.connection.parse_url``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vecna_async import Config, ConfigError, RedisConfig
from vecna_async.connection import RedisTarget, parse_url

SEED_YAML = """\
broker: redis://password@localhost:6379
default_queue: machinery_tasks
result_backend: redis://password@localhost:6380/1
results_expire_in: 3600000
redis:
  max_idle: 3
  max_active: 7
  max_idle_timeout: 240
  wait: true
  read_timeout: 15
  write_timeout: 15
  connect_timeout: 15
  normal_tasks_poll_period: 1000
  delayed_tasks_poll_period: 500
  master_name: mymaster
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


# -- defaults and construction ---------------------------------------------------------------------
def test_defaults_follow_the_seed() -> None:
    cnf = Config()
    assert cnf.broker == "redis://127.0.0.1:6379/0"
    assert cnf.default_queue == "vecna_tasks"
    assert cnf.result_backend is None
    assert cnf.backend_url == cnf.broker
    assert cnf.results_expire_in == 3600
    r = cnf.redis
    assert (r.max_idle, r.max_active, r.max_idle_timeout, r.wait) == (10, 100, 300, True)
    assert (r.read_timeout, r.write_timeout, r.connect_timeout) == (15, 15, 15)
    assert r.normal_tasks_poll_period == 1000


def test_backend_url_prefers_result_backend() -> None:
    cnf = Config(broker="redis://a:6379", result_backend="redis://b:6379")
    assert cnf.backend_url == "redis://b:6379"


@pytest.mark.parametrize(
    ("heartbeat", "lease"), [(30.0, 30.0), (31.0, 30.0), (10.0, 5.0)], ids=["equal", "over", "2x"]
)
def test_heartbeat_must_be_shorter_than_lease(heartbeat: float, lease: float) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig(heartbeat_interval=heartbeat, lease_timeout=lease)
    assert "heartbeat_interval" in str(info.value)
    assert "lease_timeout" in str(info.value)


def test_heartbeat_just_under_lease_is_fine() -> None:
    assert RedisConfig(heartbeat_interval=29.9, lease_timeout=30.0).heartbeat_interval == 29.9


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_active": -1}, "max_active"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"claim_batch": 0}, "claim_batch"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
        ({"read_timeout": 0}, "read_timeout"),
        ({"normal_tasks_poll_period": 0}, "normal_tasks_poll_period"),
    ],
)
def test_redis_config_refuses_out_of_range_values(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigError, match=f"redis.{field}"):
        RedisConfig(**kwargs)  # type: ignore[arg-type]


def test_config_refuses_out_of_range_values() -> None:
    with pytest.raises(ConfigError, match="results_expire_in"):
        Config(results_expire_in=0)
    with pytest.raises(ConfigError, match="default_queue"):
        Config(default_queue="")
    assert RedisConfig(max_active=0).max_active == 0  # 0 = no limit, as in the seed


# -- YAML ----------------------------------------------------------------------------------------
def test_from_yaml_reads_the_seeds_field_names(tmp_path: Path) -> None:
    cnf = Config.from_yaml(write(tmp_path, SEED_YAML))
    assert cnf.broker == "redis://password@localhost:6379"
    assert cnf.default_queue == "machinery_tasks"
    assert cnf.result_backend == "redis://password@localhost:6380/1"
    assert cnf.results_expire_in == 3600000
    r = cnf.redis
    assert (r.max_idle, r.max_active, r.max_idle_timeout, r.wait) == (3, 7, 240, True)
    assert (r.read_timeout, r.write_timeout, r.connect_timeout) == (15.0, 15.0, 15.0)
    assert (r.normal_tasks_poll_period, r.delayed_tasks_poll_period) == (1000, 500)
    assert r.master_name == "mymaster"


def test_from_yaml_keeps_defaults_for_missing_fields(tmp_path: Path) -> None:
    cnf = Config.from_yaml(write(tmp_path, "default_queue: q\n"))
    assert cnf == Config(default_queue="q")


def test_from_yaml_reads_the_example_config() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "config.yml"
    cnf = Config.from_yaml(example)
    assert cnf.default_queue == "vecna_tasks"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus: 1\n", "bogus"),
        ("redis:\n  max_actve: 5\n", "max_actve"),
        ("redis:\n  delayed_tasks_keyy: x\n", "delayed_tasks_keyy"),
    ],
)
def test_from_yaml_unknown_field_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(write(tmp_path, text))
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("results_expire_in: soon\n", "results_expire_in"),
        ("redis:\n  max_active: lots\n", "max_active"),
        ("redis:\n  wait: [1]\n", "wait"),
        ("default_queue: [a, b]\n", "default_queue"),
    ],
)
def test_from_yaml_mistyped_field_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(write(tmp_path, text))
    assert named in str(info.value)
    assert "config.yml" in str(info.value)


def test_from_yaml_bad_value_is_a_config_error(tmp_path: Path) -> None:
    text = "redis:\n  heartbeat_interval: 40\n  lease_timeout: 30\n"
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        Config.from_yaml(write(tmp_path, text))


def test_from_yaml_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="YAML"):
        Config.from_yaml(write(tmp_path, "broker: [unclosed\n"))


# -- environment ---------------------------------------------------------------------------------
def test_from_env_reads_vecna_variables() -> None:
    cnf = Config.from_env(
        {
            "VECNA_BROKER": "redis://broker:6379/1",
            "VECNA_DEFAULT_QUEUE": "emails",
            "VECNA_RESULT_BACKEND": "redis://backend:6379/2",
            "VECNA_RESULTS_EXPIRE_IN": "60",
            "VECNA_SHUTDOWN_GRACE": "2.5",
            "VECNA_REDIS_MAX_ACTIVE": "50",
            "VECNA_REDIS_WAIT": "false",
            "VECNA_REDIS_READ_TIMEOUT": "2.5",
            "VECNA_REDIS_KEY_PREFIX": "myapp",
            "VECNA_REDIS_MASTER_NAME": "mymaster",
            "UNRELATED": "ignored",
        }
    )
    assert cnf.broker == "redis://broker:6379/1"
    assert cnf.default_queue == "emails"
    assert cnf.result_backend == "redis://backend:6379/2"
    assert cnf.results_expire_in == 60
    assert cnf.shutdown_grace == 2.5
    assert cnf.redis.max_active == 50
    assert cnf.redis.wait is False
    assert cnf.redis.read_timeout == 2.5
    assert cnf.redis.key_prefix == "myapp"
    assert cnf.redis.master_name == "mymaster"


def test_from_env_without_variables_is_the_default() -> None:
    assert Config.from_env({}) == Config()


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECNA_REDIS_MAX_ACTIVE", "42")
    monkeypatch.setenv("VECNA_DEFAULT_QUEUE", "from_os")
    cnf = Config.from_env()
    assert cnf.redis.max_active == 42
    assert cnf.default_queue == "from_os"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("VECNA_REDIS_MAX_ACTIVE", "abc"),
        ("VECNA_REDIS_MAX_ACTIVE", "1.5"),
        ("VECNA_RESULTS_EXPIRE_IN", "soon"),
        ("VECNA_REDIS_WAIT", "maybe"),
        ("VECNA_REDIS_READ_TIMEOUT", "fast"),
    ],
)
def test_from_env_mistyped_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({var: value})
    assert var in str(info.value)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("VECNA_REDIS_MAX_ACTIVE", "-1"),
        ("VECNA_REDIS_HEARTBEAT_INTERVAL", "40"),
        ("VECNA_RESULTS_EXPIRE_IN", "0"),
    ],
)
def test_from_env_out_of_range_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({var: value})
    assert var in str(info.value)


# -- URLs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379", RedisTarget("standalone", [("localhost", 6379)])),
        ("redis://localhost", RedisTarget("standalone", [("localhost", 6379)])),
        (
            "redis://password@localhost:6379",
            RedisTarget("standalone", [("localhost", 6379)], password="password"),
        ),
        (
            "redis://user:pw@host:6380/2",
            RedisTarget("standalone", [("host", 6380)], 2, username="user", password="pw"),
        ),
        (
            "redis://:pw@host:6380",
            RedisTarget("standalone", [("host", 6380)], password="pw"),
        ),
        (
            "redis://us%40er:p%40ss%3Aw@host",
            RedisTarget("standalone", [("host", 6379)], username="us@er", password="p@ss:w"),
        ),
        ("redis://host:6379?db=4", RedisTarget("standalone", [("host", 6379)], 4)),
        ("redis://127.0.0.1:6379/15", RedisTarget("standalone", [("127.0.0.1", 6379)], 15)),
        (
            "rediss://u:p@secure.example:6380/1",
            RedisTarget("standalone", [("secure.example", 6380)], 1, "u", "p", tls=True),
        ),
        ("redis://[::1]:6379", RedisTarget("standalone", [("::1", 6379)])),
        ("redis://[::1]:6380/3", RedisTarget("standalone", [("::1", 6380)], 3)),
        ("redis://[::1]", RedisTarget("standalone", [("::1", 6379)])),
        (
            "redis://pw@[2001:db8::7]:7000",
            RedisTarget("standalone", [("2001:db8::7", 7000)], password="pw"),
        ),
        ("unix:///path/to/redis.sock", RedisTarget("unix", unix_path="/path/to/redis.sock")),
        ("unix:///tmp/r.sock?db=3", RedisTarget("unix", db=3, unix_path="/tmp/r.sock")),
        (
            "unix://:secret@/tmp/r.sock?db=1",
            RedisTarget("unix", db=1, password="secret", unix_path="/tmp/r.sock"),
        ),
        (
            "redis+socket://password@/path/to/file.sock:/0",
            RedisTarget("unix", password="password", unix_path="/path/to/file.sock"),
        ),
        (
            "redis+socket://password@/path/to/file.sock:/5",
            RedisTarget("unix", db=5, password="password", unix_path="/path/to/file.sock"),
        ),
        (
            "redis+socket:///path/to/file.sock",
            RedisTarget("unix", unix_path="/path/to/file.sock"),
        ),
        (
            "redis-sentinel://s1:26379,s2:26380/1?master_name=mymaster",
            RedisTarget("sentinel", [("s1", 26379), ("s2", 26380)], 1, master_name="mymaster"),
        ),
        (
            "redis-sentinel://pw@s1:26379?master_name=m",
            RedisTarget("sentinel", [("s1", 26379)], password="pw", master_name="m"),
        ),
        (
            "redis://host1:7000,host2:7001,host3:7002",
            RedisTarget("cluster", [("host1", 7000), ("host2", 7001), ("host3", 7002)]),
        ),
        (
            "redis://pass@host1:7000,host2:7001,host3:7002",
            RedisTarget(
                "cluster", [("host1", 7000), ("host2", 7001), ("host3", 7002)], password="pass"
            ),
        ),
        (
            "rediss://h1:7000,h2:7001",
            RedisTarget("cluster", [("h1", 7000), ("h2", 7001)], tls=True),
        ),
    ],
)
def test_parse_url_forms(url: str, expected: RedisTarget) -> None:
    assert parse_url(url) == expected


def test_sentinel_master_name_from_config() -> None:
    target = parse_url("redis-sentinel://s1:26379,s2:26379", master_name="from_config")
    assert target.kind == "sentinel"
    assert target.master_name == "from_config"
    # the URL's own master_name wins over the configured one
    url = "redis-sentinel://s1:26379?master_name=from_url"
    assert parse_url(url, master_name="from_config").master_name == "from_url"


def test_describe_never_shows_the_password() -> None:
    for url in (
        "redis://user:s3cr3tpw@host:6379/1",
        "redis+socket://s3cr3tpw@/tmp/r.sock:/2",
        "redis-sentinel://s3cr3tpw@s1:26379?master_name=m",
        "redis://s3cr3tpw@h1:1,h2:2",
    ):
        assert "s3cr3tpw" not in parse_url(url).describe()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("localhost:6379", "expected a URL"),
        ("http://s3cr3tpw@host:6379", "unknown scheme"),
        ("redis://s3cr3tpw@", "no host"),
        ("redis://", "no host"),
        ("redis://:s3cr3tpw@host:notaport", "notaport"),
        ("redis://user:s3cr3tpw@host:6379/notadb", "notadb"),
        ("redis://s3cr3tpw@:6379", "bad host"),
        ("redis-sentinel://s3cr3tpw@s1:26379", "master_name"),
        ("redis://s3cr3tpw@h1:1,h2:2/3", "database 0"),
        ("redis+socket://s3cr3tpw@relative/file.sock", "redis+socket://"),
        ("redis+socket://s3cr3tpw@/tmp/r.sock:/x", "x"),
        ("unix://:s3cr3tpw@/tmp/r.sock?db=q", "q"),
        ("redis://s3cr3tpw@host:70000", "70000"),
        ("redis://s3cr3tpw@host:-1", "-1"),
        ("redis://s3cr3tpw@host:6379/-1", "-1"),
    ],
)
def test_bad_urls_name_the_field_and_hide_the_password(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(url, field_name="result_backend")
    message = str(info.value)
    assert message.startswith("result_backend: ")
    assert why in message
    assert "s3cr3tpw" not in message
    assert "s3cr3tpw" not in repr(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_bad_url_default_field_is_broker() -> None:
    with pytest.raises(ConfigError, match=r"^broker: "):
        parse_url("nonsense")


def test_a_seed_config_yml_loads_unchanged(tmp_path: Path) -> None:
    """Every field of the seed's YAML is accepted; the key-name and lock fields are not used."""
    path = tmp_path / "seed.yml"
    path.write_text(
        "broker: redis://127.0.0.1:6379\n"
        "lock: redis://127.0.0.1:6379\n"
        "default_queue: vecna_tasks\n"
        "result_backend: redis://127.0.0.1:6379\n"
        "results_expire_in: 3600\n"
        "redis:\n"
        "  max_idle: 3\n  max_active: 3\n  max_idle_timeout: 240\n  wait: true\n"
        "  read_timeout: 15\n  write_timeout: 15\n  connect_timeout: 15\n"
        "  normal_tasks_poll_period: 1000\n  delayed_tasks_poll_period: 500\n"
        "  delayed_tasks_key: delayed_tasks\n  delayed_tasks_cache_key: cache\n"
        "  periodic_tasks_key: periodic\n  canceled_tasks_key: canceled\n"
        "  master_name: ''\n"
    )
    cnf = Config.from_yaml(path)
    assert cnf.redis.max_active == 3
    assert cnf.redis.delayed_tasks_poll_period == 500


# -- strict types in code (issue 10, item 6) -------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Config(results_expire_in="soon"), "results_expire_in"),  # type: ignore[arg-type]
        (lambda: RedisConfig(max_active="100"), "redis.max_active"),  # type: ignore[arg-type]
        (lambda: RedisConfig(wait="yes"), "redis.wait"),  # type: ignore[arg-type]
        (lambda: RedisConfig(lease_timeout=None), "redis.lease_timeout"),  # type: ignore[arg-type]
        (lambda: Config(default_queue=5), "default_queue"),  # type: ignore[arg-type]
        (lambda: Config(signing_keys="0123456789abcdef"), "signing_keys"),  # type: ignore[arg-type]
        (lambda: Config(redis={"max_active": 5}), "redis"),  # type: ignore[arg-type]
    ],
)
def test_a_wrong_type_in_code_is_a_config_error_naming_the_field(build: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value).startswith(f"{field}: "), str(info.value)


def test_a_secret_of_the_wrong_type_is_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig(password=12345678)  # type: ignore[arg-type]
    assert "12345678" not in str(info.value)


def test_numbers_of_the_other_kind_are_accepted() -> None:
    assert RedisConfig(lease_timeout=20, heartbeat_interval=5).lease_timeout == 20


# -- strict values at load (issue 11, item 1) ------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"broker": ""}, ["broker", "empty"]),
        ({"broker": "htp://s3cr3tpw@host:6379"}, ["broker", "unknown scheme 'htp'"]),
        ({"result_backend": "redis://"}, ["result_backend", "no host"]),
        ({"broker": "redis-sentinel://s1:26379"}, ["broker", "master_name"]),
    ],
)
def test_a_bad_url_fails_when_the_config_is_built(kwargs: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)
    assert "s3cr3tpw" not in str(info.value)


def test_tls_files_must_exist_at_load(tmp_path: Path) -> None:
    for field in ("tls_ca_certs", "tls_certfile"):
        with pytest.raises(ConfigError, match=rf"redis\.{field}: no such file") as info:
            RedisConfig(**{field: str(tmp_path / "missing.pem")})  # type: ignore[arg-type]
        assert "missing.pem" in str(info.value)
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    assert RedisConfig(tls_ca_certs=str(pem)).tls_ca_certs == str(pem)
    with pytest.raises(ConfigError, match=r"VECNA_REDIS_TLS_CA_CERTS: redis\.tls_ca_certs"):
        Config.from_env({"VECNA_REDIS_TLS_CA_CERTS": str(tmp_path / "nope.pem")})


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"VECNA_BROKR": "redis://x"}, ["VECNA_BROKR", "did you mean VECNA_BROKER?"]),
        ({"VECNA_REDIS_MAX_ACTIV": "5"}, ["VECNA_REDIS_MAX_ACTIV", "VECNA_REDIS_MAX_ACTIVE"]),
        ({"VECNA_NOTHING_LIKE_IT": "1"}, ["VECNA_NOTHING_LIKE_IT", "not a vecna_async setting"]),
        ({"VECNA_BROKER": ""}, ["VECNA_BROKER", "empty"]),
        ({"VECNA_BROKER": "htp://host"}, ["VECNA_BROKER", "unknown scheme"]),
    ],
)
def test_unknown_variables_and_bad_values_fail_naming_the_variable(
    env: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    for word in words:
        assert word in str(info.value)


# -- secrets (issue 11, item 2) --------------------------------------------------------------------
def test_password_and_username_from_variables_and_files(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    cnf = Config.from_env({"VECNA_REDIS_USERNAME": "app", "VECNA_REDIS_PASSWORD_FILE": str(secret)})
    assert (cnf.redis.username, cnf.redis.password) == ("app", "from-a-file")
    keys = tmp_path / "keys"
    keys.write_text("0123456789abcdef-new\n0123456789abcdef-old\n")
    assert Config.from_env({"VECNA_SIGNING_KEYS_FILE": str(keys)}).signing_keys == [
        "0123456789abcdef-new",
        "0123456789abcdef-old",
    ]


def test_a_variable_and_its_file_together_or_a_missing_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both set"):
        Config.from_env({"VECNA_REDIS_PASSWORD": "a", "VECNA_REDIS_PASSWORD_FILE": "/x"})
    with pytest.raises(ConfigError, match="VECNA_REDIS_PASSWORD_FILE: cannot read"):
        Config.from_env({"VECNA_REDIS_PASSWORD_FILE": str(tmp_path / "absent")})


def test_configured_credentials_replace_the_urls() -> None:
    from vecna_async.connection import with_credentials

    target = parse_url("redis://old:oldpw@host:6379/0")
    cfg = RedisConfig(password="newpw")
    assert with_credentials(target, cfg) == RedisTarget(
        "standalone", [("host", 6379)], username="old", password="newpw"
    )
    assert with_credentials(target, RedisConfig()) is target


def test_the_environment_overrides_the_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "broker: redis://file-host:6379/0\ndefault_queue: q\nredis:\n  max_active: 7\n"
    )
    env = {"VECNA_BROKER": "redis://env-host:6379/0", "VECNA_REDIS_PASSWORD": "pw"}
    cnf = Config.from_yaml(path, env)
    assert cnf.broker == "redis://env-host:6379/0"  # environment over file
    assert cnf.default_queue == "q"  # file over default
    assert (cnf.redis.max_active, cnf.redis.password) == (7, "pw")
    assert Config.from_yaml(path, {}).broker == "redis://file-host:6379/0"
    with pytest.raises(ConfigError, match="VECNA_REDIS_MAX_ACTIVE"):
        Config.from_yaml(path, {"VECNA_REDIS_MAX_ACTIVE": "lots"})
    with pytest.raises(ConfigError, match="VECNA_QUEUE"):
        Config.from_yaml(path, {"VECNA_QUEUE": "q"})


def test_from_yaml_reads_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VECNA_DEFAULT_QUEUE", "from_env")
    assert Config.from_yaml(write(tmp_path, "default_queue: from_file\n")).default_queue == (
        "from_env"
    )


def test_repr_masks_every_secret() -> None:
    cnf = Config(
        broker="redis://user:pw-in-url@h:6379/0",
        result_backend="redis://pw-seed-form@h:6380/0",
        signing_keys=["signing-key-0123456789"],
        redis=RedisConfig(password="pw-field", sentinel_password="pw-sentinel", max_active=5),
    )
    shown = repr(cnf)
    for secret in ("pw-in-url", "pw-seed-form", "signing-key", "pw-field", "pw-sentinel"):
        assert secret not in shown
    assert "redis://user:***@h:6379/0" in shown
    assert "max_active=5" in shown
    assert repr(Config()) == "Config()"
