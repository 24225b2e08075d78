"""Secrets: the notebooks run with a password-bearing DATABASE_URL (a role created for the
test, with a long unique password full of characters URL-encoding changes), through
`playbook run` (records.run_notebook) and plain papermill; afterwards every file written
(executed notebooks, HTML, JSON records, CSV exports, manifests, pg_dump archives and
their text, backups) is searched for the password, raw and URL-encoded: zero hits.
Review mode runs read-only: a write attempted there fails.

The fast part runs the destructive pair (20 execute via `playbook run`, 21 execute via
papermill) and 10 in execute mode; `make soak` runs every notebook both ways."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import conninfo, sql

from notebook_runs import run_notebook, shipped_parameters
from playbook import backups, records
from playbook.db import pgbinaries
from playbook.runs import begin_run


@pytest.fixture
def operator_url(demo_db, pg_cluster, monkeypatch):
    """(url, password): DATABASE_URL as a postgresql:// URI for a fresh superuser role
    whose password is long, unique and needs URL-encoding."""
    role = f"incident_op_{uuid.uuid4().hex[:8]}"
    password = f"Pw/{uuid.uuid4().hex}@:%20 ;x"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
    params = conninfo.conninfo_to_dict(demo_db.url)

    def url_for(database: str) -> str:
        return (f"postgresql://{role}:{quote(password, safe='')}@{params['host']}:"
                f"{params['port']}/{database}")

    monkeypatch.setenv("DATABASE_URL", url_for(demo_db.name))
    monkeypatch.setenv("SCRATCH_SERVER_URL", url_for("postgres"))
    assert begin_run("00_triage").database == demo_db.name  # really connects as the role
    return url_for(demo_db.name), password


def _yes(stem: str) -> dict:
    return {q: "yes" for q in shipped_parameters(stem)["answers"]}


def _files_holding_the_password(root: Path, password: str) -> list[str]:
    needles = {password.encode(), quote(password, safe="").encode(),
               quote(password).encode()}
    hits = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:5] == b"PGDMP":  # an archive: also its text as pg_restore prints it
            tool = backups._client("pg_restore", None)
            data += backups.run_tool(tool, ["--file=-", str(path)]).stdout.encode()
        if any(n in data for n in needles):
            hits.append(str(path.relative_to(root)))
    return hits


def _record(stem: str, tmp: Path, parameters: dict) -> records.Record:
    return records.run_notebook(stem, "INC-SECRETS", parameters, root=tmp / "incidents",
                                cwd=tmp)


def test_review_sessions_cannot_write_even_when_asked(demo_db):
    run = begin_run("20_rollback_coaching_tables")
    before = demo_db.fingerprint()
    for statement in ("INSERT INTO public.virtues (name) VALUES ('written in review')",
                      "DROP TABLE public.sponsor_chat_messages",
                      "SELECT setval('public.sponsor_connections_id_seq', 1)"):
        with run.connect() as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(statement)
            conn.rollback()
            # A new transaction in the same session is read-only too.
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(statement)
    assert demo_db.fingerprint() == before


def test_destructive_runs_leave_the_password_in_no_file(demo_db, operator_url, tmp_path,
                                                        monkeypatch):
    url, password = operator_url
    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(tmp_path / "incidents"))
    execute = {"mode": "execute", "confirm_database": demo_db.name,
               "incident_id": "INC-SECRETS"}
    sequence = _record("10_rollback_sequence", tmp_path,
                       {**execute, "answers": _yes("10_rollback_sequence")})
    assert sequence.exit_code == 0, sequence.why
    dropped = _record("20_rollback_coaching_tables", tmp_path,
                      {**execute, "answers": _yes("20_rollback_coaching_tables")})
    assert dropped.exit_code == 0, dropped.why
    exports = list((tmp_path / "incidents").rglob("manifest.json"))
    assert exports, "the drop's export was not written under the incident"
    recovered = run_notebook("21_recover_coaching_tables", tmp_path / "papermill", {
        **execute, "answers": _yes("21_recover_coaching_tables"),
        "export_dir": str(exports[0].parent)})
    assert not recovered.failed, recovered.error
    assert demo_db.scalar("SELECT count(*) FROM public.sponsor_chat_messages") == 200
    assert list(tmp_path.rglob("*.dump")) and list(tmp_path.rglob("*.csv"))
    assert _files_holding_the_password(tmp_path, password) == []
    canary = tmp_path / "canary.txt"  # the search itself can fail: it finds a planted leak
    canary.write_text(f"oops {url}")
    assert _files_holding_the_password(tmp_path, password) == ["canary.txt"]


@pytest.mark.soak
def test_every_notebook_both_ways_leaves_the_password_in_no_file(demo_db, operator_url,
                                                                 tmp_path, monkeypatch):
    url, password = operator_url
    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(tmp_path / "incidents"))
    backup = backups.take_backup(url, tmp_path / "backups")
    review = {"incident_id": "INC-SECRETS"}
    specific = {
        "00_triage": {"checklist_answers": {k: "yes" for k in shipped_parameters(
            "00_triage")["checklist_answers"]}},
        "10_rollback_sequence": {},
        "20_rollback_coaching_tables": {"export_dir": str(tmp_path / "exports" / "20")},
        "21_recover_coaching_tables": {"export_dir": str(tmp_path / "exports" / "20")},
        "30_full_restore": {"backup_dir": str(tmp_path / "backups"),
                            "export_dir": str(tmp_path / "exports" / "30")},
        "31_restore_tables": {"backup_file": str(backup.path),
                              "scratch_url_env": "SCRATCH_SERVER_URL",
                              "export_dir": str(tmp_path / "exports" / "31")},
    }
    outcomes = {}
    for stem, extra in specific.items():
        parameters = {**review, "answers": _yes(stem), **extra}
        by_papermill = run_notebook(stem, tmp_path / "papermill", parameters)
        by_record = _record(stem, tmp_path, parameters)
        outcomes[stem] = (by_papermill.error and by_papermill.error.ename, by_record.outcome,
                          by_record.why)
    # Review with every answer yes runs each notebook to its end (changing nothing).
    assert all(p is None and r == records.SUCCEEDED for p, r, _ in outcomes.values()), outcomes
    assert pgbinaries.client_program("pg_dump", demo_db.major)
    assert _files_holding_the_password(tmp_path, password) == []
