"""Checks, run in the project's own virtual environment (``./dev test`` calls them all)."""

from __future__ import annotations

import sys

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typing", "tests", "chaos", "lowest"]

LOWEST = [
    # the lowest version of every runtime dependency pyproject.toml allows
    "redis[hiredis]==8.1.0",
    "msgspec==0.19.0",
    "croniter==6.1.0",
    "anyio==4.4.0",
    "uvloop==0.19.0",
    "PyYAML==6.0",
]


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    session.run("pytest", *session.posargs)  # (tests/chaos is not collected: see pyproject)


@nox.session
def chaos(session: nox.Session) -> None:
    """Fault-injection scenarios (tests/chaos, ~5 min): SIGKILL storms, SIGSTOP, Redis kill -9,
    cut connections, poison messages, cron and chords under kills, SCRIPT FLUSH and maxmemory,
    Sentinel failovers. Prints one line per scenario; details in tests/chaos/.results/."""
    session.run("pytest", "tests/chaos", *session.posargs)


@nox.session(venv_backend="venv", reuse_venv=True)
def lowest(session: nox.Session) -> None:
    """The test suite on the lowest versions of the runtime dependencies pyproject.toml allows
    (in a venv of its own, .nox/lowest), not only on what pip resolves today."""
    session.install("-e", ".[dev]", *LOWEST)
    session.run("python", "-c", _SHOW_VERSIONS)
    session.run("pytest", "-q", "--backends=redis", *session.posargs)


_SHOW_VERSIONS = (
    "import importlib.metadata as m; "
    "print(*(f'{p} {m.version(p)}' for p in "
    "('redis', 'msgspec', 'croniter', 'anyio', 'uvloop', 'PyYAML')), sep='; ')"
)


@nox.session
def bench(session: nox.Session) -> None:
    """vecna_async vs arq, saq, taskiq and streaq (~30 min; not a default session).

    ``nox -s bench`` runs everything with 3 repeats; ``nox -s bench -- --quick`` is a smoke run;
    other options of benchmarks/run.py pass through. Needs redis-server, redis-benchmark and the
    ``bench`` extra (``pip install -e '.[bench]'``).
    """
    session.run(sys.executable, "benchmarks/run.py", *session.posargs)
