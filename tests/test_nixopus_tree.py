"""The real Nixopus migration tree (../shared/corpora/nixopus, 106 files), applied and rolled back.

The corpus is read in place and never copied into the repository. Its files create the
``uuid-ossp`` extension and call ``uuid_generate_v4()``: Debian's PostgreSQL 15 has it in
contrib, the embedded PostgreSQL 18 has a shim that provides exactly that function.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import pytest

from nixmig.tree import load_tree

NIXOPUS_TABLES = {
    "api_keys",
    "application_deployment",
    "application_deployment_status",
    "application_domains",
    "application_logs",
    "application_status",
    "applications",
    "audit_logs",
    "domains",
    "execution_steps",
    "extension_executions",
    "extension_logs",
    "extension_variables",
    "extensions",
    "feature_flags",
    "github_connectors",
    "health_check_results",
    "health_checks",
    "notification_preferences",
    "organization_settings",
    "organization_users",
    "organizations",
    "preference_item",
    "refresh_tokens",
    "smtp_configs",
    "user_preferences",
    "user_settings",
    "users",
    "verification_tokens",
    "webhook_configs",
}
ORPHAN_DOWNS = {  # down file -> the up file it most likely belongs to (same folder, same number)
    "applications/008_create_application_down.sql": "applications/008_create_appplication_up.sql",
    "applications/011_drop_column_commit_hash_from_development_down.sql": "applications/011_add_commit_hash_to_deployment_up.sql",
    "applications/012_remove_container_info_deployment_down.sql": "applications/012_add_container_info_deployment_up.sql",
    "applications/013_remove_dockerfile_path_application_down.sql": "applications/013_add_dockerfile_path_application_up.sql",
    "domains/016_remove_org_id_from_domain_down.sql": "domains/016_add_org_id_domain_up.sql",
    "feature-flags/029_feature_flags_permissions_down.sql": "feature-flags/029_add_feature_flags_permissions_up.sql",
    "notifications/015_remove_organization_id_from_smtp_configs_down.sql": "notifications/015_add_organization_id_to_smtp_configs_up.sql",
    "notifications/024_create_webhook_cinfigs_down.sql": "notifications/024_create_webhook_configs_up.sql",
    "rbac/003_create_roles_permissions_down.sql": "rbac/003_create_roles_permission_up.sql",
}
UP_FILES_WITHOUT_ANY_DOWN = {
    "applications/040_add_draft_status_up.sql",
    "audit/022_add_additional_resource_types_up.sql",
    "audit/035_add_extensions_to_audit_up.sql",
    "notifications/026_remove_webhook_secret_and_channel_id_up.sql",
}
# Rolled back one step at a time from the top, until applications/040 (irreversible) stops it.
REVERSIBLE_TOP = [
    "extensions/044_set_featured_extensions",
    "healthcheck/043_create_health_checks",
    "extensions/043_add_featured_column",
    "applications/043_drop_domain_from_applications",
    "extensions/042_increase_description_length",
    "applications/042_create_application_domains",
    "extensions/041_add_media_category",  # its down file is empty: an explicit no-op
    "applications/041_add_family_id_to_applications",
]


def test_whole_tree_applies_from_empty_in_global_number_order(nixopus_db, nixopus_dir):
    out, err, rc = nixopus_db.run("sqlmigrate_up", dir=str(nixopus_dir))

    assert rc == 0, err
    assert "Applied 55 migration(s)" in out
    tree = load_tree(nixopus_dir)
    assert [(m.module, m.name) for m in tree.migrations] == nixopus_db.records()
    numbers = [int(name[:3]) for _, name in nixopus_db.records()]
    assert numbers == sorted(numbers) and len(set(numbers)) == 43  # 001..044 without 009, one global counter
    assert nixopus_db.tables() == NIXOPUS_TABLES | {"migrations"}
    assert len(nixopus_db.tables()) == 31
    checksums = dict(
        ((r[0], r[1]), r[2]) for r in nixopus_db.sql("SELECT module, name, checksum FROM migrations")
    )
    assert checksums == {(m.module, m.name): m.checksum for m in tree.migrations}


def test_sqlmigrate_up_warns_about_each_down_file_that_matches_no_up_file(nixopus_db, nixopus_dir):
    out, err, rc = nixopus_db.run("sqlmigrate_up", dir=str(nixopus_dir))

    assert rc == 0, err
    warned = re.findall(r"^Warning: (\S+): matches no up file", err, re.M)
    assert sorted(warned) == sorted(ORPHAN_DOWNS)


def test_tree_reports_nine_misnamed_down_files_with_the_up_file_each_belongs_to(nixopus_dir):
    tree = load_tree(nixopus_dir)

    orphans = [p for p in tree.problems if p.code == "orphan_down"]
    assert {p.file for p in orphans} == set(ORPHAN_DOWNS)
    assert {p.level for p in orphans} == {"warning"}
    for p in orphans:
        assert f"it is probably the down file of {ORPHAN_DOWNS[p.file]}" in p.message
    assert not tree.errors


def test_tree_reports_thirteen_irreversible_migrations_four_of_them_without_any_down_file(nixopus_dir):
    tree = load_tree(nixopus_dir)

    irreversible = {p.file: p for p in tree.problems if p.code == "irreversible"}
    assert set(irreversible) == set(ORPHAN_DOWNS.values()) | UP_FILES_WITHOUT_ANY_DOWN
    assert len(irreversible) == 13
    assert {p.level for p in irreversible.values()} == {"info"}
    for up, problem in irreversible.items():
        if up in UP_FILES_WITHOUT_ANY_DOWN:
            assert "has no down file, so" in problem.message
        else:
            assert "is probably its down file with a misspelt name" in problem.message
    assert [m.id for m in tree.migrations if not m.reversible] == sorted(
        (p[: -len("_up.sql")] for p in irreversible), key=lambda i: (int(i.split("/")[-1][:3]), i)
    )
    assert load_tree(nixopus_dir).get("extensions/041_add_media_category").down.is_empty


def test_broken_down_of_organizations_004_fails_with_file_and_line_and_changes_nothing(
    nixopus_db, nixopus_dir
):
    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="organizations/004_create_organization"
    )
    assert rc == 0, err

    out, err, rc = nixopus_db.run("sqlmigrate_down", dir=str(nixopus_dir))

    assert rc == 1
    assert "Unapplying organizations/004_create_organization... FAILED" in out
    assert (
        "organizations/004_create_organization_down.sql line 1: cannot drop table organizations because other "
        "objects depend on it (SQLSTATE 2BP01)" in err
    )
    assert "It was rolled back and stays recorded as applied." in err
    assert {"organizations", "organization_users"} <= nixopus_db.tables()
    assert nixopus_db.records()[-1] == ("organizations", "004_create_organization")


def test_misnamed_down_of_applications_008_once_renamed_fails_with_its_syntax_error_line(
    nixopus_db, nixopus_dir, tmp_path
):
    copy = tmp_path / "nixopus"  # a scratch copy outside the repository, to fix the file name
    shutil.copytree(nixopus_dir, copy)
    (copy / "applications/008_create_application_down.sql").rename(
        copy / "applications/008_create_appplication_down.sql"
    )
    out, err, rc = nixopus_db.run("sqlmigrate_up", dir=str(copy), to="applications/008_create_appplication")
    assert rc == 0, err
    tables = nixopus_db.tables()

    out, err, rc = nixopus_db.run("sqlmigrate_down", dir=str(copy))

    assert rc == 1
    assert 'applications/008_create_appplication_down.sql line 7: syntax error at or near "custom"' in err
    assert nixopus_db.tables() == tables  # its DROP TABLEs on lines 1-3 were rolled back
    assert "applications" in tables


def test_rbac_033_own_begin_commit_do_not_end_nixmig_transaction(nixopus_db, nixopus_dir):
    if not nixopus_db.value("SELECT current_setting('is_superuser') = 'on'"):
        pytest.skip("needs a superuser to create the event trigger that makes rbac/033 fail half-way")
    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="dashboard/032_add_dashboard_permissions"
    )
    assert rc == 0, err
    before = nixopus_db.records()
    # Make the file's last DROP (line 8, after its own BEGIN on line 1) fail. If that BEGIN/COMMIT were sent as
    # they are, they would end nixmig's transaction; nixmig blanks them so the whole file and its record are one.
    nixopus_db.sql("""
        CREATE FUNCTION keep_roles() RETURNS event_trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() WHERE object_identity = 'public.roles') THEN
            RAISE EXCEPTION 'roles must stay';
          END IF;
        END $$;
        CREATE EVENT TRIGGER keep_roles ON sql_drop EXECUTE FUNCTION keep_roles();
    """)

    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="rbac/033_remove_rbac_tables", no_lint=True
    )  # the real file drops tables in use: lint refuses it

    assert rc == 1
    assert "rbac/033_remove_rbac_tables_up.sql line 8: roles must stay" in err
    assert {"roles", "permissions", "role_permissions"} <= nixopus_db.tables()  # lines 3-7 were rolled back
    assert (
        nixopus_db.value(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'organization_users' "
            "AND column_name = 'role_id'"
        )
        == 1
    )
    assert nixopus_db.records() == before

    nixopus_db.sql("DROP EVENT TRIGGER keep_roles")
    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="rbac/033_remove_rbac_tables", no_lint=True
    )  # the real file drops tables in use: lint refuses it

    assert rc == 0, err
    assert not {"roles", "permissions", "role_permissions"} & nixopus_db.tables()
    assert nixopus_db.records() == before + [("rbac", "033_remove_rbac_tables")]


def test_rbac_033_and_its_record_commit_together_despite_its_own_commit(nixopus_db, nixopus_dir):
    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="dashboard/032_add_dashboard_permissions"
    )
    assert rc == 0, err
    before = nixopus_db.records()
    # Refuse the record of rbac/033. Had the file's COMMIT been sent, its DROPs would be committed by then and
    # the Go migrator's "applied but not recorded" state would follow.
    nixopus_db.sql("""
        CREATE FUNCTION refuse_033() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.name = '033_remove_rbac_tables' THEN RAISE EXCEPTION 'no record for 033'; END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_033 BEFORE INSERT ON migrations FOR EACH ROW EXECUTE FUNCTION refuse_033();
    """)

    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="rbac/033_remove_rbac_tables", no_lint=True
    )  # the real file drops tables in use: lint refuses it

    assert rc == 1
    assert "Applying rbac/033_remove_rbac_tables failed" in err and "no record for 033" in err
    assert {"roles", "permissions", "role_permissions"} <= nixopus_db.tables()
    assert nixopus_db.records() == before


def test_rbac_033_is_undone_when_a_later_migration_of_an_atomic_run_fails(nixopus_db, nixopus_dir):
    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="dashboard/032_add_dashboard_permissions"
    )
    assert rc == 0, err
    before = nixopus_db.records()
    nixopus_db.sql(
        "ALTER TABLE applications ADD COLUMN labels integer"
    )  # applications/034's GIN index then fails

    out, err, rc = nixopus_db.run(
        "sqlmigrate_up",
        dir=str(nixopus_dir),
        to="applications/034_add_labels_to_applications",
        atomic=True,
        no_lint=True,
    )  # rbac/033 drops tables in use: lint refuses it

    assert rc == 1
    assert "Applying applications/034_add_labels_to_applications failed" in err
    assert "with --atomic so was everything else of this run: nothing of it was applied" in err
    assert {"roles", "permissions", "role_permissions"} <= nixopus_db.tables()  # rbac/033's DROPs were undone
    assert nixopus_db.records() == before


def test_rollback_step_by_step_stops_clearly_at_the_first_irreversible_migration_then_reapplies(
    nixopus_db, nixopus_dir
):
    out, err, rc = nixopus_db.run("sqlmigrate_up", dir=str(nixopus_dir))
    assert rc == 0, err
    rolled_back = []
    for _ in REVERSIBLE_TOP:
        before = nixopus_db.records()
        out, err, rc = nixopus_db.run("sqlmigrate_down", dir=str(nixopus_dir))
        assert rc == 0, err
        (gone,) = set(before) - set(nixopus_db.records())
        rolled_back.append("/".join(gone))
    assert rolled_back == REVERSIBLE_TOP
    assert not {"health_checks", "health_check_results", "application_domains"} & nixopus_db.tables()
    records = nixopus_db.records()

    out, err, rc = nixopus_db.run("sqlmigrate_down", dir=str(nixopus_dir))

    assert rc == 1
    assert err.endswith(
        "Nothing can be rolled back: the most recently applied migration, "
        "applications/040_add_draft_status, is irreversible (it has no down file, "
        "applications/040_add_draft_status_down.sql). Nothing was rolled back. Add the down file (an "
        "empty one is an explicit no-op rollback), or remove its record without running SQL with "
        "--fake."
    )
    assert nixopus_db.records() == records and len(records) == 47

    # Re-applying drops applications.domain, a column of a table that exists now: lint refuses it
    out, err, rc = nixopus_db.run("sqlmigrate_up", dir=str(nixopus_dir), no_lint=True)

    assert rc == 0, err
    assert re.findall(r"Applying (\S+)\.\.\. OK", out) == REVERSIBLE_TOP[::-1]
    assert len(nixopus_db.records()) == 55
    assert nixopus_db.tables() == NIXOPUS_TABLES | {"migrations"}


def test_status_lists_the_tree_problems_readably(nixopus_db, nixopus_dir):
    out, err, rc = nixopus_db.run("sqlmigrate_status", dir=str(nixopus_dir))

    assert rc == 0, err
    lines = out.splitlines()
    problems = lines[lines.index("Problems:") + 1 : -1]
    assert len(problems) == 33
    assert problems[0] == (
        "  warning: applications/008_create_application_down.sql: matches no up file (expected "
        "008_create_application_up.sql beside it); it is probably the down file of "
        "applications/008_create_appplication_up.sql: rename it to 008_create_appplication_down.sql, or delete it."
    )
    assert Counter(p.split(":")[0] for p in problems) == {"  warning": 20, "  info": 13}
    assert (
        "  warning: applications/043_drop_domain_from_applications_up.sql, extensions/043_add_featured_column_up.sql "
        "and healthcheck/043_create_health_checks_up.sql share the number 043, so they run in the order of module "
        "and name (applications/043_drop_domain_from_applications first), whatever order they were written in. If "
        "they come from two branches, renumber the later one after the highest number (045) with 'python manage.py "
        "sqlmigrate_new' and move its SQL there; NIXMIG['UNIQUE_NUMBERS'] = True refuses shared numbers."
        in problems
    )
    assert (
        "  info: applications/040_add_draft_status_up.sql: has no down file, so applications/040_add_draft_status "
        "is irreversible (add 040_add_draft_status_down.sql; an empty one is an explicit no-op rollback)."
        in problems
    )
    assert (
        lines[-1]
        == "55 migration(s): 0 applied, 55 pending, 0 changed, 0 missing, 0 partly applied, 0 partly rolled back."
    )
    assert (
        re.sub(r"\s+", " ", lines[lines.index("applications") + 1])
        == " [ ] 008_create_appplication irreversible"
    )


def test_status_check_fails_on_the_tree_warnings_even_when_everything_is_applied(nixopus_db, nixopus_dir):
    nixopus_db.run("sqlmigrate_up", dir=str(nixopus_dir))

    out, err, rc = nixopus_db.run("sqlmigrate_status", dir=str(nixopus_dir), check=True)

    assert rc == 1
    assert (
        err
        == "Not up to date: 0 pending, 0 changed, 0 missing, 0 partly applied, 0 partly rolled back, 20 problem(s)."
    )
    assert (
        out.splitlines()[-1]
        == "55 migration(s): 55 applied, 0 pending, 0 changed, 0 missing, 0 partly applied, 0 partly rolled back."
    )


def test_status_json_lists_the_tree_problems_machine_readably(nixopus_db, nixopus_dir):
    out, err, rc = nixopus_db.run("sqlmigrate_status", dir=str(nixopus_dir), json=True)

    assert rc == 0, err
    data = json.loads(out)
    assert Counter((p["level"], p["code"]) for p in data["problems"]) == {
        ("warning", "orphan_down"): 9,
        ("warning", "duplicate_number"): 11,  # legitimate: the modules grew side by side
        ("info", "irreversible"): 13,
    }
    assert {p["file"] for p in data["problems"] if p["code"] == "orphan_down"} == set(ORPHAN_DOWNS)
    assert {p["file"] for p in data["problems"] if p["code"] == "irreversible"} == set(
        ORPHAN_DOWNS.values()
    ) | UP_FILES_WITHOUT_ANY_DOWN
    assert data["summary"] == {
        "applied": 0,
        "pending": 55,
        "changed": 0,
        "missing": 0,
        "partly_applied": 0,
        "partly_rolled_back": 0,
    }
    assert sum(not m["reversible"] for m in data["migrations"]) == 13
