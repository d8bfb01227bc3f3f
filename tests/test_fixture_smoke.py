def test_scratch_db_applies_a_tree_from_a_subprocess_and_call_command(scratch_db, tree):
    tree.table_pair("auth/001_create_users", "users")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert "Applying auth/001_create_users... OK" in out
    proc = scratch_db.manage("sqlmigrate_status", "--dir", str(tree), "--check")
    assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == [("auth", "001_create_users")]
