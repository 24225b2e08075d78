"""Notebook 31 rehearsed end to end: back up the demo, damage it, write new rows, and
let a headless run bring back exactly the damaged rows while keeping the new ones."""

from __future__ import annotations

import subprocess
import sys

import papermill
import pytest

from notebook_runs import NOTEBOOKS, run_notebook, shipped_parameters
from playbook import backups
from restore_tables_helpers import DAMAGED, damage, rows_by_id, supabase_plain_dump, supabase_trio


def _execute_parameters(demo_db, backup_file, tmp_path) -> dict:
    return {
        "mode": "execute", "confirm_database": demo_db.name,
        "answers": {q: "yes" for q in shipped_parameters("31_restore_tables")["answers"]},
        "incident_id": "INC-31", "operator": "test",
        "backup_file": str(backup_file), "scratch_url_env": "SCRATCH_SERVER_URL",
        "tables": list(DAMAGED), "export_dir": str(tmp_path / "exports"),
    }


def _assert_damage_repaired(demo_db, before: dict, new_rows: dict) -> None:
    for table in DAMAGED:
        now = rows_by_id(demo_db.url, table)
        for row_id, digest in before[table].items():
            assert now.get(row_id) == digest, f"{table} id {row_id} not as in the backup"
        extra = set(now) - set(before[table])
        assert extra == new_rows.get(table, set()), f"{table}: rows written since were lost"


@pytest.fixture
def scratch_server(pg_cluster, monkeypatch):
    monkeypatch.setenv("SCRATCH_SERVER_URL", pg_cluster.admin_url)
    return pg_cluster.admin_url


@pytest.mark.parametrize("backup_shape", ["pg_dump", "supabase_plain", "supabase_trio"])
def test_headless_repair_brings_back_deleted_and_changed_rows_and_keeps_new_ones(
        demo_db, scratch_server, tmp_path, backup_shape):
    before = {t: rows_by_id(demo_db.url, t) for t in DAMAGED}
    if backup_shape == "pg_dump":
        backup_file = backups.take_backup(demo_db.url, tmp_path / "backups").path
    elif backup_shape == "supabase_plain":
        backup_file = supabase_plain_dump(demo_db.url, demo_db.major, tmp_path / "supabase")
    else:  # the folder holding roles.sql, schema.sql and data.sql (`supabase db dump`)
        backup_file = supabase_trio(demo_db.url, demo_db.major, tmp_path / "trio")
    new_rows = damage(demo_db.url)
    run = run_notebook("31_restore_tables", tmp_path / "run",
                       _execute_parameters(demo_db, backup_file, tmp_path))
    assert not run.failed, run.error
    _assert_damage_repaired(demo_db, before, new_rows)
    text = run.outputs_text()
    assert "FAIL" not in text
    assert demo_db.url.split("@")[0] not in text  # no connection string in the record
    manifests = list((tmp_path / "exports").rglob("manifest.json"))
    assert len(manifests) == 1


def test_review_run_stops_at_the_gate_and_changes_nothing(demo_db, scratch_server, tmp_path):
    backup_file = backups.take_backup(demo_db.url, tmp_path / "backups").path
    damage(demo_db.url)
    fingerprint = demo_db.fingerprint()
    parameters = {**shipped_parameters("31_restore_tables"), "backup_file": str(backup_file),
                  "scratch_url_env": "SCRATCH_SERVER_URL",
                  "export_dir": str(tmp_path / "exports")}
    run = run_notebook("31_restore_tables", tmp_path / "run", parameters)
    assert run.failed and "GateClosed" in run.outputs_text()
    assert "INSERT INTO" in run.outputs_text()  # the statements execute mode would run
    assert demo_db.fingerprint() == fingerprint


def test_wrong_confirm_database_is_refused_before_anything(demo_db, scratch_server, tmp_path):
    backup_file = backups.take_backup(demo_db.url, tmp_path / "backups").path
    damage(demo_db.url)
    fingerprint = demo_db.fingerprint()
    parameters = _execute_parameters(demo_db, backup_file, tmp_path)
    parameters["confirm_database"] = "production"
    run = run_notebook("31_restore_tables", tmp_path / "run", parameters)
    assert run.failed and "WrongDatabase" in run.outputs_text()
    assert demo_db.fingerprint() == fingerprint


def test_nbval_runs_the_notebook_in_review_mode(demo_db, scratch_server, tmp_path):
    """nbval executes a copy prepared by papermill; in review mode with every answer yes
    the run completes and changes nothing."""
    backup_file = backups.take_backup(demo_db.url, tmp_path / "backups").path
    fingerprint = demo_db.fingerprint()
    prepared = tmp_path / "31_prepared.ipynb"
    parameters = {**shipped_parameters("31_restore_tables"), "backup_file": str(backup_file),
                  "scratch_url_env": "SCRATCH_SERVER_URL", "export_dir": str(tmp_path / "x"),
                  "answers": {q: "yes" for q in
                              shipped_parameters("31_restore_tables")["answers"]}}
    papermill.execute_notebook(str(NOTEBOOKS / "31_restore_tables.ipynb"), str(prepared),
                               parameters=parameters, prepare_only=True, kernel_name="python3")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--nbval-lax", str(prepared)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert demo_db.fingerprint() == fingerprint
