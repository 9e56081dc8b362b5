"""Pins the public surface of ``vecna_async`` to /work/shared/API.md (contract v1) plus the extras
the README documents: a name added, removed or renamed here is an API change."""

from __future__ import annotations

import dataclasses
import enum
import inspect
from typing import Any

import pytest

import vecna_async
from vecna_async import Server, Signature, State

API_NAMES = {
    # API.md, the import block at the top
    "Server",
    "Config",
    "RedisConfig",
    "Signature",
    "Arg",
    "Group",
    "Chain",
    "Chord",
    "AsyncResult",
    "ChainAsyncResult",
    "ChordAsyncResult",
    "TaskState",
    "State",
    "RetryTaskLater",
    "Worker",
}
DOCUMENTED_EXTRAS = {
    # README "Errors": the error tree a user catches
    "VecnaError",
    "ConfigError",
    "InvalidCronSpec",
    "BrokerUnavailable",
    "BrokerRefused",
    "UnsupportedRedis",
    "InvalidSignature",
    "ResultTooLarge",
    "MessageTooLarge",
    # API.md "Authoring (contract v2)"
    "Context",
    "TaskTimeout",
    "WorkerStartupFailed",
    "TaskNotRegistered",
    "ArgumentTypeError",
    "TaskFailed",
    "TaskCanceled",
    "ResultTimeout",
    # README "Registering tasks": the typed handle `@server.task` returns
    "TaskHandle",
    # README "Results and states": what `get_dead_letters(queue)` returns
    "DeadLetter",
}
SEED_STATES = ["PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "CANCELED"]
SERVER_METHODS = [
    "register_task",
    "register_tasks",
    "task",
    "send_task",
    "send_group",
    "send_chord",
    "send_chain",
    "cancel_delayed_task",
    "cancel_delayed_group",
    "cancel_delayed_chain",
    "cancel_delayed_chord",
    "send_periodic_task",
    "send_periodic_group",
    "send_periodic_chain",
    "send_periodic_chord",
    "cancel_periodic_task",
    "new_worker",
    "scheduler",
    "get_broker",
]
SIGNATURE_PARAMETERS: list[tuple[str, Any]] = [
    ("name", inspect.Parameter.empty),
    ("args", []),
    ("kwargs", {}),
    ("eta", None),
    ("retry_count", 0),
    ("retry_timeout", 0),
    ("on_success", []),
    ("on_error", []),
    ("immutable", False),
    ("routing_key", ""),
    ("priority", 0),
    ("headers", {}),
    ("ignore_when_task_not_registered", False),
    ("id", None),
    ("code", None),
]


def test_all_is_exactly_the_api_plus_documented_extras() -> None:
    exported = set(vecna_async.__all__)
    assert len(exported) == len(vecna_async.__all__), "duplicates in __all__"
    assert exported - (API_NAMES | DOCUMENTED_EXTRAS) == set(), "undocumented names exported"
    assert (API_NAMES | DOCUMENTED_EXTRAS) - exported == set(), "documented names not exported"


@pytest.mark.parametrize("name", sorted(API_NAMES | DOCUMENTED_EXTRAS))
def test_every_name_is_importable(name: str) -> None:
    obj = getattr(vecna_async, name)
    assert obj is not None
    assert getattr(obj, "__doc__", None), f"{name} has no docstring"


def test_star_import_gives_the_api() -> None:
    namespace: dict[str, Any] = {}
    exec("from vecna_async import *", namespace)
    assert API_NAMES.issubset(namespace)


def test_state_is_a_str_enum_with_the_seeds_values() -> None:
    assert issubclass(State, str)
    assert issubclass(State, enum.Enum)
    assert [s.name for s in State] == SEED_STATES
    assert [s.value for s in State] == SEED_STATES
    assert State.SUCCESS == "SUCCESS"
    assert State("FAILURE") is State.FAILURE


def test_signature_parameters_match_the_api() -> None:
    params = list(inspect.signature(Signature).parameters.values())
    leading = params[: len(SIGNATURE_PARAMETERS)]
    assert [p.name for p in leading] == [name for name, _ in SIGNATURE_PARAMETERS]
    for p in leading:
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, p.name
    # anything after the API's parameters is an extra and must be keyword-only
    for p in params[len(SIGNATURE_PARAMETERS) :]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name


def test_signature_defaults_match_the_api() -> None:
    sig = Signature("add")
    for name, default in SIGNATURE_PARAMETERS[1:]:
        assert getattr(sig, name) == default, name
    # mutable defaults are fresh per Signature
    other = Signature("add")
    sig.args.append(1)
    sig.headers["x"] = 1
    assert other.args == []
    assert other.headers == {}


def test_signature_fields_are_dataclass_fields() -> None:
    names = [f.name for f in dataclasses.fields(Signature)]
    assert names[: len(SIGNATURE_PARAMETERS)] == [name for name, _ in SIGNATURE_PARAMETERS]


@pytest.mark.parametrize("method", SERVER_METHODS)
def test_server_has_every_api_method(method: str) -> None:
    assert callable(getattr(Server, method, None)), f"Server.{method} is missing"


@pytest.mark.parametrize(
    "method",
    [m for m in SERVER_METHODS if m.startswith(("send_", "cancel_")) or m == "get_broker"],
)
def test_server_send_and_cancel_methods_are_coroutines(method: str) -> None:
    fn = getattr(Server, method, None)
    assert fn is not None, f"Server.{method} is missing"
    if method == "get_broker":
        assert not inspect.iscoroutinefunction(fn)
    else:
        assert inspect.iscoroutinefunction(fn), f"Server.{method} must be async"


def test_server_api_parameter_names() -> None:
    def names(method: str) -> list[str]:
        return list(inspect.signature(getattr(Server, method)).parameters)

    assert names("register_task")[:3] == ["self", "name", "fn"]
    assert names("send_task")[:2] == ["self", "signature"]
    assert names("send_group")[:3] == ["self", "group", "concurrency"]
    assert names("send_chord")[:3] == ["self", "chord", "concurrency"]
    assert names("send_chain")[:2] == ["self", "chain"]
    assert names("new_worker")[:3] == ["self", "name", "concurrency"]
    assert names("cancel_periodic_task")[:2] == ["self", "code"]
    assert inspect.signature(Server.new_worker).parameters["concurrency"].default == 0
    assert inspect.signature(Server.send_group).parameters["concurrency"].default == 0


def test_workflow_shapes() -> None:
    from vecna_async import Chain, Chord, Group

    s1, s2, s3 = Signature("add"), Signature("add"), Signature("multiply")
    group = Group(s1, s2)
    assert group.tasks == [s1, s2]
    chain = Chain(s1, s2, s3)
    assert chain.tasks == [s1, s2, s3]
    chord = Chord(group, s3)
    assert (chord.group, chord.callback) == (group, s3)


def test_worker_api() -> None:
    from vecna_async import Worker

    for method in ("set_error_handler", "launch", "quit"):
        assert callable(getattr(Worker, method, None)), f"Worker.{method} is missing"
    assert inspect.iscoroutinefunction(Worker.launch)
    assert not inspect.iscoroutinefunction(Worker.quit)


def test_async_result_api() -> None:
    from vecna_async import AsyncResult, ChainAsyncResult, ChordAsyncResult

    for cls in (AsyncResult, ChainAsyncResult, ChordAsyncResult):
        assert inspect.iscoroutinefunction(cls.get), cls
        assert inspect.iscoroutinefunction(cls.get_state), cls
        assert "timeout" in inspect.signature(cls.get).parameters


def test_retry_task_later_takes_a_delay() -> None:
    from datetime import timedelta

    from vecna_async import RetryTaskLater

    assert RetryTaskLater("msg", delay=2).delay == 2.0
    assert RetryTaskLater("msg", delay=timedelta(milliseconds=1500)).delay == 1.5
    assert not issubclass(RetryTaskLater, vecna_async.VecnaError)


def test_result_timeout_is_a_timeout_error() -> None:
    assert issubclass(vecna_async.ResultTimeout, TimeoutError)
    assert issubclass(vecna_async.ConfigError, ValueError)
    assert issubclass(vecna_async.InvalidCronSpec, ValueError)


def test_result_api_is_documented_in_the_readme() -> None:
    """The result handles' attributes are in the README's "Results and states" (they were found
    only with ``dir()``), and are what the README says they are."""
    from pathlib import Path

    from vecna_async import AsyncResult, ChainAsyncResult, ChordAsyncResult

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Results and states", 1)[1].split("\n## ", 1)[0]
    for name in (
        "`AsyncResult`", ".task_id", ".queue", ".signature", ".get(timeout=None)", ".get_state()",
        ".typed(T)", "`ChainAsyncResult`", ".results", "`ChordAsyncResult`", ".group_results",
        ".callback", "server.result(task_id, queue=None)",
    ):  # fmt: skip
        assert name in section, name
    r: AsyncResult[Any] = AsyncResult(None, "id", "q")  # type: ignore[arg-type]
    assert (r.task_id, r.queue, r.signature) == ("id", "q", None)
    assert r.typed(int).task_id == "id"
    assert ChainAsyncResult([r]).results == [r]
    chord = ChordAsyncResult([r], r)
    assert (chord.group_results, chord.callback) == ([r], r)
    assert "queue" in inspect.signature(Server.result).parameters
