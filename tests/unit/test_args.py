"""``vecna_async.tasks.args``: the seed's ``Arg`` type checks and the annotation-based
``ArgSpec``."""

from __future__ import annotations

import dataclasses
import enum
import math
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypedDict

import msgspec
import pytest

from vecna_async import Arg, ArgumentTypeError
from vecna_async.tasks.args import (
    ARG_TYPES,
    ArgSpec,
    check_type_name,
    coerce_typed_arg,
    unencodable,
)

INT_RANGES = {
    "int": (-(2**63), 2**63 - 1),
    "int8": (-128, 127),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint": (0, 2**64 - 1),
    "uint8": (0, 255),
    "uint16": (0, 65535),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
SEED_SCALARS = {*INT_RANGES, "bool", "float32", "float64", "string"}


def fails(type_name: str, value: Any, index: int = 0, task: str = "t") -> ArgumentTypeError:
    with pytest.raises(ArgumentTypeError) as info:
        coerce_typed_arg(task, index, type_name, value)
    return info.value


# -- the type list -------------------------------------------------------------------------------
def test_arg_types_are_the_seeds_list() -> None:
    expected = SEED_SCALARS | {f"[]{t}" for t in SEED_SCALARS}
    assert expected == ARG_TYPES


@pytest.mark.parametrize("bad", ["int128", "float", "str", "[][]int", "[]", "", "Int64", "[]map"])
def test_unknown_type_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown Arg type"):
        check_type_name(bad)
    with pytest.raises(ValueError, match="unknown Arg type"):
        Arg(bad, 1)


# -- integer ranges ------------------------------------------------------------------------------
@pytest.mark.parametrize("type_name", sorted(INT_RANGES))
def test_integer_range_edges_pass(type_name: str) -> None:
    low, high = INT_RANGES[type_name]
    assert coerce_typed_arg("t", 0, type_name, low) == low
    assert coerce_typed_arg("t", 0, type_name, high) == high
    assert coerce_typed_arg("t", 0, f"[]{type_name}", [low, high]) == [low, high]


@pytest.mark.parametrize("type_name", sorted(INT_RANGES))
def test_integer_one_past_the_edges_fails(type_name: str) -> None:
    low, high = INT_RANGES[type_name]
    for value in (low - 1, high + 1):
        err = fails(type_name, value, index=2, task="add")
        assert str(err).startswith(f"task 'add', argument 2: expected {type_name}, ")
        assert "out of range" in str(err)
        assert str(value) in str(err)
        assert (err.task_name, err.index, err.expected) == ("add", 2, type_name)


@pytest.mark.parametrize("type_name", sorted(INT_RANGES))
def test_integer_types_refuse_bool_float_and_string(type_name: str) -> None:
    assert "got bool" in str(fails(type_name, True))
    assert "got bool" in str(fails(type_name, False))
    assert "got float" in str(fails(type_name, 1.0))
    assert "got str" in str(fails(type_name, "1"))
    assert "got NoneType" in str(fails(type_name, None))
    assert "got list" in str(fails(type_name, [1]))


# -- bool, string, floats ------------------------------------------------------------------------
def test_bool_accepts_only_bools() -> None:
    assert coerce_typed_arg("t", 0, "bool", True) is True
    assert coerce_typed_arg("t", 0, "bool", False) is False
    assert "got int" in str(fails("bool", 1))
    assert "got int" in str(fails("bool", 0))
    assert "got str" in str(fails("bool", "true"))


def test_string_accepts_only_strings() -> None:
    assert coerce_typed_arg("t", 0, "string", "") == ""
    assert coerce_typed_arg("t", 0, "string", "1") == "1"
    assert "got int" in str(fails("string", 1))
    assert "got float" in str(fails("string", 1.5))
    assert "got bool" in str(fails("string", True))


@pytest.mark.parametrize("type_name", ["float32", "float64"])
def test_floats_accept_numbers_and_refuse_strings_and_bools(type_name: str) -> None:
    assert coerce_typed_arg("t", 0, type_name, 1.5) == 1.5
    value = coerce_typed_arg("t", 0, type_name, 2)  # a JSON integer where a float is due
    assert value == 2.0
    assert type(value) is float
    assert "got str" in str(fails(type_name, "1.5"))
    assert "got bool" in str(fails(type_name, True))
    assert "got NoneType" in str(fails(type_name, None))


def test_float32_range() -> None:
    assert coerce_typed_arg("t", 0, "float32", FLOAT32_MAX) == FLOAT32_MAX
    assert coerce_typed_arg("t", 0, "float32", -FLOAT32_MAX) == -FLOAT32_MAX
    assert "overflows float32" in str(fails("float32", 3.5e38))
    assert "overflows float32" in str(fails("float32", -3.5e38))
    assert "overflows float32" in str(fails("float32", 10**39))  # a JSON integer, too big
    assert math.isnan(coerce_typed_arg("t", 0, "float32", math.nan))


def test_float64_takes_the_largest_doubles() -> None:
    assert coerce_typed_arg("t", 0, "float64", 1.7976931348623157e308) == 1.7976931348623157e308
    assert coerce_typed_arg("t", 0, "float64", 3.5e38) == 3.5e38


@pytest.mark.parametrize("type_name", ["float32", "float64", "[]float64"])
def test_integer_too_big_for_any_float_is_an_argument_error(type_name: str) -> None:
    # msgspec carries integers of any size through JSON; one past the largest double must fail
    # the task as a bad argument (named, not retried), not with OverflowError from float().
    value: Any = 2**1100
    if type_name.startswith("[]"):
        value = [value]
    err = fails(type_name, value, index=1)
    assert "argument 1" in str(err)


# -- slices --------------------------------------------------------------------------------------
def test_slices_check_every_element_and_name_the_bad_one() -> None:
    assert coerce_typed_arg("t", 0, "[]int64", []) == []
    assert coerce_typed_arg("t", 0, "[]string", ["a", "b"]) == ["a", "b"]
    assert coerce_typed_arg("t", 0, "[]bool", [True, False]) == [True, False]
    converted = coerce_typed_arg("t", 0, "[]float64", [1, 2.5])
    assert converted == [1.0, 2.5]
    assert [type(x) for x in converted] == [float, float]

    err = fails("[]int64", [1, "x", 3], index=3, task="sum_ints")
    assert str(err).startswith("task 'sum_ints', argument 3: expected int64, ")
    assert "at element 1" in str(err)
    assert "at element 2" in str(fails("[]uint8", [0, 255, 256]))
    assert "at element 0" in str(fails("[]bool", [1]))
    assert "at element 1" in str(fails("[]string", ["a", 2]))
    assert "at element 0" in str(fails("[]float32", [1e39]))
    assert "at element 1" in str(fails("[]int", [1, True]))


def test_slice_types_need_a_list() -> None:
    err = fails("[]int64", 5)
    assert "expected []int64" in str(err)
    assert "got int" in str(err)
    assert "got str" in str(fails("[]string", "ab"))
    assert "got dict" in str(fails("[]string", {"a": 1}))


# -- ArgSpec: plain values against annotations ---------------------------------------------------
class Plain:
    """A class msgspec knows nothing about."""


async def annotated(a: int, b: str, c: list[int]) -> None: ...


async def star_args(*args: int) -> int:
    return sum(args)


async def keywords(a: int, *, k: float, **rest: bool) -> None: ...


async def positional_only(a: int, /, b: str) -> None: ...


async def unannotated(a, b, *args, **kwargs):  # type: ignore[no-untyped-def]
    return a


async def when(at: datetime) -> None: ...


async def plain_class(x: Plain) -> None: ...


async def unresolvable(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
    ...


def convert_fails(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any] | None = None
) -> ArgumentTypeError:
    with pytest.raises(ArgumentTypeError) as info:
        ArgSpec(fn).convert("task", args, kwargs or {})
    return info.value


def test_argspec_checks_annotated_parameters() -> None:
    spec = ArgSpec(annotated)
    assert not spec.trivial
    assert spec.convert("task", [1, "x", [1, 2]], {}) == ([1, "x", [1, 2]], {})
    assert spec.convert("task", [1], {"b": "x", "c": []}) == ([1], {"b": "x", "c": []})

    err = convert_fails(annotated, ["1", "x", []])
    assert str(err).startswith("task 'task', argument 0: expected int, ")
    assert (err.index, err.expected) == (0, "int")
    assert "argument 1: expected str" in str(convert_fails(annotated, [1, 2, []]))
    # strict: no bool for an int; said once, in our words (not "expected int, Expected `int`...")
    assert str(convert_fails(annotated, [True, "x", []])) == (
        "task 'task', argument 0: expected int, got bool"
    )
    assert "keyword argument 'b'" in str(convert_fails(annotated, [1], {"b": 3}))


def test_argspec_names_generic_expected_types_in_full() -> None:
    err = convert_fails(annotated, [1, "x", [1, "2"]])
    assert str(err) == (
        "task 'task', argument 2: expected list[int], got str at $[1] (expected int there)"
    )


def test_argspec_type_errors_do_not_repeat_msgspec_s_words() -> None:
    for err in (
        convert_fails(annotated, [1, 2, []]),
        convert_fails(keywords, [1], {"k": "2.0"}),
        convert_fails(when, ["yesterday"]),
    ):
        assert "Expected" not in str(err), err
        assert "`" not in str(err), err
    assert str(convert_fails(keywords, [1], {"k": "2.0"})) == (
        "task 'task', keyword argument 'k': expected float, got str"
    )
    assert str(convert_fails(when, ["yesterday"])) == (
        "task 'task', argument 0: expected datetime, invalid RFC3339 encoded datetime"
    )


def test_argspec_star_args_checks_each_with_its_index() -> None:
    spec = ArgSpec(star_args)
    assert spec.convert("add", [1, 2, 3], {}) == ([1, 2, 3], {})
    err = convert_fails(star_args, [1, 2, "3"])
    assert "argument 2: expected int" in str(err)
    assert err.index == 2


def test_argspec_keyword_only_and_var_keywords() -> None:
    spec = ArgSpec(keywords)
    args, kwargs = spec.convert("task", [1], {"k": 2, "flag": True})
    assert args == [1]
    assert kwargs == {"k": 2.0, "flag": True}
    assert type(kwargs["k"]) is float
    assert "keyword argument 'k': expected float" in str(convert_fails(keywords, [1], {"k": "2.0"}))
    assert "keyword argument 'flag': expected bool" in str(
        convert_fails(keywords, [1], {"k": 1.0, "flag": 1})
    )
    assert "keyword argument 'a': expected int" in str(
        convert_fails(keywords, [], {"a": "x", "k": 1.0})
    )


def test_argspec_positional_only() -> None:
    assert ArgSpec(positional_only).convert("t", [1, "b"], {}) == ([1, "b"], {})
    assert "argument 0: expected int" in str(convert_fails(positional_only, ["1", "b"]))


def test_argspec_without_annotations_accepts_anything() -> None:
    spec = ArgSpec(unannotated)
    assert spec.trivial
    args: list[Any] = ["x", 1, None, [True]]
    kwargs: dict[str, Any] = {"anything": {"at": "all"}}
    assert spec.convert("t", args, kwargs) == (args, kwargs)


def test_argspec_converts_to_rich_annotations() -> None:
    (value,), _ = ArgSpec(when).convert("t", ["2024-05-01T12:00:00Z"], {})
    assert value == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert "expected datetime" in str(convert_fails(when, ["yesterday"]))


def test_argspec_passes_values_through_for_classes_msgspec_cannot_check() -> None:
    # args.py promises a hint msgspec cannot validate (a plain class) passes the value through
    assert ArgSpec(plain_class).convert("t", [{"a": 1}], {}) == ([{"a": 1}], {})


def test_argspec_with_unresolvable_annotations_checks_nothing() -> None:
    spec = ArgSpec(unresolvable)
    assert spec.trivial
    assert spec.convert("t", ["whatever"], {}) == (["whatever"], {})


def test_argspec_extra_positional_args_are_not_checked_here() -> None:
    # Too many arguments is the call's TypeError, not an annotation mismatch.
    assert ArgSpec(annotated).convert("t", [1, "x", [], "extra"], {})[0][-1] == "extra"


# -- check_outgoing: at send, by a Server that knows the function ----------------------------------
class Color(enum.Enum):
    RED = "red"


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Size:
    width: int


class Box(TypedDict):
    label: str


async def rich(
    at: datetime, day: date, key: uuid.UUID, amount: Decimal, blob: bytes, color: Color,
    point: Point, size: Size, box: Box,
) -> None: ...  # fmt: skip


async def scalars(text: str, ratio: float, *, when_: datetime | None = None) -> None: ...


RICH_VALUES: list[Any] = [
    datetime(2024, 5, 1, 12, tzinfo=UTC), date(2024, 5, 1), uuid.UUID(int=7), Decimal("1.25"),
    b"\x00\xff", Color.RED, Point(1, 2), Size(3), {"label": "x"},
]  # fmt: skip


def outgoing_fails(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any] | None = None
) -> ArgumentTypeError:
    with pytest.raises(ArgumentTypeError) as info:
        ArgSpec(fn).check_outgoing("task", enumerate(args), kwargs or {})
    return info.value


def test_check_outgoing_accepts_values_of_the_annotated_types() -> None:
    ArgSpec(rich).check_outgoing("task", enumerate(RICH_VALUES), {})
    # what travels as JSON anyway is fine too: an ISO string for a datetime, a value for an Enum
    ArgSpec(rich).check_outgoing("task", [(0, "2024-05-01T12:00:00Z"), (5, "red")], {})
    ArgSpec(scalars).check_outgoing("task", enumerate(["x", 1]), {"when_": None})


@pytest.mark.parametrize(
    ("value", "expected", "got"),
    [
        (b"abc", "str", "bytes"),  # would arrive silently base64-encoded
        (uuid.UUID(int=1), "str", "uuid"),
        (datetime(2024, 5, 1, tzinfo=UTC), "str", "datetime"),
        (7, "str", "int"),
    ],
)
def test_check_outgoing_refuses_a_value_of_another_kind(
    value: Any, expected: str, got: str
) -> None:
    err = outgoing_fails(scalars, [value, 1.0])
    assert str(err) == f"task 'task', argument 0: expected {expected}, got {got}"
    assert (err.task_name, err.index) == ("task", 0)


def test_check_outgoing_refuses_what_the_worker_would_refuse_once_sent_as_json() -> None:
    # a Decimal converts to a float here, but travels as a JSON string: the worker would refuse it
    err = outgoing_fails(scalars, ["x", Decimal("1.5")])
    assert str(err) == (
        "task 'task', argument 1: expected float, got Decimal, which arrives as a JSON str"
    )


def test_check_outgoing_names_keyword_arguments() -> None:
    err = outgoing_fails(scalars, ["x", 1.0], {"when_": "soon"})
    assert "keyword argument 'when_'" in str(err)


def test_check_outgoing_names_a_value_msgspec_cannot_encode() -> None:
    async def items(values: list[Any]) -> None: ...

    err = outgoing_fails(items, [[1, Plain()]])
    assert str(err) == (
        "task 'task', argument 0: expected a value msgspec can encode, got list "
        "(Encoding objects of type Plain is unsupported)"
    )


def test_unencodable_names_task_and_argument() -> None:
    err = unencodable(
        "fetch", "session", Plain(), TypeError("Encoding objects of type Plain is unsupported")
    )
    assert str(err) == (
        "task 'fetch', keyword argument 'session': expected a value msgspec can encode, "
        "got Plain (Encoding objects of type Plain is unsupported)"
    )
