"""Seeded fuzzing of the names nixmig takes from outside: schema names, module folders, file names.

Every case either works or gives one clear error (a NixmigError, or a problem in the tree),
never a traceback; names that reach the database run no SQL but the migration's own (an
event trigger logs every DDL command, and a victim table must survive).
"""

from __future__ import annotations

import io
import os
import random

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pglast import parse_sql

from nixmig import api, sqlnames
from nixmig.exceptions import NixmigError, UnsafeName
from nixmig.targets import TargetError, parse_targets
from nixmig.tree import FILE_RE, MODULE_SEGMENT_RE, load_tree

SEED = 20261206
ALPHABET = b"abcXYZ019_-.\"';$/\\ \t\n\r\x00\x01\x1b\x7f#:%()[]{}*=@" + "é€\u202e\u200b".encode()


def random_names(rng: random.Random, count: int, *, max_len: int = 24) -> list[str]:
    """Return random strings: bytes drawn mostly from SQL- and shell-meaningful ones, decoded leniently."""
    names = []
    for _ in range(count):
        size = rng.randint(0, max_len)
        if rng.random() < 0.5:
            raw = bytes(rng.choice(ALPHABET) for _ in range(size))
        else:
            raw = bytes(rng.randrange(256) for _ in range(size))
        names.append(raw.decode("utf-8", "replace"))
    return names


# -- schema names: pure checks over thousands of names --------------------------------------------


def test_random_schema_names_are_refused_clearly_or_quoted_into_exactly_that_name():
    rng = random.Random(SEED)
    accepted = refused = 0
    for name in random_names(rng, 3000) + ['x"; DROP TABLE victim; --', 'a""b', "tenant_1"]:
        try:
            sqlnames.check_schema(name, "--schema")
        except UnsafeName as exc:
            refused += 1
            assert str(exc).startswith(f"--schema: the schema name {name!r} ")
            continue
        accepted += 1
        statements = parse_sql(f"CREATE SCHEMA IF NOT EXISTS {sqlnames.ident(name)}")
        assert len(statements) == 1
        assert statements[0].stmt.schemaname == name  # PostgreSQL's own parser reads back the very name
        path = parse_sql(f"SET search_path = {sqlnames.search_path(name)}")[0].stmt
        assert [a.val.sval for a in path.args] == [name, "public"]
    assert accepted > 500 and refused > 500  # both kinds were exercised


def test_random_targets_file_lines_parse_or_give_one_clear_error():
    rng = random.Random(SEED + 1)
    for text in random_names(rng, 3000, max_len=40):
        try:
            specs = parse_targets(f"default:{text}\n", "t.txt")
        except TargetError as exc:
            assert str(exc).startswith("t.txt line "), str(exc)  # the text may hold a line break
            continue
        for spec in specs:
            assert spec.schema is None or sqlnames.schema_problem(spec.schema) == ""


# -- module and file names: trees on disk -----------------------------------------------------------


def _fs_name(name: str) -> str | None:
    """Return a name the file system can hold (no '/', no NUL, not '.' or '..', short), or None."""
    name = name.replace("/", "_").replace("\x00", "_")
    if name in ("", ".", "..") or len(os.fsencode(name)) > 200:
        return None
    return name


def test_random_module_and_file_names_load_or_are_named_as_problems(tmp_path):
    rng = random.Random(SEED + 2)
    cases = 0
    for batch in range(20):
        root = tmp_path / f"tree{batch}"
        root.mkdir()
        written: list[tuple[str, str]] = []
        for number, (module, stem) in enumerate(
            zip(random_names(rng, 60, max_len=12), random_names(rng, 60, max_len=12), strict=True), 1
        ):
            module = _fs_name(module) or "core"
            if rng.random() < 0.5:
                filename = f"{number:03d}_{stem}_{rng.choice(['up', 'down'])}.sql"
            else:
                filename = stem + rng.choice([".sql", "_up.sql", ".sql\n", ""])
            filename = _fs_name(filename)
            if filename is None:
                continue
            folder = root / module
            try:
                folder.mkdir(exist_ok=True)
                (folder / filename).write_text("SELECT 1;\n", encoding="utf-8")
            except OSError:
                continue  # a name this file system refuses (e.g. a folder that is a file already)
            written.append((module, filename))
            cases += 1
        tree = load_tree(root)  # never raises for names: each bad one is a problem
        for m in tree.migrations:
            assert all(MODULE_SEGMENT_RE.fullmatch(s) for s in m.module.split("/") if s), m.id
            assert FILE_RE.fullmatch(m.up.relpath.rsplit("/", 1)[-1]), m.id
            assert m.id.isprintable()
        for problem in tree.problems:
            assert problem.message.isprintable(), problem.message
        loaded = {m.up.relpath for m in tree.migrations} | {
            m.down.relpath for m in tree.migrations if m.down is not None
        }
        for module, filename in written:
            relpath = f"{module}/{filename}"
            if relpath in loaded:
                assert FILE_RE.fullmatch(filename) and MODULE_SEGMENT_RE.fullmatch(module)
    assert cases > 1000


# -- names that reach the database: the DDL log shows only the migration's own statements ------------


@pytest.fixture
def ddl_log(scratch_db):
    """Log every DDL command the server runs (an event trigger), and a victim table that must survive."""
    scratch_db.sql(
        """
        CREATE TABLE public.victim (id int); INSERT INTO public.victim VALUES (1);
        CREATE TABLE public.ddl_log (tag text, schema text, object text);
        CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
        DECLARE r record;
        BEGIN
          FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
            INSERT INTO public.ddl_log VALUES (r.command_tag, r.schema_name, r.object_identity);
          END LOOP;
        END $$;
        CREATE FUNCTION public.log_drop() RETURNS event_trigger LANGUAGE plpgsql AS $$
        DECLARE r record;
        BEGIN
          FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
            INSERT INTO public.ddl_log VALUES ('DROP', r.schema_name, r.object_identity);
          END LOOP;
        END $$;
        CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION public.log_ddl();
        CREATE EVENT TRIGGER log_drop ON sql_drop EXECUTE FUNCTION public.log_drop();
        """
    )
    return scratch_db


def test_random_schema_names_through_the_api_and_the_command(ddl_log, tree):
    tree.pair("core/001_things", "CREATE TABLE things (id int);\n", "DROP TABLE things;\n")
    rng = random.Random(SEED + 3)
    names = [n for n in random_names(rng, 120, max_len=16) if n][:60] + ['x"; DROP TABLE victim; --']
    worked = refused = 0
    for i, name in enumerate(names):
        ddl_log.sql("TRUNCATE public.ddl_log")
        if i % 2:
            out, err = io.StringIO(), io.StringIO()
            try:
                call_command(
                    "sqlmigrate_up",
                    dir=str(tree),
                    database=[ddl_log.alias],
                    schemas=[name],
                    create_schemas=True,
                    stdout=out,
                    stderr=err,
                )
                ok = True
            except CommandError as exc:
                ok = False
                message = str(exc)
        else:
            try:
                api.migrate_up(directory=tree.path, database=ddl_log.alias, schema=name, create_schema=True)
                ok = True
            except NixmigError as exc:
                ok = False
                message = str(exc)
        log = ddl_log.sql(
            "SELECT tag, CASE WHEN tag = 'CREATE SCHEMA' AND object = quote_ident(%s) THEN %s ELSE schema END "
            "FROM public.ddl_log",
            [name.replace("\x00", "")] * 2,  # a name with a NUL is refused; it only needs to be text here
        )
        assert ddl_log.value("SELECT count(*) FROM public.victim") == 1, name
        if ok:
            worked += 1
            assert sqlnames.schema_problem(name) == ""
            assert {schema for _, schema in log} <= {name}, (name, log)
            assert {tag for tag, _ in log} <= {
                "CREATE SCHEMA",
                "CREATE TABLE",
                "CREATE INDEX",
                "CREATE SEQUENCE",
                "ALTER SEQUENCE",
            }, (name, log)
            assert ddl_log.value(f"SELECT count(*) FROM {sqlnames.ident(name, 'migrations')}") == 1
        else:
            refused += 1
            assert "Traceback" not in message and sqlnames.schema_problem(name), (name, message)
            assert f"the schema name {name!r} " in message, message
            assert log == [], (name, log)  # refused before anything ran
    assert worked > 10 and refused > 10
