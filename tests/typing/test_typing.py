"""mypy sees through the typed task handles: ``await handle.send(...)`` checks the arguments
against the task function and gives ``AsyncResult[<return type>]``.

Each snippet is written to a temporary directory (so the project's own mypy run never sees it)
and checked in one ``mypy.api.run`` call, strict, as users of a ``py.typed`` package would.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]

HEADER = """\
from vecna_async import Config, Context, Server

server = Server(Config())


@server.task(name="fetch", timeout=10.0)
async def fetch(ctx: Context, url: str, retries: int = 1) -> int:
    return len(url) + ctx.attempt


@server.task
async def bare_ctx(ctx: Context, n: int) -> str:
    return ctx.task_id * n


@server.task(name="mul")
async def mul(a: int, b: int) -> int:
    return a * b


@server.task
async def greet(name: str, *, punctuation: str = "!") -> str:
    return name + punctuation
"""

SNIPPETS = {
    "ok_send": """
        async def main() -> None:
            r = await mul.send(1, 2)
            reveal_type(r)
            value = await r.get(timeout=1.0)
            reveal_type(value)
            g = await greet.send("x", punctuation="?")
            reveal_type(g)
    """,
    "wrong_type": """
        async def main() -> None:
            await mul.send("x", 2)
    """,
    "too_many": """
        async def main() -> None:
            await mul.send(1, 2, 3)
    """,
    "too_few": """
        async def main() -> None:
            await mul.send(1)
    """,
    "bad_keyword": """
        async def main() -> None:
            await greet.send("x", punct="?")
    """,
    "ctx_send": """
        async def main() -> None:
            r = await fetch.send("https://example.org", retries=2)
            reveal_type(r)
            b = await bare_ctx.send(3)
            reveal_type(b)
            sig = fetch.signature("https://example.org")
    """,
    "ctx_not_part_of_send": """
        async def main() -> None:
            await fetch.send(Context(task_id="x", name="fetch"), "https://example.org")
    """,
    "ctx_wrong_type": """
        async def main() -> None:
            await bare_ctx.send("3")
    """,
    "wrong_result_use": """
        async def main() -> None:
            r = await mul.send(1, 2)
            text: str = await r.get()
    """,
}


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy's output lines by snippet name (one run for all snippets)."""
    folder = tmp_path_factory.mktemp("typing_snippets")
    paths = []
    for name, body in SNIPPETS.items():
        path = folder / f"snippet_{name}.py"
        path.write_text(HEADER + textwrap.dedent(body))
        paths.append(str(path))
    stdout, stderr, _ = api.run(
        [
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--config-file",
            "",
            "--cache-dir",
            str(folder / ".mypy_cache"),
            *paths,
        ]
    )
    assert not stderr.strip(), stderr
    lines: dict[str, list[str]] = {name: [] for name in SNIPPETS}
    for line in stdout.splitlines():
        match = re.search(r"snippet_(\w+)\.py:\d+", line)
        assert match is not None, f"unexpected mypy output: {line}"
        lines[match.group(1)].append(line)
    return lines


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if ": error:" in line]


def test_send_type_checks_and_reveals_async_result(mypy_output: dict[str, list[str]]) -> None:
    lines = mypy_output["ok_send"]
    assert errors(lines) == [], lines
    revealed = [
        line.split("Revealed type is ", 1)[1].replace("builtins.", "")  # older mypy spells it
        for line in lines
        if "Revealed type is" in line
    ]
    assert revealed == [
        '"vecna_async.backend.results.AsyncResult[int]"',
        '"int"',
        '"vecna_async.backend.results.AsyncResult[str]"',
    ]


def test_wrong_argument_type_is_an_error(mypy_output: dict[str, list[str]]) -> None:
    found = errors(mypy_output["wrong_type"])
    assert len(found) == 1, found
    assert "[arg-type]" in found[0]
    assert '"str"' in found[0]
    assert '"int"' in found[0]


@pytest.mark.parametrize("snippet", ["too_many", "too_few", "bad_keyword"])
def test_wrong_arguments_are_errors(mypy_output: dict[str, list[str]], snippet: str) -> None:
    found = errors(mypy_output[snippet])
    assert len(found) == 1, found
    assert "[call-arg]" in found[0]


def test_result_value_has_the_return_type(mypy_output: dict[str, list[str]]) -> None:
    found = errors(mypy_output["wrong_result_use"])
    assert len(found) == 1, found
    assert "[assignment]" in found[0]


def test_a_context_parameter_is_not_part_of_send(mypy_output: dict[str, list[str]]) -> None:
    lines = mypy_output["ctx_send"]
    assert errors(lines) == [], lines
    revealed = [
        line.split("Revealed type is ", 1)[1].replace("builtins.", "")
        for line in lines
        if "Revealed type is" in line
    ]
    assert revealed == [
        '"vecna_async.backend.results.AsyncResult[int]"',
        '"vecna_async.backend.results.AsyncResult[str]"',
    ]
    assert errors(mypy_output["ctx_not_part_of_send"]), "a Context given to send() must fail"
    found = errors(mypy_output["ctx_wrong_type"])
    assert len(found) == 1, found
    assert "[arg-type]" in found[0]
