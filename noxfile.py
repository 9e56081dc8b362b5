"""Checks, run in the project's own virtual environment (``./dev test`` calls them all)."""

from __future__ import annotations

import sys

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typing", "tests", "chaos"]


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


@nox.session
def bench(session: nox.Session) -> None:
    """vecna_async vs arq, saq, taskiq and streaq (~30 min; not a default session).

    ``nox -s bench`` runs everything with 3 repeats; ``nox -s bench -- --quick`` is a smoke run;
    other options of benchmarks/run.py pass through. Needs redis-server, redis-benchmark and the
    ``bench`` extra (``pip install -e '.[bench]'``).
    """
    session.run(sys.executable, "benchmarks/run.py", *session.posargs)
