"""The sample tree in migrations_sql/: valid, fully reversible, and a clean round trip."""

from pathlib import Path

from nixmig.tree import load_tree

SAMPLE = Path(__file__).resolve().parent.parent / "migrations_sql"
MODULES = {
    "auth",
    "users",
    "organizations",
    "rbac",
    "applications",
    "containers",
    "terminal",
    "notifications",
    "integrations/github",
    "dashboard",
    "domains",
    "feature-flags",
    "audit",
}

# The schema as the catalog describes it: names, columns, defaults, constraints, indexes,
# triggers, functions and types of the public schema, minus the tracking table.
SNAPSHOT = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relname NOT IN ('migrations', 'migrations_progress')
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  AND conrelid::regclass::text NOT IN ('migrations', 'migrations_progress')
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
  AND tablename NOT IN ('migrations', 'migrations_progress')
UNION ALL
SELECT 'trigger', pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'function', pg_get_functiondef(p.oid) FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'type', t.typname || ' ' || array_to_string(ARRAY(
    SELECT enumlabel FROM pg_enum WHERE enumtypid = t.oid ORDER BY enumsortorder), ',')
FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace AND t.typtype = 'e'
ORDER BY 1, 2
"""


def test_sample_tree_covers_the_13_modules_and_every_up_has_a_down():
    tree = load_tree(SAMPLE)
    assert tree.problems == ()
    assert {m.module for m in tree.migrations} == MODULES
    assert all(m.reversible and not m.down.is_empty for m in tree.migrations)


def test_up_all_down_all_up_all_leaves_the_schema_identical(scratch_db):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(SAMPLE))
    assert rc == 0, err
    first = scratch_db.sql(SNAPSHOT)
    assert len(first) > 100
    assert scratch_db.value("SELECT count(*) FROM migrations") == len(load_tree(SAMPLE).migrations)

    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(SAMPLE), everything=True, interactive=False)
    assert rc == 0, err
    assert scratch_db.sql(SNAPSHOT) == []
    assert scratch_db.tables() == {"migrations"}

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(SAMPLE))
    assert rc == 0, err
    assert scratch_db.sql(SNAPSHOT) == first


def test_sample_data_works_with_cross_module_keys_and_triggers(scratch_db):
    scratch_db.run("sqlmigrate_up", dir=str(SAMPLE))
    scratch_db.sql("INSERT INTO users (email, username, password_hash) VALUES ('a@b.c', 'a', 'x')")
    scratch_db.sql("INSERT INTO organizations (name) VALUES ('acme')")
    scratch_db.sql(
        "INSERT INTO applications (name, repository, port, user_id, organization_id) "
        "SELECT 'web', 'git@x', 8080, u.id, o.id FROM users u, organizations o"
    )
    assert scratch_db.value("SELECT count(*) FROM audit_logs WHERE action = 'create'") == 1
    before = scratch_db.value("SELECT updated_at FROM users")
    scratch_db.sql("UPDATE users SET username = 'b'")
    assert scratch_db.value("SELECT updated_at FROM users") > before
