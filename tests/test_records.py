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
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import run_cli
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
    folder.mkdir(parents=True, exist_ok=True)
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
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = folder / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


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
