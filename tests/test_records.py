"""Incident records rehearsed: `playbook run`, `incidents`, `timeline`, `inventory` and
`rehearse`, end to end against the demo database, with a password-bearing DATABASE_URL
whose password must appear in no file written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import psycopg
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell

from helpers import run_cli
from notebook_runs import write_notebook
from playbook import demo_app
from playbook.errors import ConfigurationError, ObjectNotFound
from playbook.records import FAILED, STOPPED, SUCCEEDED, read_records, run_notebook

PARAMETERS = '''database_url_env: str = "DATABASE_URL"  # name of the env var
mode: str = "review"  # review | execute
confirm_database: str = ""
answers: dict = {}
incident_id: str = ""
operator: str = ""
behaviour: str = "succeed"  # succeed | gate | fail
checklist_answers: dict = {}'''


def make_rehearsal_notebook(folder: Path) -> Path:
    """A small notebook that can succeed, stop at a gate or fail mid-way, and that
    carelessly prints the connection string (the record must not keep it)."""
    cells = [
        new_markdown_cell("# Tiny incident notebook"),
        new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        new_code_cell("import os\nfrom playbook.runs import begin_run\n"
                      "run = begin_run('tiny', database_url_env=database_url_env, mode=mode, "
                      "confirm_database=confirm_database, answers=answers, "
                      "incident_id=incident_id, operator=operator)\nrun.table()"),
        new_markdown_cell("## A careless step that prints the connection string"),
        new_code_cell("print(os.environ[database_url_env])"),
        new_markdown_cell("## After rollback checklist"),
        new_code_cell("from playbook.checklists import Checklist\n"
                      "checklist = Checklist('after_rollback', answers=checklist_answers)\n"
                      "checklist.show()"),
        new_code_cell("checklist.record()"),
        new_markdown_cell("## STOP questions"),
        new_code_cell("from playbook.gates import Gate\n"
                      "gate = Gate('go', {'go_ahead': 'Go ahead?'}, "
                      "answers if behaviour == 'gate' else {'go_ahead': 'yes'})\ngate.show()"),
        new_code_cell("gate.check()"),
        new_markdown_cell("## Perform the change"),
        new_code_cell("if behaviour == 'fail':\n"
                      "    raise RuntimeError('boom while using ' + os.environ[database_url_env])"),
        new_code_cell("print('finished')"),
    ]
    return write_notebook(folder / "tiny.ipynb", cells)


def uri_form(db) -> tuple[str, str]:
    """The demo database as a postgresql:// URI with its password inline, and the password."""
    params = psycopg.conninfo.conninfo_to_dict(db.url)
    uri = (f"postgresql://{params['user']}:{params['password']}@{params['host']}:"
           f"{params['port']}/{params['dbname']}")
    return uri, params["password"]


def environment(tmp_path: Path, url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DATABASE_URL": url, "PLAYBOOK_INCIDENTS": str(tmp_path / "incidents"),
                "PLAYBOOK_HOME": str(tmp_path / ".playbook"), "PLAYBOOK_OPERATOR": "alice"})
    return env


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_an_incident_with_a_success_a_gate_stop_and_a_failure_is_fully_recorded(
        demo_db, tmp_path):
    url, password = uri_form(demo_db)
    env = environment(tmp_path, url)
    notebooks = tmp_path / "nbs"
    make_rehearsal_notebook(notebooks)
    common = ["--incident", "INC-42", "--notebooks", str(notebooks)]

    ok = run_cli("run", "tiny", *common, "-p", "checklist_answers",
                 "{application_restarted: yes, users_notified: yes}", env=env)
    assert ok.returncode == 0, ok.stderr
    gate = run_cli("run", "tiny", *common, "-p", "behaviour", "gate",
                   "-p", "answers", "{go_ahead: no}", env=env)
    assert gate.returncode == 1, gate.stderr
    fail = run_cli("run", "tiny", *common, "-p", "behaviour", "fail", env=env)
    assert fail.returncode == 1, fail.stderr

    root = tmp_path / "incidents"
    folders = list(root.iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("-INC-42")
    first, second, third = read_records(folders[0])
    assert [r.number for r in (first, second, third)] == [1, 2, 3]
    assert first.outcome == SUCCEEDED and first.operator == "alice"
    assert first.started_at <= first.ended_at
    assert first.parameters["incident_id"] == "INC-42"
    assert second.outcome == STOPPED
    assert second.where["step"] == "STOP questions" and "GateClosed" in second.why
    assert "go_ahead" in second.why
    assert third.outcome == FAILED
    assert third.where["step"] == "Perform the change" and "RuntimeError: boom" in third.why
    for record in (first, second, third):
        for kind in ("notebook", "html", "record"):
            assert Path(record.files[kind]).is_file()
    executed = nbformat.read(third.files["notebook"], as_version=4)
    assert executed.metadata["playbook_record"]["outcome"] == FAILED
    assert "finished" not in json.dumps([c.get("outputs") for c in executed.cells])

    listing = run_cli("incidents", env=env)
    assert listing.returncode == 0 and "INC-42" in listing.stdout
    assert "03-tiny: failed" in listing.stdout

    timeline = run_cli("timeline", "INC-42", env=env)
    assert timeline.returncode == 0, timeline.stderr
    markdown = (folders[0] / "timeline.md").read_text()
    assert "| 03 | tiny | alice |" in markdown and "Perform the change" in markdown
    assert "| failed |" in markdown
    assert (folders[0] / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    # The last recorded after-rollback checklist (run 3: nothing ticked) leaves every item
    # open; the first run's ticks do not hide them.
    assert "Users notified (`users_notified`, 03-tiny)" in markdown
    assert "Application restarted" in markdown

    assert password in url and files_holding(tmp_path / "incidents", password) == []
    assert "***" in Path(first.files["notebook"]).read_text()


def test_bad_input_is_refused_before_anything_runs_or_is_recorded(demo_db, tmp_path):
    url, password = uri_form(demo_db)
    env = environment(tmp_path, url)
    notebooks = tmp_path / "nbs"
    make_rehearsal_notebook(notebooks)
    root = tmp_path / "incidents"
    # As the operator types it: exit code 2 and the password nowhere in what is printed.
    for args in (["-p", "no_such_parameter", "1"], ["-p", "behaviour", url]):
        result = run_cli("run", "tiny", "--incident", "INC-1", "--notebooks", str(notebooks),
                         *args, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert password not in result.stderr + result.stdout
    for stem, incident, parameters, parameter_file, error in (
        ("tiny", "../escape", {}, None, ConfigurationError),
        ("tiny", "INC-1", {"behaviour": "postgresql://u:pw@host/db"}, None, ConfigurationError),
        ("tiny", "INC-1", {"database_url_env": f"x {password}"}, None, ConfigurationError),
        ("no_such_notebook", "INC-1", {}, None, ObjectNotFound),
        ("tiny", "INC-1", {}, tmp_path / "missing.yaml", ObjectNotFound),
    ):
        with pytest.raises(error) as refused:
            run_notebook(stem, incident, parameters, parameter_file, notebooks_dir=notebooks,
                         root=root)
        assert password not in str(refused.value)
    assert not list(root.rglob("*.ipynb")) and not list(root.rglob("*.json"))


def test_triage_through_playbook_run_recommends_fix_forward(demo_db, tmp_path):
    url, password = uri_form(demo_db)
    env = environment(tmp_path, url)
    result = run_cli("run", "00_triage", "--incident", "INC-5", "-f",
                     "parameters/00_triage.yaml", env=env)
    assert result.returncode == 0, result.stderr
    html = next((tmp_path / "incidents").rglob("01-00_triage.html")).read_text()
    assert "Recommended: fix forward" in html
    assert files_holding(tmp_path / "incidents", password) == []


def test_sequence_rollback_with_shipped_parameters_stops_at_its_gate_and_is_recorded(
        demo_db, tmp_path):
    url, password = uri_form(demo_db)
    env = environment(tmp_path, url)
    with demo_db.connect() as conn:
        demo_app.break_application(conn, "sequence-behind")
    before = demo_db.fingerprint()
    result = run_cli("run", "10_rollback_sequence", "--incident", "INC-6", "-f",
                     "parameters/10_rollback_sequence.yaml", env=env)
    assert result.returncode == 1, result.stderr
    assert "stopped at a gate" in result.stdout
    assert demo_db.fingerprint() == before
    assert files_holding(tmp_path / "incidents", password) == []


def test_a_record_that_would_hold_the_password_is_scrubbed_even_in_key_value_form(
        demo_db, tmp_path):
    notebooks = tmp_path / "nbs"
    make_rehearsal_notebook(notebooks)
    password = psycopg.conninfo.conninfo_to_dict(demo_db.url)["password"]
    record = run_notebook("tiny", "INC-7", {"behaviour": "fail"}, notebooks_dir=notebooks,
                          root=tmp_path / "incidents", operator="bob")
    assert record.outcome == FAILED and password not in record.why
    assert files_holding(tmp_path / "incidents", password) == []


def test_rehearsal_runs_the_sequence_rollback_on_a_copy_and_inventory_reports_it(
        demo_db, tmp_path):
    url, password = uri_form(demo_db)
    env = environment(tmp_path, url)
    with demo_db.connect() as conn:
        demo_app.break_application(conn, "sequence-behind")
    before = demo_db.fingerprint()

    untested = run_cli("inventory", env=env)
    assert untested.returncode == 0 and "Not rehearsed" in untested.stdout

    result = run_cli("rehearse", "10_rollback_sequence", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "TEMPLATE" in result.stdout
    assert demo_db.fingerprint() == before, "the target itself is only read"
    (summary_path,) = (tmp_path / "incidents" / "rehearsals").glob("*/rehearsal.json")
    summary = json.loads(summary_path.read_text())
    assert summary["dropped"] and summary["run"]["outcome"] == SUCCEEDED
    assert summary["run"]["parameters"]["mode"] == "execute"
    with demo_db.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (summary["scratch_database"],)).fetchone()[0]
    assert left == 0, "the scratch copy was dropped"

    inventory = run_cli("inventory", env=env)
    sequence_row = next(line for line in inventory.stdout.splitlines()
                        if "rollback_sponsor_connections_sequence.sql" in line)
    assert f"✅ Yes (rehearsed {summary['date'][:10]})" in sequence_row
    coaching_row = next(line for line in inventory.stdout.splitlines()
                        if "rollback_coaching_tables.sql" in line)
    assert "❌ Destructive" in coaching_row and "Not rehearsed" in coaching_row
    assert files_holding(tmp_path / "incidents", password) == []


def test_rehearsal_falls_back_to_a_dump_when_someone_is_connected_to_the_target(
        demo_db, tmp_path):
    url, password = uri_form(demo_db)
    env = environment(tmp_path, url)
    with demo_db.connect() as someone_else:
        someone_else.execute("SELECT 1")
        result = run_cli("rehearse", "00_triage", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pg_dump | pg_restore" in result.stdout
    assert files_holding(tmp_path / "incidents", password) == []


# --- one place for an incident's files ---------------------------------------------------


def _run_of(incident_id: str, notebook: str):
    from datetime import UTC, datetime

    from playbook.runs import Run

    return Run(notebook=notebook, mode="review", database_url_env="DATABASE_URL",
               database="postgres", server_version="16", target="", answers={},
               incident_id=incident_id, operator="", started_at=datetime(
                   2025, 1, 26, 9, 30, 5, tzinfo=UTC))


def test_every_notebooks_export_lands_beside_the_records_of_its_incident(tmp_path,
                                                                         monkeypatch):
    from playbook.changesets.migration import load_migration
    from playbook.incidents import incident_folder
    from playbook.procedures import drops, restore
    from playbook.procedures import table_repair as repair

    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(tmp_path / "incidents"))
    records_folder = incident_folder("INC-7")  # where `playbook run` writes the records
    assert records_folder.parent == tmp_path / "incidents"
    assert records_folder.name.endswith("-INC-7") and records_folder.is_dir()
    exports = records_folder / "exports"

    assert drops.default_export_dir(load_migration("coaching_tables"), "INC-7") == \
        exports / "coaching_tables"
    assert restore.export_folder(_run_of("INC-7", "30_full_restore"), "") == \
        exports / "30_full_restore-20250126T093005Z" / "rows_after_backup"
    assert repair.diff_export_folder(_run_of("INC-7", "31_restore_tables")) == \
        exports / "31_restore_tables-20250126T093005Z"
    # An explicit export_dir still wins.
    assert drops.default_export_dir(load_migration("coaching_tables"), "INC-7",
                                    str(tmp_path / "mine")) == tmp_path / "mine"
    assert restore.export_folder(_run_of("INC-7", "30_full_restore"),
                                 str(tmp_path / "mine")).is_relative_to(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "incidents").iterdir()] == [records_folder.name]


def test_a_run_without_an_incident_id_keeps_its_exports_in_a_folder_named_after_its_start(
        tmp_path, monkeypatch):
    from playbook.procedures import restore

    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(tmp_path / "incidents"))
    run = _run_of("", "30_full_restore")
    folder = restore.export_folder(run, "")
    assert folder == (tmp_path / "incidents" / "2025-01-26-20250126T093005Z" / "exports"
                      / "30_full_restore-20250126T093005Z" / "rows_after_backup")
    assert restore.export_folder(run, "") == folder  # the re-import finds the same folder
    assert not (tmp_path / "incidents").exists()  # nothing created until the export writes


def test_jupyterlab_inside_notebooks_and_papermill_from_the_root_share_one_incidents_folder(
        tmp_path, monkeypatch):
    from playbook.incidents import incidents_root

    monkeypatch.delenv("PLAYBOOK_INCIDENTS", raising=False)
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(project / "notebooks")
    from_lab = incidents_root()
    monkeypatch.chdir(project)
    assert incidents_root() == from_lab == project / "incidents"


def test_a_rehearsed_drop_keeps_its_export_with_the_rehearsal_never_among_real_incidents(
        demo_db, tmp_path, monkeypatch):
    from playbook.changesets.migration import load_migration
    from playbook.errors import ExportMismatch
    from playbook.procedures import recovery
    from playbook.rehearsal import rehearse

    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(tmp_path / "incidents"))
    rehearsal = rehearse("20_rollback_coaching_tables")
    assert rehearsal.outcome == "passed", rehearsal.run.get("why")
    manifests = list((tmp_path / "incidents").rglob("manifest.json"))
    assert manifests and all(p.is_relative_to(rehearsal.folder) for p in manifests)
    # Notebook 21's "newest export" must not be the scratch copy's.
    with pytest.raises(ExportMismatch, match="No export of coaching_tables"):
        recovery.find_export(load_migration("coaching_tables"))
