"""Faults rehearsed on the record itself: the disk fills up right after the drop COMMITs,
`playbook run` is killed with ``kill -9`` mid-drop, the kernel dies mid-notebook, the
operator presses Ctrl-C. Each time the record must say what happened (died, where, when,
what COMMITted), never be left cut off, and `playbook incidents` / `playbook timeline`
must show it.

The faults are real: a tmpfs filled to its last byte (as root; an ordinary user gets the
process's file-size limit lowered with prlimit, the harness of test_faults.py), SIGKILL
and SIGINT sent to the `playbook run` process, a kernel that kills itself."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import ROOT, run_cli
from notebook_runs import write_notebook
from playbook import journal, records
from playbook.records import DIED, RECORD_INCOMPLETE, SUCCEEDED, read_records
from receivers import webhook_receiver
from reliability.conftest import coaching_tables_present, ctrl_c_reaches_the_child, mounted_tmpfs

YES_20 = {q: "yes" for q in ("issue_confirmed", "recent_backup", "backup_tested",
                              "data_exported", "no_other_way", "team_notified",
                              "maintenance_window", "scripts_reviewed", "understand_data_loss")}


def _environment(db, incidents: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DATABASE_URL": db.url, "PLAYBOOK_INCIDENTS": str(incidents),
                "PLAYBOOK_HOME": str(tmp_path / ".playbook"), "PLAYBOOK_OPERATOR": "alice",
                "XDG_STATE_HOME": str(tmp_path / "state")})
    env.pop("PLAYBOOK_NOTIFY", None)
    return env


def _drop_command(db, incident: str) -> list[str]:
    answers = json.dumps({**_shipped_answers(), **YES_20})
    return [sys.executable, "-m", "playbook", "run", "20_rollback_coaching_tables",
            "--incident", incident, "-f", str(ROOT / "parameters/20_rollback_coaching_tables.yaml"),
            "-p", "mode", "execute", "-p", "confirm_database", db.name,
            "-p", "answers", answers, "-p", "lock_timeout", "20s"]


def _shipped_answers() -> dict:
    import yaml

    shipped = yaml.safe_load((ROOT / "parameters/20_rollback_coaching_tables.yaml").read_text())
    return dict(shipped.get("answers") or {})


def _journal_of(incidents: Path) -> Path | None:
    found = sorted(incidents.glob(f"*/*{journal.SUFFIX}"))
    return found[-1] if found else None


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _valid_json_files(folder: Path) -> None:
    for path in [*folder.glob("*.json"), *folder.glob("*.ipynb")]:
        json.loads(path.read_text())  # raises on a file cut off


# --- a full disk right after the drop COMMITted -------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """An incidents folder on a small disk, and how to fill it from outside the run. As
    root: a 3 MB tmpfs filled to its last byte (ENOSPC). An ordinary user may not mount:
    there the `playbook run` process's file-size limit is lowered to 64 kB (EFBIG)."""
    if os.geteuid() == 0:
        with mounted_tmpfs(tmp_path / "small-disk", "3m") as mount:

            def fill(_pid: int) -> None:
                try:
                    with open(mount / "filler", "wb") as handle:
                        while True:
                            handle.write(b"\0" * 4096)
                            handle.flush()
                except OSError:
                    pass  # full to the last byte

            yield mount / "incidents", fill, "No space left on device"
        return

    def lower_limit(pid: int) -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    yield tmp_path / "incidents", lower_limit, "File too large"


@pytest.mark.both_versions
def test_a_disk_full_after_the_drop_committed_leaves_a_record_that_says_so(
        demo_db, coaching, small_disk, tmp_path):
    incidents, fill, os_error = small_disk
    env = _environment(demo_db, incidents, tmp_path)
    run = subprocess.Popen(_drop_command(demo_db, "INC-DISK"), env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))

    def committed() -> bool:
        entries = journal.read(_journal_of(incidents))
        return any(e.get("event") == journal.COMMITTED for e in entries)

    filler = threading.Thread(target=lambda: (_wait_for(committed, 240, "the COMMIT"),
                                              fill(run.pid)), daemon=True)
    filler.start()
    stdout, stderr = run.communicate(timeout=300)
    filler.join(5)

    # The drop really committed: the tables are gone.
    assert coaching_tables_present(demo_db) == set()
    # The operator is told so, in words and in the exit status.
    assert run.returncode == RECORD_INCOMPLETE, stdout + stderr
    assert "the drop COMMITTED; the record could not be written" in stderr
    assert os_error in stderr
    assert "Traceback" not in stderr

    folder = next(incidents.glob("*-INC-DISK"))
    _valid_json_files(folder)  # nothing cut off: a file is whole or absent
    record = json.loads((folder / "01-20_rollback_coaching_tables.json").read_text())
    assert record["outcome"] == SUCCEEDED
    commits = [m for m in record["moments"] if m["event"] == journal.COMMITTED]
    assert [c["what"] for c in commits] == ["the drop"]
    with demo_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('public.sponsor_chat_messages')").fetchone()[0] \
            is None
    assert set(commits[0]["rows"]) == {"public.sponsor_connections",
                                       "public.sponsor_chat_messages",
                                       "public.sponsor_visible_memos"}
    assert record["unwritten"] and "html" in record["unwritten"]
    assert not (folder / "01-20_rollback_coaching_tables.html").exists()
    assert not list(folder.glob(".*.tmp"))  # no half-written temporary file left behind
    listing = read_records(folder)
    assert [r.outcome for r in listing] == [SUCCEEDED]


def test_a_disk_too_full_to_hold_the_record_refuses_to_start(demo_db, tmp_path):
    """No room even for the reserved outcome: refused before anything runs."""
    if os.geteuid() != 0:
        incidents = tmp_path / "incidents"
        env = _environment(demo_db, incidents, tmp_path)
        result = subprocess.run(
            [sys.executable, "-m", "playbook", "run", "00_triage", "--incident", "INC-F"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: (signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))))
    else:
        with mounted_tmpfs(tmp_path / "full-disk", "64k") as mount:
            env = _environment(demo_db, mount / "incidents", tmp_path)
            result = run_cli("run", "00_triage", "--incident", "INC-F", env=env)
    assert result.returncode == 2, result.stdout + result.stderr  # refused: nothing run
    assert "no room to record this run" in result.stderr
    assert "Nothing was run or changed" in result.stderr and "Traceback" not in result.stderr


# --- kill -9 of `playbook run` during the drop ----------------------------------------------


def _playbook_backends(db) -> list[tuple[int, str, str]]:
    with psycopg.connect(db.url, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, application_name, wait_event_type FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'playbook:%%' "
            "AND pid <> pg_backend_pid()").fetchall()


def test_kill_9_of_playbook_run_during_the_drop_leaves_a_record_that_it_died_there(
        demo_db, tmp_path):
    incidents = tmp_path / "incidents"
    env = _environment(demo_db, incidents, tmp_path)
    application = psycopg.connect(demo_db.url)
    # The application holds a row lock: the drop waits for its table lock, mid-step.
    application.execute("UPDATE public.sponsor_chat_messages SET body = body "
                        "WHERE id = (SELECT min(id) FROM public.sponsor_chat_messages)")
    run = subprocess.Popen(_drop_command(demo_db, "INC-KILL"), env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any(":drop" in name and wait == "Lock"
                              for _pid, name, wait in _playbook_backends(demo_db)),
                  240, "the drop waiting for its lock")
        killed_at = time.time()
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
        # The orphaned kernel goes with its parent; its transaction is rolled back.
        _wait_for(lambda: not _playbook_backends(demo_db), 60, "the kernel's session to end")
    finally:
        application.rollback()
        application.close()
        if run.poll() is None:
            run.kill()
    assert len(coaching_tables_present(demo_db)) == 3  # consistent: nothing was dropped

    folder = next(incidents.glob("*-INC-KILL"))
    stub = json.loads((folder / "01-20_rollback_coaching_tables.json").read_text())
    assert stub["status"] == "running"  # what the dead process left; read back below
    (record,) = read_records(folder)
    assert record.outcome == DIED
    assert "Perform the rollback" in record.where["step"]
    assert "killed" in record.why and record.where["step"] in record.why
    assert datetime.fromisoformat(record.where["started_at"]).timestamp() <= killed_at
    assert record.committed == []

    with webhook_receiver() as hook:
        env["PLAYBOOK_NOTIFY"] = f"json://127.0.0.1:{hook.server_address[1]}/"
        listing = run_cli("incidents", env=env)
        again = run_cli("incidents", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "01-20_rollback_coaching_tables: died at cell" in listing.stdout
    assert "(no finished run)" not in listing.stdout
    # Nobody could tell the team when the process was killed: the first look does, once.
    assert [m["title"] for m in hook.received] == \
        ["[rollback playbook] INC-KILL: 20_rollback_coaching_tables died"]
    assert "Perform the rollback" in hook.received[0]["message"]
    assert "team notified (died)" in listing.stderr and "died" not in again.stderr

    timeline = run_cli("timeline", "INC-KILL", env=env)
    assert timeline.returncode == 0, timeline.stderr
    markdown = (folder / "timeline.md").read_text()
    assert "| 01 | 20_rollback_coaching_tables | alice |" in markdown
    assert "Run 01-20_rollback_coaching_tables DIED at cell" in markdown
    steps = [line for line in markdown.splitlines() if line.startswith("| 01 |")
             and "Perform the rollback" in line]
    assert steps and steps[-1].rstrip().endswith("| died |")


# --- the kernel dies; Ctrl-C --------------------------------------------------------------


def _dying_notebook(folder: Path) -> Path:
    """A notebook that COMMITs a change, then its kernel dies (or it sleeps, for Ctrl-C),
    then has a checklist and more steps that never run."""
    cells = [
        new_markdown_cell("# A notebook whose kernel dies"),
        new_code_cell('database_url_env: str = "DATABASE_URL"\nmode: str = "review"\n'
                      'confirm_database: str = ""\nanswers: dict = {}\nincident_id: str = ""\n'
                      'operator: str = ""\nbehaviour: str = "die"  # die | sleep',
                      metadata={"tags": ["parameters"]}),
        new_code_cell("from playbook import journal\nfrom playbook.runs import begin_run\n"
                      "run = begin_run('dying', database_url_env=database_url_env, mode=mode, "
                      "confirm_database=confirm_database, answers=answers, "
                      "incident_id=incident_id, operator=operator)"),
        new_markdown_cell("## Change something"),
        new_code_cell("with run.connect() as conn:\n"
                      "    conn.execute('CREATE TABLE public.made_by_the_run (id int)')\n"
                      "journal.committed('the change', ['public.made_by_the_run'], "
                      "{'public.made_by_the_run': 0})"),
        new_markdown_cell("## The step that dies"),
        new_code_cell("import os, signal, time\n"
                      "if behaviour == 'die':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "else:\n    time.sleep(120)"),
        new_markdown_cell("## After rollback checklist"),
        new_code_cell("from playbook.checklists import Checklist\n"
                      "Checklist('after_rollback').record()"),
        new_markdown_cell("## Last step"),
        new_code_cell("print('finished')"),
    ]
    return write_notebook(folder / "dying.ipynb", cells)


def test_a_kernel_that_dies_leaves_a_died_record_and_no_later_step_completed(
        demo_db, tmp_path):
    incidents = tmp_path / "incidents"
    env = _environment(demo_db, incidents, tmp_path)
    notebooks = tmp_path / "notebooks"
    _dying_notebook(notebooks)
    with webhook_receiver() as hook:
        env["PLAYBOOK_NOTIFY"] = f"json://127.0.0.1:{hook.server_address[1]}/"
        result = run_cli("run", "dying", "--incident", "INC-DEAD", "--notebooks",
                         str(notebooks), "-p", "mode", "execute", "-p", "confirm_database",
                         demo_db.name, env=env)
    # The team heard it start, COMMIT, and die (where, and what had COMMITTED).
    assert [m["title"].rsplit(" ", 1)[-1] for m in hook.received] == \
        ["started", "committed", "died"]
    died = hook.received[-1]["message"]
    assert re.search(r"outcome: 01-dying: died at cell \d+ \(The step that dies\): the kernel "
                     r"died .* \(the change COMMITTED\)", died), died
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"died at cell \d+ \(The step that dies\)", result.stdout)
    assert "the change COMMITTED" in result.stdout
    assert demo_db.scalar("SELECT to_regclass('public.made_by_the_run') IS NOT NULL")

    folder = next(incidents.glob("*-INC-DEAD"))
    _valid_json_files(folder)
    (record,) = read_records(folder)
    assert record.outcome == DIED and "the kernel died" in record.why
    assert [c["what"] for c in record.committed] == ["the change"]

    timeline = run_cli("timeline", "INC-DEAD", env=env)
    assert timeline.returncode == 0, timeline.stderr
    markdown = (folder / "timeline.md").read_text()
    statuses = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 9 and cells[1] == "01":
            statuses[cells[3]] = cells[7]
    assert statuses["The step that dies"] == "died"
    assert statuses["After rollback checklist"] == "not run"
    assert statuses["Last step"] == "not run"
    assert "completed" not in {statuses["After rollback checklist"], statuses["Last step"]}
    assert re.search(r"Run 01-dying DIED at cell \d+ \(The step that dies\)", markdown)
    assert "the change had COMMITTED" in markdown
    assert "| the change | public.made_by_the_run |" in markdown


def test_ctrl_c_during_a_step_records_the_run_as_interrupted_there(demo_db, tmp_path):
    incidents = tmp_path / "incidents"
    env = _environment(demo_db, incidents, tmp_path)
    notebooks = tmp_path / "notebooks"
    _dying_notebook(notebooks)
    run = subprocess.Popen(
        [sys.executable, "-m", "playbook", "run", "dying", "--incident", "INC-INT",
         "--notebooks", str(notebooks), "-p", "behaviour", "sleep", "-p", "mode", "execute",
         "-p", "confirm_database", demo_db.name],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=ctrl_c_reaches_the_child)
    _wait_for(lambda: any(e.get("step") == "The step that dies"
                          for e in journal.read(_journal_of(incidents))), 120, "the long step")
    time.sleep(0.5)
    os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stdout + stderr
    assert "playbook: interrupted; see the record" in stderr
    assert "playbook/" not in stderr  # no traceback through the playbook's own code
    folder = next(incidents.glob("*-INC-INT"))
    _valid_json_files(folder)
    (record,) = read_records(folder)
    assert record.outcome == DIED
    assert record.where["step"] == "The step that dies"
    assert "interrupted (Ctrl-C)" in record.why
    assert [c["what"] for c in record.committed] == ["the change"]


def test_an_outcome_the_incident_folder_cannot_take_goes_to_stderr_and_a_second_place(
        tmp_path, monkeypatch, capsys):
    """The incident folder is gone when the run ends (a disk unmounted, a folder removed):
    the outcome is printed on stderr and kept under $XDG_STATE_HOME, and found there."""
    folder = tmp_path / "incidents" / "2026-12-02-INC-GONE"
    folder.mkdir(parents=True)
    base = folder / "01-20_rollback_coaching_tables"
    (folder / "01-20_rollback_coaching_tables.json").write_text('{"status": "running"}')
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("PLAYBOOK_NOTIFY", raising=False)
    record = records.Record(
        incident_id="INC-GONE", number=1, notebook="20_rollback_coaching_tables",
        operator="alice", started_at="2026-12-02T03:00:00+00:00", outcome=SUCCEEDED,
        mode="execute", moments=[{"id": "c", "at": "2026-12-02T03:00:05+00:00",
                                  "event": journal.COMMITTED, "what": "the drop",
                                  "objects": ["public.sponsor_chat_messages"],
                                  "rows": {"public.sponsor_chat_messages": 400}}],
        files={"notebook": f"{base}.ipynb", "html": f"{base}.html",
               "record": f"{base}.json", "journal": f"{base}.journal.jsonl"})
    (folder / "01-20_rollback_coaching_tables.json").rename(tmp_path / "stub.json")
    folder.rmdir()  # the folder disappears before the outcome is written

    records._write_record(record, new_notebook(), [])

    assert set(record.unwritten) == {"record", "notebook", "html"}
    kept = tmp_path / "state" / "playbook" / "records" / \
        "2026-12-02-INC-GONE-01-20_rollback_coaching_tables.json"
    assert record.fallback == str(kept)
    written = json.loads(kept.read_text())
    assert written["outcome"] == SUCCEEDED and written["moments"][0]["what"] == "the drop"
    assert "the drop COMMITTED; the record could not be written" in record.record_problem()
    assert str(kept) in record.record_problem()
    stderr = capsys.readouterr().err
    assert "the record could not be written; its outcome follows" in stderr
    assert '"what": "the drop"' in stderr
    # `playbook incidents` reads it back from there once the folder is back.
    folder.mkdir()
    (tmp_path / "stub.json").rename(folder / "01-20_rollback_coaching_tables.json")
    (found,) = read_records(folder)
    assert found.outcome == SUCCEEDED and found.committed[0]["what"] == "the drop"
    assert found.exit_code == RECORD_INCOMPLETE
