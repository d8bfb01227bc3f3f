"""The package's checks, one nox session each: ``.venv/bin/nox -s lint typecheck tests-16``.

Every session runs in the project's own ``.venv`` (made by scripts/setup.sh from requirements.txt),
so a session costs no install of its own; the wheel session makes a fresh venv for the wheel, on
purpose. ``.ci/run`` runs them all.

The PostgreSQL matrix:
- ``tests-18``: the embedded PostgreSQL 18 (the README's test command, ``bash scripts/test.sh``);
- ``tests-16``: PostgreSQL 16 from the ``pgserver`` wheel, a private server started for the run
  and stopped by its pid (tests/pgcluster.py);
- ``tests-15``: Debian's PostgreSQL 15 at 127.0.0.1:5432, when it answers (skipped otherwise).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PY = str(ROOT / ".venv" / "bin" / "python")
SHARED_15 = "postgres://postgres@127.0.0.1:5432/postgres"

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests-18", "tests-16", "tests-15", "wheel"]


def _setup(session: nox.Session) -> None:
    session.run("bash", "-c", f"source {ROOT}/scripts/setup.sh", external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    _setup(session)
    session.run(PY, "-m", "ruff", "check", ".", external=True)
    session.run(PY, "-m", "ruff", "format", "--check", ".", external=True)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy with django-stubs over nixmig/ (configuration in pyproject.toml)."""
    _setup(session)
    session.run(PY, "-m", "mypy", external=True)


@nox.session(name="tests-18")
def tests_18(session: nox.Session) -> None:
    """The suite on the embedded PostgreSQL 18."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    session.run("bash", "scripts/test.sh", *session.posargs, external=True, env=env, include_outer_env=False)


@nox.session(name="tests-16")
def tests_16(session: nox.Session) -> None:
    """The suite on PostgreSQL 16 (pgserver wheel), on a private server for this run."""
    _setup(session)
    session.run(
        PY, "-m", "tests.pgcluster", "16", "--", "bash", "scripts/test.sh", *session.posargs, external=True
    )


@nox.session(name="tests-15")
def tests_15(session: nox.Session) -> None:
    """The suite on Debian's PostgreSQL 15 at 127.0.0.1:5432."""
    try:
        socket.create_connection(("127.0.0.1", 5432), 2).close()
    except OSError:
        session.skip("no PostgreSQL at 127.0.0.1:5432")
    session.run("bash", "scripts/test.sh", *session.posargs, external=True, env={"DATABASE_URL": SHARED_15})


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the sdist and wheel, check them, and run a fresh project on the wheel alone."""
    _setup(session)
    session.run(PY, "scripts/wheelcheck.py", external=True)
