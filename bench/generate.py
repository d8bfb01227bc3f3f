"""Generate the synthetic migration tree of the benchmark, in the format of every tool.

Migration ``i`` (1..N) belongs to module ``MODULES[(i - 1) % 13]`` (the 13 modules of the
Nixopus tree) and, going up, creates a table with a UUID key (``gen_random_uuid()``), an
index, a plpgsql trigger function with a dollar-quoted body and its trigger, and inserts
two rows: five statements. Going down, it drops them again.

Layout under ``<root>``::

    nixmig/<module>/<NNNNN>_create_<slug>_t<NNNNN>_up.sql / _down.sql
    dbmate/<NNNNN>_<module>_<name>.sql         (-- migrate:up / -- migrate:down)
    yoyo/<NNNNN>_<module>_<name>.sql / .rollback.sql
    django/bench_django_migrations/<NNNNN>_<module>_<name>.py   (one RunSQL each)
    psql/up.sql        BEGIN; <file>; INSERT INTO psql_migrations ...; COMMIT; per migration

    python bench/generate.py 520 bench/results/trees/520
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

MODULES = [
    "auth",
    "users",
    "organizations",
    "rbac",
    "applications",
    "containers",
    "domains",
    "integrations",
    "notifications",
    "feature-flags",
    "audit",
    "dashboard",
    "terminal",
]
FORMATS = ("nixmig", "dbmate", "yoyo", "django", "psql")
PSQL_TABLE = "psql_migrations"


def migration(i: int) -> tuple[str, str, str, str]:
    """Return (module, bare name, up SQL, down SQL) of migration ``i``."""
    module = MODULES[(i - 1) % len(MODULES)]
    slug = module.replace("-", "_")
    table = f"bench_{slug}_{i:05d}"
    name = f"{i:05d}_create_{slug}_t{i:05d}"
    up = f"""\
-- {module}: table {table}, with an index, a trigger and two rows.
CREATE TABLE {table} (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(255) NOT NULL,
    payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX {table}_name_idx ON {table} (name, created_at);

CREATE FUNCTION {table}_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- keep updated_at current; a ';' inside the body must not split the statement
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_touch();

INSERT INTO {table} (name, payload) VALUES ('first', '{{"n": 1}}'), ('second', '{{"n": 2}}');
"""
    down = f"""\
DROP TRIGGER IF EXISTS {table}_touch ON {table};
DROP FUNCTION IF EXISTS {table}_touch();
DROP TABLE IF EXISTS {table};
"""
    return module, name, up, down


def generate(n: int, root: Path, *, force: bool = False) -> Path:
    """Write the tree of ``n`` migrations in every format under ``root`` (kept when already there)."""
    root = Path(root)
    marker = root / ".complete"
    if marker.exists() and not force and marker.read_text().strip() == str(n):
        return root
    if root.exists():
        shutil.rmtree(root)
    dirs = {f: root / f for f in FORMATS}
    for d in dirs.values():
        d.mkdir(parents=True)
    django_pkg = dirs["django"] / "bench_django_migrations"
    django_pkg.mkdir()
    (django_pkg / "__init__.py").write_text("")
    psql = [
        f"CREATE TABLE {PSQL_TABLE} (id BIGSERIAL PRIMARY KEY, module VARCHAR, name VARCHAR NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now());\n"
    ]
    previous = None
    for i in range(1, n + 1):
        module, name, up, down = migration(i)
        mdir = dirs["nixmig"] / module
        mdir.mkdir(exist_ok=True)
        (mdir / f"{name}_up.sql").write_text(up)
        (mdir / f"{name}_down.sql").write_text(down)

        flat = f"{i:05d}_{module.replace('-', '_')}_{name[6:]}"
        (dirs["dbmate"] / f"{flat}.sql").write_text(f"-- migrate:up\n{up}\n-- migrate:down\n{down}")
        (dirs["yoyo"] / f"{flat}.sql").write_text(up)
        (dirs["yoyo"] / f"{flat}.rollback.sql").write_text(down)

        deps = f"[('benchapp', {previous!r})]" if previous else "[]"
        (django_pkg / f"{flat}.py").write_text(
            "from django.db import migrations\n\n\n"
            "class Migration(migrations.Migration):\n"
            f"    dependencies = {deps}\n"
            f"    operations = [migrations.RunSQL({up!r}, {down!r})]\n"
        )
        previous = flat

        psql.append(
            f"BEGIN;\n{up}\nINSERT INTO {PSQL_TABLE} (module, name) VALUES ('{module}', '{name}');\nCOMMIT;\n"
        )
    (dirs["psql"] / "up.sql").write_text("".join(psql))
    # Byte-compile the Django migrations now, as a project's deploy would have them: without
    # .pyc files Django's first runs would pay for compiling thousands of modules.
    import compileall

    compileall.compile_dir(str(django_pkg), quiet=1, workers=1)
    marker.write_text(f"{n}\n")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/generate.py N OUTPUT_DIR")
    print(generate(int(sys.argv[1]), Path(sys.argv[2]), force=True))
