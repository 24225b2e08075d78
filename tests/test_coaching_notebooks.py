"""Notebooks 20 and 21 run end to end, as automation runs them (papermill) and as nbval
tests them, against a fresh demo database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from notebook_runs import NOTEBOOKS, ROOT, run_notebook, shipped_parameters
from playbook.changesets.migration import load_migration
from playbook.db.fingerprint import table_checksum
from playbook.errors import GateClosed
from playbook.runs import begin_run
from playbook.steps import recover_coaching_tables as steps21
from playbook.steps import rollback_coaching_tables as steps20

ROLLBACK, RECOVER = "20_rollback_coaching_tables", "21_recover_coaching_tables"
COACHING = (("public", "sponsor_connections"), ("public", "sponsor_chat_messages"),
            ("public", "sponsor_visible_memos"))


def _all_yes(stem: str) -> dict:
    return {qid: "yes" for qid in shipped_parameters(stem)["answers"]}


@pytest.fixture
def incidents(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "incidents"
    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(folder))
    return folder


def _checksums(db) -> dict:
    with db.connect() as conn:
        return {t: table_checksum(conn, *t) for t in COACHING}


def test_rollback_then_recovery_leaves_every_coaching_row_identical(demo_db, incidents,
                                                                    tmp_path):
    before = _checksums(demo_db)
    common = {"mode": "execute", "confirm_database": demo_db.name, "incident_id": "INC-42"}
    dropped = run_notebook(ROLLBACK, tmp_path, {**common, "answers": _all_yes(ROLLBACK)})
    assert not dropped.failed, dropped.error
    assert "committed" in dropped.outputs_text()
    assert demo_db.scalar("SELECT to_regclass('public.sponsor_connections') IS NULL")
    incident = next(incidents.glob("*-INC-42"))  # the folder of the incident's records
    assert (incident / "exports" / "coaching_tables" / "manifest.json").exists()
    recovered = run_notebook(RECOVER, tmp_path, {**common, "answers": _all_yes(RECOVER)})
    assert not recovered.failed, recovered.error
    assert _checksums(demo_db) == before
    assert demo_db.url.split("password=")[-1].split()[0] not in (
        dropped.path.read_text() + recovered.path.read_text())


def test_shipped_parameters_stop_at_the_gate_before_any_change(demo_db, incidents, tmp_path):
    before = demo_db.fingerprint()
    parameters = {**shipped_parameters(ROLLBACK), "mode": "execute",
                  "confirm_database": demo_db.name}
    run = run_notebook(ROLLBACK, tmp_path, parameters)
    assert run.failed and "GateClosed" in run.outputs_text()
    assert "recent_backup: answered NO" in run.outputs_text()
    assert "DROP TABLE" in run.outputs_text()  # the review was shown before the gate
    assert demo_db.fingerprint() == before
    assert not incidents.exists()  # not even the export was written


@pytest.mark.parametrize("question", list(steps20.GATE_QUESTIONS))
def test_each_stop_answer_no_closes_the_rollback_gate(demo_db, incidents, question):
    answers = {**_all_yes(ROLLBACK), question: "no"}
    run = begin_run(ROLLBACK, mode="execute", confirm_database=demo_db.name, answers=answers)
    gate = steps20.gate(run, load_migration("coaching_tables"), incidents / "x")
    with pytest.raises(GateClosed) as refused:
        gate.check()
    assert set(refused.value.failing) == {question}


@pytest.mark.parametrize("question", list(steps21.GATE_QUESTIONS))
def test_each_recovery_answer_no_closes_the_recovery_gate(demo_db, question):
    answers = {**_all_yes(RECOVER), question: "no"}
    gate = steps21.gate(begin_run(RECOVER, answers=answers))
    with pytest.raises(GateClosed):
        gate.check()


def test_an_export_that_no_longer_matches_fails_the_export_question(demo_db, incidents):
    migration = load_migration("coaching_tables")
    run = begin_run(ROLLBACK, answers=_all_yes(ROLLBACK))
    folder = incidents / "old"
    steps20.export_data(run, migration, folder, archive=False, show_progress=False)
    with demo_db.connect() as conn:
        conn.execute("DELETE FROM public.sponsor_visible_memos WHERE id = 1")
        conn.commit()
    gate = steps20.gate(run, migration, folder)
    with pytest.raises(GateClosed, match="39 rows live"):
        gate.check()


def _nbval(stem: str, parameters_yaml: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """papermill --prepare-only with the scenario's parameters, then nbval runs the copy."""
    params = tmp_path / f"{stem}.yaml"
    params.write_text(parameters_yaml)
    prepared = tmp_path / f"{stem}.prepared.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", "--prepare-only", "--no-progress-bar",
                    "--log-level", "ERROR", str(NOTEBOOKS / f"{stem}.ipynb"), str(prepared),
                    "-f", str(params)], check=True, cwd=ROOT, capture_output=True)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", str(prepared), "-p", "no:cacheprovider",
         "-q", "--rootdir", str(tmp_path)],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)


def test_nbval_runs_both_notebooks_in_review_mode(demo_db, incidents, tmp_path):
    import yaml

    before = demo_db.fingerprint()
    rollback_params = {**shipped_parameters(ROLLBACK), "answers": _all_yes(ROLLBACK),
                       "incident_id": "NBVAL"}
    result = _nbval(ROLLBACK, yaml.safe_dump(rollback_params), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    export = next(incidents.glob("*-NBVAL")) / "exports" / "coaching_tables"
    assert (export / "manifest.json").exists()
    recover_params = {**shipped_parameters(RECOVER), "answers": _all_yes(RECOVER),
                      "export_dir": str(export)}
    result = _nbval(RECOVER, yaml.safe_dump(recover_params), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert demo_db.fingerprint() == before  # review mode changed nothing
