"""The sequence notebook end to end, as automation runs it (papermill) and as nbval checks it.

Each incident is first caused with the operator's own simulator (`playbook demo break ...`),
the failure is reproduced with the application's insert, the notebook runs headlessly, and
the failure must be gone; a second run must change nothing.

The nbval reference (tests/references/10_rollback_sequence.ipynb) holds the outputs of the
cells marked ``# NBVAL_CHECK_OUTPUT`` for the scenario in ``NBVAL_SCENARIO``. After a
deliberate change to those outputs, rewrite it with::

    PLAYBOOK_WRITE_REFERENCES=1 .venv/bin/pytest tests/test_sequence_notebook.py -k nbval
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import psycopg
import pytest

from helpers import run_cli
from notebook_runs import NOTEBOOKS, run_notebook, shipped_parameters

STEM = "10_rollback_sequence"
REFERENCES = Path(__file__).resolve().parent / "references"
REFERENCE = REFERENCES / f"{STEM}.ipynb"
SANITIZE = REFERENCES / "nbval_sanitize.cfg"
CHECKED = "# NBVAL_CHECK_OUTPUT"
YES = {"issue_confirmed": "yes", "team_notified": "yes"}
APP_INSERT = (
    "INSERT INTO public.sponsor_connections (practitioner_user_id, sponsor_user_id, status) "
    "VALUES (md5('user-2')::uuid, md5('user-5')::uuid, 'active') RETURNING id"
)
FAILURE_OF = {
    "sequence-behind": psycopg.errors.UniqueViolation,
    "sequence-default": psycopg.errors.NotNullViolation,
}


def _execute(database, **extra) -> dict:
    return {**shipped_parameters(STEM), "mode": "execute", "confirm_database": database.name,
            "answers": YES, **extra}


def _break(kind: str, env: dict[str, str]) -> None:
    result = run_cli("demo", "break", kind, env=env)
    assert result.returncode == 0, result.stderr


def _app_insert(database) -> int:
    with database.connect() as conn:
        new_id = conn.execute(APP_INSERT).fetchone()[0]
        conn.rollback()
    return new_id


def _without_sequences(fingerprint: dict) -> dict:
    return {k: v for k, v in fingerprint.items() if not k.startswith("sequence")}


# --- headless runs after each simulated incident ----------------------------------------


@pytest.mark.both_versions
@pytest.mark.parametrize("kind", sorted(FAILURE_OF))
def test_a_headless_execute_run_repairs_the_simulated_incident_and_a_second_changes_nothing(
    demo_db, project_env, tmp_path, kind
):
    _break(kind, project_env)
    with pytest.raises(FAILURE_OF[kind]):
        _app_insert(demo_db)  # the failure, reproduced (it consumes one id, as in production)
    broken = demo_db.fingerprint()

    first = run_notebook(STEM, tmp_path, _execute(demo_db), name="first")
    assert not first.failed, first.error
    assert "reset committed" in first.outputs_text()
    repaired = demo_db.fingerprint()
    # Only the sequence and (for a lost default) the default changed; not one row.
    assert {k: v for k, v in repaired.items() if k.startswith("table")} == {
        k: v for k, v in broken.items() if k.startswith("table")}
    assert _app_insert(demo_db) == 21  # the failure is gone: MAX(id) is 20
    in_use = demo_db.fingerprint()  # that insert consumed id 21, as traffic would

    second = run_notebook(STEM, tmp_path, _execute(demo_db), name="second")
    assert not second.failed, second.error
    assert "already healthy: nothing to reset, nothing was changed" in second.outputs_text()
    assert demo_db.fingerprint() == in_use
    # The record never holds the connection string or its password.
    password = psycopg.conninfo.conninfo_to_dict(demo_db.url)["password"]
    for record in (first.path, second.path):
        assert password not in record.read_text()


def test_the_shipped_parameters_show_diagnosis_and_plan_then_stop_at_the_gate(
    demo_db, project_env, tmp_path
):
    _break("sequence-behind", project_env)
    before = demo_db.fingerprint()
    run = run_notebook(STEM, tmp_path, shipped_parameters(STEM))
    assert run.failed and run.error.ename == "GateClosed"
    text = run.outputs_text()
    assert "sequence behind the data" in text and "IN SHARE MODE" in text
    assert "issue_confirmed: answered NO; team_notified: answered NO" in text
    assert demo_db.fingerprint() == before


def test_review_mode_with_every_answer_yes_runs_to_the_end_and_changes_nothing(
    demo_db, project_env, tmp_path
):
    _break("sequence-default", project_env)
    _break("sequence-behind", project_env)
    before = demo_db.fingerprint()
    params = {**shipped_parameters(STEM), "answers": YES, "run_recovery": True}
    run = run_notebook(STEM, tmp_path, params)
    assert not run.failed, run.error
    text = run.outputs_text()
    assert "review mode: nothing was changed" in text and "not run (review mode)" in text
    assert "SET DEFAULT nextval" in text
    assert demo_db.fingerprint() == before  # every row, sequence position and default


def test_recovery_runs_from_the_notebook_when_asked(demo_db, project_env, tmp_path):
    _break("sequence-default", project_env)
    run = run_notebook(STEM, tmp_path, _execute(demo_db, run_recovery=True))
    assert not run.failed, run.error
    assert "forward script re-applied and committed: healthy" in run.outputs_text()
    assert _app_insert(demo_db) == 21


# --- bad input: one clear error each, nothing changed -----------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "says"),
    [
        # A missing table or column: test_sequence_rollback.py (the same helper raises).
        ({"column": "status"}, "ObjectNotFound", "has no sequence"),
        ({"table": "sponsor_connections; DROP TABLE public.profiles CASCADE"},
         "ConfigurationError", "not a valid PostgreSQL object name"),
    ],
    ids=["no-sequence", "injection"],
)
def test_bad_input_stops_the_notebook_with_one_clear_error_and_nothing_changed(
    demo_db, project_env, tmp_path, overrides, error, says
):
    _break("sequence-behind", project_env)
    before = demo_db.fingerprint()
    run = run_notebook(STEM, tmp_path, _execute(demo_db, **overrides))
    assert run.failed and run.error.ename == error
    assert says in run.error.evalue and "Nothing was changed" in run.error.evalue
    assert demo_db.fingerprint() == before


def test_an_unreachable_server_stops_the_notebook_without_showing_the_password(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops:hunter2@127.0.0.1:1/prod")
    monkeypatch.setenv("PLAYBOOK_CONNECT_TIMEOUT", "2")
    run = run_notebook(STEM, tmp_path, shipped_parameters(STEM))
    assert run.failed and run.error.ename == "ConnectionFailed"
    assert "Nothing was changed" in run.error.evalue
    assert "hunter2" not in run.path.read_text()


# --- nbval: the verification outputs against the stored reference ------------------------

NBVAL_SCENARIO = "sequence-behind"


def _prepared(database, out: Path) -> Path:
    """The notebook with the scenario's parameters injected (nothing run), carrying the
    reference outputs of the checked cells."""
    papermill.execute_notebook(str(NOTEBOOKS / f"{STEM}.ipynb"), str(out),
                               parameters=_execute(database), prepare_only=True,
                               progress_bar=False)
    notebook = nbformat.read(out, as_version=4)
    reference = {c.source: c for c in nbformat.read(REFERENCE, as_version=4).cells
                 if c.cell_type == "code" and CHECKED in c.source}
    checked = [c for c in notebook.cells if c.cell_type == "code" and CHECKED in c.source]
    assert len(checked) >= 4, "the notebook's verification cells are marked for nbval"
    for cell in checked:
        assert cell.source in reference, (
            f"the nbval reference is stale for the cell {cell.source!r}; rewrite it (see the "
            "module docstring)")
        cell.outputs = reference[cell.source].outputs
        cell.execution_count = reference[cell.source].execution_count
    nbformat.write(notebook, out)
    return out


def _nbval(notebook: Path, database) -> subprocess.CompletedProcess:
    env = dict(os.environ, DATABASE_URL=database.url)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
         f"--nbval-sanitize-with={SANITIZE}", "-p", "no:cacheprovider", "-q", notebook.name],
        cwd=notebook.parent, env=env, capture_output=True, text=True, timeout=300,
    )


def _write_reference(database, tmp_path: Path) -> None:
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{STEM}.ipynb"), str(executed),
                               parameters=_execute(database), progress_bar=False)
    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and CHECKED not in cell.source:
            # nbval treats a checked cell without an execution count as never run.
            cell.execution_count, cell.outputs = None, []
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    notebook.cells = [c for c in notebook.cells
                      if "injected-parameters" not in c.metadata.get("tags", [])]
    notebook.metadata.pop("papermill", None)
    nbformat.write(notebook, REFERENCE)


def test_nbval_checks_the_verification_outputs_against_the_reference(
    demo_db, project_env, tmp_path
):
    _break(NBVAL_SCENARIO, project_env)
    if os.environ.get("PLAYBOOK_WRITE_REFERENCES") == "1":
        _write_reference(demo_db, tmp_path)
        _break(NBVAL_SCENARIO, project_env)  # the same incident again, for the check below
    result = _nbval(_prepared(demo_db, tmp_path / f"{STEM}.ipynb"), demo_db)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_nbval_fails_when_a_verification_output_differs_from_the_reference(
    demo_db, project_env, tmp_path
):
    # A different incident (lost default, not a sequence behind) changes the diagnosis,
    # the plan and the before/after values: nbval must notice, or its pass means nothing.
    _break("sequence-default", project_env)
    result = _nbval(_prepared(demo_db, tmp_path / f"{STEM}.ipynb"), demo_db)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "id default missing" in result.stdout
