"""Rehearsed incidents for the full database restore (notebook 30): a backup is taken,
the demo data is damaged and rows are written after it; the restore brings back exactly
the backup, and what was written after it is exported and can be re-imported."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import papermill
import psycopg
import pytest
import yaml

from notebook_runs import NOTEBOOKS, ROOT, run_notebook, shipped_parameters
from playbook import backups
from playbook.db import connecting, localdb
from playbook.errors import ConfigurationError
from playbook.procedures import restore
from playbook.steps import full_restore as steps30

STEM = "30_full_restore"
EVERY_YES = {qid: "yes" for qid in steps30.GATE_QUESTIONS}


def damage_and_write_after_backup(db) -> None:
    """The incident: rows deleted and changed, a table dropped, and new chat messages
    written by the application after the backup."""
    with db.connect() as conn:
        conn.execute("DELETE FROM public.journal_entries WHERE id % 3 = 0")
        conn.execute("UPDATE public.virtues SET description = 'corrupted'")
        conn.execute("DROP TABLE public.sponsor_visible_memos")
        conn.execute(
            "INSERT INTO public.sponsor_chat_messages (connection_id, sender_id, body) "
            "SELECT id, sponsor_user_id, 'written after the backup' "
            "FROM public.sponsor_connections ORDER BY id LIMIT 7")


@pytest.fixture
def backed_up(demo_db, tmp_path):
    """The demo database with a backup taken, then damaged; (db, backup, fingerprint at
    backup time)."""
    folder = tmp_path / "backups"
    taken = backups.take_backup(demo_db.url, folder)
    at_backup = demo_db.fingerprint()
    time.sleep(1.05)  # rows written after the backup carry a later second
    damage_and_write_after_backup(demo_db)
    return demo_db, taken, at_backup


def scenario(db, tmp_path, **overrides) -> dict:
    return {"mode": "execute", "confirm_database": db.name, "answers": EVERY_YES,
            "incident_id": "INC-30", "operator": "rehearsal",
            "backup_dir": str(tmp_path / "backups"), "export_dir": str(tmp_path / "exports"),
            **overrides}


def test_full_restore_brings_back_exactly_the_backup_and_keeps_what_came_after(
        backed_up, tmp_path):
    db, taken, at_backup = backed_up
    app_session = db.connect()  # an application still connected
    run = run_notebook(STEM, tmp_path / "records", scenario(
        db, tmp_path, block_connections=True, terminate_connections=True,
        reimport_after_backup_rows=False))
    assert not run.failed, run.error
    assert db.fingerprint() == at_backup, "every table, sequence and default as in the backup"
    assert app_session.closed or app_session.broken or _is_dead(app_session)
    with db.connect() as conn:  # connections were given back
        assert conn.execute("SELECT has_database_privilege('public', current_database(), "
                            "'CONNECT')").fetchone()[0]
    text = run.outputs_text()
    assert "Restore verified: every check passed" in text
    assert connecting.parse(db.url)["password"] not in run.path.read_text()
    # The rows written after the backup were exported with their checksums, into the
    # export_dir given...
    folder = tmp_path / "exports"
    manifest = restore.require_sound_export(folder)
    assert manifest.by_table()["public.sponsor_chat_messages"].rows == 7
    # ...and go back in: only those, nothing overwritten.
    with connecting.connect(url=db.url) as conn:
        done = restore.reimport_rows(conn, folder, execute=True)
    assert dict(zip(done["table"], done["rows inserted"], strict=True))[
        "public.sponsor_chat_messages"] == 7
    assert db.scalar("SELECT count(*) FROM public.sponsor_chat_messages "
                     "WHERE body = 'written after the backup'") == 7
    assert db.scalar("SELECT nextval(pg_get_serial_sequence('public.sponsor_chat_messages', "
                     "'id')) > (SELECT max(id) FROM public.sponsor_chat_messages)")


def _is_dead(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_swap_restores_into_a_new_database_and_keeps_the_damaged_one(backed_up, pg_cluster):
    db, taken, at_backup = backed_up
    with connecting.connect(url=db.url, read_only=True) as conn:
        plan = restore.plan_restore(conn, db.url, taken, strategy="swap", jobs=2,
                                    terminate_connections=True)
    try:
        result = restore.restore_database(plan, execute=True)
        assert db.fingerprint() == at_backup
        with connecting.connect(url=db.url, read_only=True) as conn:
            checks = restore.verify_restore(conn, taken, None, plan.database_acl_before)
        assert all(c.passed for c in checks), checks
        damaged = localdb.database_url_for(db.url, plan.old_database)
        with psycopg.connect(damaged) as conn:
            assert conn.execute("SELECT to_regclass('public.sponsor_visible_memos')"
                                ).fetchone()[0] is None, "the damaged copy is kept as it was"
        assert result.table().loc["damaged database kept as", "value"] == plan.old_database
    finally:
        localdb.drop_database(pg_cluster.admin_url, plan.old_database)
        localdb.drop_database(pg_cluster.admin_url, plan.new_database)


def test_swap_without_ending_sessions_is_refused_before_anything(backed_up):
    db, taken, _ = backed_up
    with connecting.connect(url=db.url, read_only=True) as conn, \
            pytest.raises(ConfigurationError, match="terminate_connections=True"):
        restore.plan_restore(conn, db.url, taken, strategy="swap")


@pytest.mark.parametrize("strategy", ["in-place", "'; DROP DATABASE x; --", ""])
def test_an_unknown_strategy_is_refused(backed_up, strategy):
    db, taken, _ = backed_up
    with connecting.connect(url=db.url, read_only=True) as conn, \
            pytest.raises(ConfigurationError, match="restore_strategy"):
        restore.plan_restore(conn, db.url, taken, strategy=strategy)


def test_in_place_with_one_job_is_all_or_nothing_when_a_new_object_depends_on_the_backup(
        backed_up):
    db, taken, _ = backed_up
    with db.connect() as conn:  # created after the backup, depends on a table it restores
        conn.execute("CREATE VIEW public.after_backup AS SELECT id FROM public.virtues")
    damaged = db.fingerprint()
    with connecting.connect(url=db.url, read_only=True) as conn:
        plan = restore.plan_restore(conn, db.url, taken, jobs=1)
    with pytest.raises(restore.VerificationFailed, match="rolled back, nothing changed"):
        restore.restore_database(plan, execute=True)
    assert db.fingerprint() == damaged


@pytest.mark.parametrize("damage", ["truncated", "unreadable", "missing", "after_migration"])
def test_a_bad_backup_is_refused_before_anything_changes(backed_up, tmp_path, damage):
    db, taken, _ = backed_up
    overrides = {"backup_file": taken.path.name}
    if damage == "truncated":
        data = taken.path.read_bytes()
        taken.path.write_bytes(data[: len(data) * 3 // 4])
    elif damage == "unreadable":
        taken.path.write_bytes(b"PGDMP" + os.urandom(2000))
    elif damage == "missing":
        taken.path.unlink()
    else:
        overrides["migration_applied_at"] = "2025-01-20T00:00:00Z"
    damaged = db.fingerprint()
    run = run_notebook(STEM, tmp_path / "records", scenario(db, tmp_path, **overrides))
    assert run.failed and run.error.ename == "BackupUnusable", run.error
    assert db.fingerprint() == damaged


def test_shipped_parameters_review_everything_then_stop_at_the_gate(backed_up, tmp_path):
    db, taken, _ = backed_up
    damaged = db.fingerprint()
    parameters = {**shipped_parameters(STEM), "backup_dir": str(tmp_path / "backups"),
                  "export_dir": str(tmp_path / "exports")}
    run = run_notebook(STEM, tmp_path / "records", parameters)
    assert run.failed and run.error.ename == "GateClosed"
    text = run.outputs_text()
    assert "--clean --if-exists" in text and "--jobs=2" in text, "the plan was shown"
    assert "team_notified" in run.error.evalue
    assert db.fingerprint() == damaged


def test_nbval_runs_the_notebook_with_a_review_scenario(backed_up, tmp_path):
    db, taken, _ = backed_up
    prepared = tmp_path / "prepared.ipynb"
    parameters = scenario(db, tmp_path, mode="review", confirm_database="")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(parameters))
    papermill.execute_notebook(str(NOTEBOOKS / f"{STEM}.ipynb"), str(prepared),
                               parameters=parameters, prepare_only=True, kernel_name="python3")
    damaged = db.fingerprint()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", str(prepared), "-p", "no:cacheprovider",
         "-q"], cwd=ROOT, env={**os.environ, "DATABASE_URL": db.url}, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert db.fingerprint() == damaged, "review mode changed nothing"
