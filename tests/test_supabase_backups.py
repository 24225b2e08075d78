"""Real Supabase backups, rehearsed: a Supabase-shaped database on PostgreSQL 15 (roles,
extensions in schema `extensions`, auth.users, partitioned realtime.messages, an event
trigger owned by supabase_admin, uuid defaults, RLS) is backed up the three ways Supabase
users do it, damaged, and repaired by notebook 31 with the default scratch server, both
where Debian's PostgreSQL 15 (with contrib) is installed and where only the embedded
PostgreSQL 16 is. Notebook 30 restores the pg_dump archive and verifies it."""

from __future__ import annotations

import re
import time
import uuid

import psycopg
import pytest

import supabase_shape as shape
from notebook_runs import run_notebook, shipped_parameters
from playbook import backup_kinds, supabase_dumps
from playbook.db import localdb, scratch_servers
from playbook.errors import ConfigurationError
from playbook.flags import flag
from playbook.steps import full_restore as steps30

KINDS = {"pg_dump -Fc": shape.custom_archive, "supabase db dump trio": shape.cli_trio,
         "dashboard .backup.gz": shape.hosted_backup}


@pytest.fixture
def supabase_db(_clusters, monkeypatch):
    """A fresh Supabase-shaped database on PostgreSQL 15; DATABASE_URL points at it."""
    cluster = _clusters.get(15)
    admin = cluster.state().url("postgres")
    name = f"sb_{uuid.uuid4().hex[:10]}"
    url = localdb.create_database(admin, name)
    shape.build(url)
    monkeypatch.setenv("DATABASE_URL", url)
    yield name, url
    localdb.drop_database(admin, name)


def _repair(name, url, tmp_path, backup):
    return run_notebook("31_restore_tables", tmp_path / "run", {
        "mode": "execute", "confirm_database": name,
        "answers": {q: "yes" for q in shipped_parameters("31_restore_tables")["answers"]},
        "incident_id": "INC-15", "operator": "rehearsal", "backup_file": str(backup),
        "tables": list(shape.CHOSEN), "export_dir": str(tmp_path / "exports")})


def _scratch_roles(major: int) -> set[str]:
    state = localdb.LocalCluster(f"scratch-pg{major}").state()
    with psycopg.connect(state.url("postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}


@pytest.mark.parametrize("scratch", ["best available", "embedded only"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_supabase_backup_repairs_the_damaged_tables_and_keeps_rows_written_since(
        supabase_db, tmp_path, monkeypatch, kind, scratch):
    name, url = supabase_db
    if scratch == "embedded only":  # a machine without Debian's PostgreSQL
        monkeypatch.setenv("PLAYBOOK_SCRATCH_POSTGRES", "embedded")
    backup = KINDS[kind](url, 15, tmp_path / "backup")
    before = {t: shape.rows(url, t) for t in shape.CHOSEN}
    untouched = {t: shape.rows(url, t) for t in ("auth.users", "public.profiles")}
    time.sleep(0.01)
    written_since = shape.damage(url)
    assert any(shape.rows(url, t) != before[t] for t in shape.CHOSEN)

    run = _repair(name, url, tmp_path, backup)

    assert not run.failed, run.error
    for table in shape.CHOSEN:
        now = shape.rows(url, table)
        assert {k: now.get(k) for k in before[table]} == before[table], table
        assert set(now) - set(before[table]) == written_since[table], table
    assert {t: shape.rows(url, t) for t in untouched} == untouched
    text = run.outputs_text()
    major = 16 if scratch == "embedded only" else scratch_servers.best_local_bindir()[0].major
    assert f"PostgreSQL {major} at" in text  # the record says which server was used
    if scratch == "embedded only":
        assert "stand-ins for uuid-ossp" in text
    assert "FAIL" not in text
    # The placeholder roles went with the scratch database; the server's own are left.
    left = _scratch_roles(major) & set(supabase_dumps.SUPABASE_ROLES)
    assert left == set(), left


def test_the_cli_trio_is_not_taken_for_truncated_and_its_auth_rows_have_a_home(
        supabase_db, tmp_path):
    _, url = supabase_db
    folder = shape.cli_trio(url, 15, tmp_path / "trio")
    data = (folder / "data.sql").read_text()
    assert data.rstrip().endswith("RESET ALL;") and "-- " not in data
    assert 'CREATE TABLE "auth"' not in (folder / "schema.sql").read_text()
    backup = backup_kinds.read_any_backup(folder)
    restored = supabase_dumps.restore_to_scratch(backup, tables=list(shape.CHOSEN))
    try:
        with psycopg.connect(url) as conn:
            users = conn.execute("SELECT count(*) FROM auth.users").fetchone()[0]
        assert restored.counts["auth.users"] == users
    finally:
        restored.scratch.drop()
    cut = tmp_path / "cut"
    cut.mkdir()
    for part in backup_kinds.TRIO_FILES:
        (cut / part).write_text((folder / part).read_text())
    (cut / "data.sql").write_text(data[: len(data) // 2])
    with pytest.raises(supabase_dumps.BackupUnusable, match="cut short"):
        backup_kinds.read_any_backup(cut)


def test_an_error_on_a_chosen_table_stops_the_restore_with_its_line(supabase_db, tmp_path,
                                                                     monkeypatch):
    _, url = supabase_db
    monkeypatch.setenv("PLAYBOOK_SCRATCH_POSTGRES", "embedded")
    path = shape.hosted_backup(url, 15, tmp_path)
    import gzip
    text = gzip.open(path, "rt").read().replace(
        "extensions.uuid_generate_v4()", "extensions.uuid_generate_v7()", 1)
    broken = tmp_path / "db_cluster-01-12-2026@03-00-01.backup"
    broken.write_text(text)
    backup = backup_kinds.read_any_backup(broken)
    with pytest.raises(supabase_dumps.BackupUnusable) as refused:
        supabase_dumps.restore_to_scratch(backup, tables=["public.projects"])
    message = str(refused.value)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "uuid_generate_v7" in t)
    reported = int(re.search(r"line (\d+)", message).group(1))
    assert line <= reported <= line + 12  # the line its CREATE TABLE statement ends on
    assert "public.projects" in message and "uuid_generate_v7" in message
    assert "download" not in message.lower()
    assert _scratch_roles(16) & set(supabase_dumps.SUPABASE_ROLES) == set()  # cleaned up
    # The same backup is fine for a table the broken statement does not touch.
    restored = supabase_dumps.restore_to_scratch(backup, tables=["public.profiles"])
    try:
        assert restored.script.harmless
    finally:
        restored.scratch.drop()


def test_full_restore_of_a_supabase_archive_test_restores_verifies_and_keeps_rows_since(
        supabase_db, tmp_path):
    name, url = supabase_db
    folder = tmp_path / "backups"
    from playbook import backups

    backups.take_backup(url, folder)
    at_backup = {t: shape.rows(url, t) for t in shape.CHOSEN}
    with psycopg.connect(url) as conn:
        messages = conn.execute("SELECT count(*) FROM realtime.messages").fetchone()[0]
    time.sleep(1.05)
    written_since = shape.damage(url)
    with psycopg.connect(url, autocommit=True) as conn:  # realtime writes into a partition
        conn.execute("INSERT INTO realtime.messages (topic, extension, inserted_at) SELECT "
                     "'room:new', 'broadcast', timestamp '2026-12-02 23:00' + i * interval "
                     "'1 minute' FROM generate_series(1, 3) i")
    run = run_notebook("30_full_restore", tmp_path / "records", {
        "mode": "execute", "confirm_database": name,
        "answers": {q: "yes" for q in steps30.GATE_QUESTIONS}, "incident_id": "INC-15",
        "operator": "rehearsal", "backup_dir": str(folder), "test_restore": "true",
        "restore_strategy": "swap", "terminate_connections": True,
        "reimport_after_backup_rows": "yes", "export_dir": str(tmp_path / "exports")})
    assert not run.failed, run.error
    text = run.outputs_text()
    assert "Restore verified: every check passed" in text
    for table in shape.CHOSEN:  # the backup's rows as they were, and the rows written since
        now = shape.rows(url, table)
        assert {k: now.get(k) for k in at_backup[table]} == at_backup[table], table
        assert set(now) - set(at_backup[table]) == written_since[table], table
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM realtime.messages").fetchone()[0] == \
            messages + 3
        assert conn.execute("SELECT count(*) FROM realtime.messages_2026_12_02 WHERE topic = "
                            "'room:new'").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM pg_event_trigger WHERE evtowner = "
                            "'supabase_admin'::regrole").fetchone()[0] == 1


@pytest.mark.parametrize("value,expected", [(True, True), ("false", False), ("No", False),
                                            ("1", True), (0, False), ("yes", True)])
def test_yes_no_parameters_are_parsed_strictly(value, expected):
    assert flag(value, "test_restore") is expected


def test_a_flag_that_is_not_yes_or_no_is_refused_before_anything(tmp_path):
    with pytest.raises(ConfigurationError, match="test_restore must be true or false"):
        flag("flase", "test_restore")


def test_papermill_false_as_a_string_turns_the_test_restore_off(supabase_db, tmp_path):
    from playbook import backups

    backups.take_backup(supabase_db[1], tmp_path / "backups")
    run = run_notebook("30_full_restore", tmp_path / "records", {
        "backup_dir": str(tmp_path / "backups"), "test_restore": "false",
        "export_dir": str(tmp_path / "exports")})
    assert run.failed and "GateClosed" in run.outputs_text()  # review: stops at the gate
    assert "test_restore=False: not tested" in run.outputs_text()


def test_rows_changed_after_the_backup_are_flagged_and_reverting_them_is_asked(
        supabase_db, tmp_path):
    name, url = supabase_db
    backup = shape.custom_archive(url, 15, tmp_path / "backup")
    before = {t: shape.rows(url, t) for t in shape.CHOSEN}
    time.sleep(1.05)  # the archive's time has whole seconds
    with psycopg.connect(url, autocommit=True) as conn:
        # Two legitimate increments after the backup (the touch trigger stamps updated_at)...
        raised = {str(r[0]) for r in conn.execute(
            "UPDATE public.projects SET budget = budget + 1 WHERE id IN (SELECT id FROM "
            "public.projects ORDER BY id LIMIT 2) RETURNING id").fetchall()}
        # ...and the damage: tasks deleted.
        conn.execute("DELETE FROM public.tasks WHERE id % 4 = 0")
    increments = shape.rows(url, "public.projects")
    parameters = {
        "mode": "execute", "confirm_database": name,
        "answers": {**{q: "yes" for q in shipped_parameters("31_restore_tables")["answers"]},
                    "changed_after_backup_reverted": "no"},
        "backup_file": str(backup), "tables": list(shape.CHOSEN),
        "export_dir": str(tmp_path / "exports")}
    run = run_notebook("31_restore_tables", tmp_path / "asked", parameters)
    assert run.failed and "changed_after_backup_reverted" in str(run.error)
    text = run.outputs_text()
    assert "of the changed: modified after the backup" in text
    assert "changed after the backup" in text  # the two keys sampled
    assert sum(text.count(key) for key in raised) >= 4  # each key: changed, changed after
    assert shape.rows(url, "public.projects") == increments  # nothing reverted
    # Keeping them: `missing` for projects brings back only what was deleted.
    parameters["answers"]["changed_after_backup_reverted"] = "yes"
    parameters["strategy"] = {"public.projects": "missing"}
    run = run_notebook("31_restore_tables", tmp_path / "kept", parameters)
    assert not run.failed, run.error
    assert shape.rows(url, "public.projects") == increments
    assert {k: v for k, v in increments.items() if k not in raised} == {
        k: v for k, v in before["public.projects"].items() if k not in raised}
    assert shape.rows(url, "public.tasks") == before["public.tasks"]


def test_a_plain_dump_is_dated_by_its_content_not_its_file_time(tmp_path):
    script = ("--\n-- PostgreSQL database dump\n--\n\n"
              "-- Started on 2026-11-30 04:05:06 UTC\n\nSET statement_timeout = 0;\n"
              "--\n-- PostgreSQL database dump complete\n--\n\n")
    dated = tmp_path / "nightly.sql"
    dated.write_text(script)
    backup = backup_kinds.read_any_backup(dated)
    assert backup.taken_at.isoformat() == "2026-11-30T04:05:06+00:00"
    assert backup.taken_at_source == "written inside the dump"
    named = tmp_path / "db_cluster-29-11-2026@03-00-01.backup"
    named.write_text(script.replace("-- Started on 2026-11-30 04:05:06 UTC\n", ""))
    backup = backup_kinds.read_any_backup(named)
    assert backup.taken_at.isoformat() == "2026-11-29T03:00:01+00:00"
    assert backup.taken_at_source == "the dashboard's file name"


def test_a_backup_with_vector_columns_goes_to_a_scratch_server_that_ships_pgvector(
        pg_cluster, tmp_path):
    """Supabase projects store embeddings in `extensions.vector` columns: the scratch
    server is chosen for the extensions the backup creates, not only Supabase's three."""
    name = f"vec_{uuid.uuid4().hex[:8]}"
    url = localdb.create_database(pg_cluster.admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA extensions; CREATE EXTENSION vector WITH SCHEMA "
                         "extensions; CREATE TABLE public.documents (id int PRIMARY KEY, "
                         "embedding extensions.vector(3)); INSERT INTO public.documents "
                         "SELECT i, ARRAY[i, i + 1, i + 2]::real[]::extensions.vector "
                         "FROM generate_series(1, 25) i")
        backup = backup_kinds.read_any_backup(shape.custom_archive(url, 16, tmp_path))
        restored = supabase_dumps.restore_to_scratch(backup, tables=["public.documents"])
        try:
            assert restored.counts["public.documents"] == 25
            assert "vector" in restored.scratch.server.chosen_because
            with restored.scratch.connect() as conn:
                assert conn.execute("SELECT embedding::text FROM public.documents WHERE id = 2"
                                    ).fetchone()[0] == "[2,3,4]"
        finally:
            restored.scratch.drop()
    finally:
        localdb.drop_database(pg_cluster.admin_url, name)
