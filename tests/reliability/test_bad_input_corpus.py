"""The bad-input corpus: every way an operator under stress can get a parameter, a file or
the database wrong, across the notebooks. Each case goes through the very entry point the
notebook's cell calls (begin_run, the gates, the step helpers) and must end in ONE clear
playbook exception (one line, a non-zero exit code, no driver traceback as the answer),
with the database's fingerprint (every table's count and checksum, every sequence, every
default) identical before and after. A handful run end to end through papermill: one
refusal per notebook, exit non-zero, record says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from notebook_runs import NOTEBOOKS, ROOT, run_notebook, shipped_parameters
from playbook import backups
from playbook.changesets.migration import load_migration
from playbook.db import connecting, pgbinaries
from playbook.errors import (
    BackupUnusable,
    ConfigurationError,
    ConnectionFailed,
    ExportMismatch,
    GateClosed,
    ObjectNotFound,
    PlaybookError,
    PreconditionFailed,
    ToolTooOld,
    UnsafeConnection,
    WrongDatabase,
)
from playbook.procedures import drops, recovery
from playbook.procedures import table_repair as repair
from playbook.runs import begin_run
from playbook.steps import full_restore as steps30
from playbook.steps import recover_coaching_tables as steps21
from playbook.steps import restore_tables as steps31
from playbook.steps import rollback_coaching_tables as steps20
from playbook.steps import rollback_sequence as steps10

COACHING = load_migration("coaching_tables")
SEQ, DROP, RECOVER, FULL, SURGICAL, TRIAGE = (
    "10_rollback_sequence", "20_rollback_coaching_tables", "21_recover_coaching_tables",
    "30_full_restore", "31_restore_tables", "00_triage")


@dataclass
class Ctx:
    db: object
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    export: Path | None = None
    pooler: str = ""

    def url(self, value: str) -> None:
        self.monkeypatch.setenv("DATABASE_URL", value)

    def review(self, notebook: str, **kwargs):
        return begin_run(notebook, **kwargs)

    def execute(self, notebook: str):
        return begin_run(notebook, mode="execute", confirm_database=self.db.name)

    def file(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path


@dataclass
class Case:
    id: str
    act: Callable[[Ctx], object]
    error: type[PlaybookError]
    says: str
    database: str = "demo"  # demo | empty | half (one coaching table dropped by hand)
    needs_export: bool = False
    needs_pooler: bool = False


def _old_pg_dump_only(c: Ctx) -> None:
    """Make PG_BINDIR the only bin folder found, holding a pg_dump that says it is 12."""
    fake = c.tmp / "old-bin"
    fake.mkdir()
    script = fake / "pg_dump"
    script.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n")
    script.chmod(0o755)
    c.monkeypatch.setenv("PG_BINDIR", str(fake))
    c.monkeypatch.setattr(pgbinaries, "_pgserver_bindir", lambda: None)
    c.monkeypatch.setattr(pgbinaries, "DEBIAN_ROOT", c.tmp / "no-debian")
    c.monkeypatch.setattr(pgbinaries.shutil, "which", lambda _name: None)


def _export_of_another_migration(c: Ctx) -> Path:
    manifest = json.loads((c.export / "manifest.json").read_text())
    manifest["extra"]["migration"] = "sponsor_connections_sequence"
    folder = c.tmp / "other"
    folder.mkdir()
    for entry in manifest["files"]:
        (folder / entry["file"]).write_bytes((c.export / entry["file"]).read_bytes())
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _perform_drop_directly(c: Ctx, lock_timeout: object) -> None:
    with connecting.connect(purpose="test") as conn:
        drops.perform_drop(conn, COACHING, c.export, lock_timeout=lock_timeout)


def _gate_answers(c: Ctx, notebook: str, answers: dict):
    run = c.review(notebook, answers=answers)
    if notebook == SEQ:
        return steps10.gate(run, steps10.verify_the_issue(run), answers).check()
    if notebook == RECOVER:
        return steps21.gate(run).check()
    return steps20.gate(run, COACHING, c.tmp / "no-export").check()


def _migration_folder(c: Ctx, description: str, deploy: bytes | None = b"") -> str:
    folder = c.tmp / "change-set"
    folder.mkdir()
    (folder / "migration.yaml").write_text(description)
    if deploy is None:
        (folder / "deploy.sql").mkdir()  # a folder where the script should be
    else:
        (folder / "deploy.sql").write_bytes(deploy)
    return str(folder)


HOSTILE = "x'; DROP TABLE public.profiles; --"

CASES = [
    # --- where the database is -------------------------------------------------------
    Case("url-not-a-url", lambda c: (c.url("not a url ==="), c.review(DROP)),
         ConfigurationError, "malformed"),
    Case("url-unterminated-ipv6", lambda c: (c.url("postgresql://u:pw@[::1"), c.review(SEQ)),
         ConfigurationError, "malformed"),
    Case("url-port-not-a-number",
         lambda c: (c.url("postgresql://u:s3cr3tpw@127.0.0.1:notaport/db"), c.review(RECOVER)),
         ConnectionFailed, "Nothing was changed"),
    Case("url-unreachable-server",
         lambda c: (c.url("postgresql://u:s3cr3tpw@127.0.0.1:1/db"), c.review(FULL)),
         ConnectionFailed, "Nothing was changed"),
    Case("url-unknown-database",
         lambda c: (c.url(c.db.url.replace(f"dbname={c.db.name}", "dbname=no_such_db")),
                    c.review(SURGICAL)), ConnectionFailed, "no_such_db"),
    Case("url-bad-sslmode",
         lambda c: (c.url(c.db.url + " sslmode=bogus"), c.review(TRIAGE)),
         ConnectionFailed, "sslmode"),
    Case("url-env-not-set", lambda c: c.review(DROP, database_url_env="NO_SUCH_VARIABLE"),
         ConfigurationError, "is not set"),
    Case("url-env-shell-injection", lambda c: c.review(SEQ, database_url_env="$(reboot)"),
         ConfigurationError, "name of an environment variable"),
    Case("pooled-supabase-port-6543-execute",
         lambda c: (c.url(c.pooler), c.execute(DROP)), UnsafeConnection, "port 6543",
         needs_pooler=True),
    Case("pooled-supabase-port-6543-sequence-reset",
         lambda c: (c.url(c.pooler), c.execute(SEQ)), UnsafeConnection, "advisory locks",
         needs_pooler=True),
    # --- mode, confirm_database, answers ----------------------------------------------
    Case("mode-uppercase", lambda c: c.review(DROP, mode="EXECUTE"), ConfigurationError,
         "mode must be"),
    Case("mode-dry-run", lambda c: c.review(FULL, mode="dry-run"), ConfigurationError,
         "mode must be"),
    Case("mode-empty", lambda c: c.review(SURGICAL, mode=""), ConfigurationError,
         "mode must be"),
    Case("confirm-database-wrong",
         lambda c: begin_run(DROP, mode="execute", confirm_database="production"),
         WrongDatabase, "production"),
    Case("confirm-database-missing",
         lambda c: begin_run(SEQ, mode="execute"), WrongDatabase, "nothing"),
    Case("confirm-database-injection",
         lambda c: begin_run(RECOVER, mode="execute", confirm_database=HOSTILE),
         WrongDatabase, "Nothing was changed"),
    Case("confirm-database-other-case",
         lambda c: begin_run(FULL, mode="execute", confirm_database=c.db.name.upper()),
         WrongDatabase, "Nothing was changed"),
    Case("answers-a-string", lambda c: c.review(DROP, answers="yes"), ConfigurationError,
         "must be a mapping"),
    Case("answers-a-list", lambda c: c.review(SURGICAL, answers=["yes"]),
         ConfigurationError, "must be a mapping"),
    Case("answer-maybe", lambda c: _gate_answers(c, DROP, {"recent_backup": "maybe"}),
         ConfigurationError, "must be 'yes' or 'no'"),
    Case("answer-y", lambda c: _gate_answers(c, SEQ, {"issue_confirmed": "y"}),
         ConfigurationError, "must be 'yes' or 'no'"),
    Case("answer-a-number", lambda c: _gate_answers(c, RECOVER, {"recovery_reviewed": 1}),
         ConfigurationError, "must be 'yes' or 'no'"),
    Case("answer-misspelt-question",
         lambda c: _gate_answers(c, SEQ, {"issue_confirmd": "yes", "team_notified": "yes"}),
         ConfigurationError, "issue_confirmd"),
    Case("answer-no-in-capitals",
         lambda c: _gate_answers(c, RECOVER, {"recovery_reviewed": " NO ",
                                              "application_stopped": "yes",
                                              "team_notified": "yes"}),
         GateClosed, "recovery_reviewed: answered NO"),
    # --- names from parameters -------------------------------------------------------
    Case("table-name-with-nul", lambda c: steps10.verify_the_issue(
        c.review(SEQ), '"sponsor\x00connections"', "id"), ConfigurationError, "NUL"),
    Case("column-name-with-nul", lambda c: steps10.verify_the_issue(
        c.review(SEQ), "public.sponsor_connections", '"i\x00d"'), ConfigurationError, "NUL"),
    Case("table-name-cyrillic-lookalike", lambda c: steps10.verify_the_issue(
        c.review(SEQ), "publіc.sponsor_connections", "id"), ConfigurationError,
         "not a valid PostgreSQL object name"),
    Case("odd-legal-name-absent", lambda c: steps10.verify_the_issue(
        c.review(SEQ), '"Mixed Case"."a.b table"', "id"), ObjectNotFound, "does not exist"),
    Case("odd-legal-name-without-sequence", lambda c: steps10.verify_the_issue(
        c.review(SEQ), '"My Schema"."memo.v2 table"', '"the id"'), ObjectNotFound,
         "has no sequence"),
    Case("quoted-injection-as-column", lambda c: steps10.verify_the_issue(
        c.review(SEQ), "public.sponsor_connections", '"id""; DROP TABLE public.profiles; --"'),
         ObjectNotFound, "does not exist"),
    Case("schema-injection-in-surgical-tables",
         lambda c: repair.resolve_strategies([], {}, [f"public{HOSTILE}"]),
         ConfigurationError, "not a valid PostgreSQL object name"),
    Case("strategy-key-injection",
         lambda c: repair.resolve_strategies([], {f"public.virtues;{HOSTILE}": "missing"}, []),
         ConfigurationError, "not a valid PostgreSQL object name"),
    Case("include-dependents-not-a-list",
         lambda c: steps20.plan_drop(c.review(DROP), COACHING, "view public.x"),
         ConfigurationError, "must be a list"),
    # --- lock_timeout: 0 waits forever, a long wait is an outage ----------------------
    Case("lock-timeout-zero-drop", lambda c: steps20.perform_rollback(
        c.execute(DROP), COACHING, c.export, lock_timeout="0"), ConfigurationError,
         "means wait forever", needs_export=True),
    Case("lock-timeout-zero-as-a-number-recovery", lambda c: steps21.recover(
        c.execute(RECOVER), COACHING, c.export, lock_timeout=0), ConfigurationError,
         "means wait forever", database="half", needs_export=True),
    Case("lock-timeout-zero-seconds-review", lambda c: steps20.perform_rollback(
        c.review(DROP), COACHING, c.tmp / "never", lock_timeout="0s"), ConfigurationError,
         "means wait forever"),
    Case("lock-timeout-45s-above-the-maximum", lambda c: steps20.perform_rollback(
        c.execute(DROP), COACHING, c.export, lock_timeout="45s"), ConfigurationError,
         "maximum of 30s", needs_export=True),
    Case("lock-timeout-one-hour-recovery", lambda c: steps21.recover(
        c.execute(RECOVER), COACHING, c.export, lock_timeout="1h"), ConfigurationError,
         "maximum of 30s", database="half", needs_export=True),
    Case("lock-timeout-in-words", lambda c: steps21.recover(
        c.review(RECOVER), COACHING, c.tmp, lock_timeout="2 seconds"), ConfigurationError,
         "not a duration"),
    Case("lock-timeout-negative-direct-drop", lambda c: _perform_drop_directly(
        c, lock_timeout="-1"), ConfigurationError, "not a duration", needs_export=True),
    Case("lock-timeout-zero-session-limits", lambda c: connecting.connect(
        limits=connecting.SessionLimits(lock_timeout="0ms")), ConfigurationError,
         "means wait forever"),
    # --- missing or unreadable files -------------------------------------------------
    Case("migration-file-missing", lambda c: load_migration("/nonexistent/migration.sql"),
         ObjectNotFound, "Nothing was changed"),
    Case("migration-file-not-utf8", lambda c: steps20.review_what_will_be_deleted(
        c.review(DROP), load_migration(str(c.file("m.sql", b"\xff\xfe\x00garbage")))),
         ConfigurationError, "cannot be read as UTF-8"),
    Case("migration-sql-does-not-parse", lambda c: steps20.review_what_will_be_deleted(
        c.review(DROP), load_migration(str(c.file("m.sql", b"CREATE TABLE x (id int;;")))),
         ConfigurationError, "does not parse"),
    Case("migration-yaml-malformed", lambda c: load_migration(
        _migration_folder(c, "name: [unclosed\n")), ConfigurationError, "not valid YAML"),
    Case("migration-deploy-is-a-folder", lambda c: load_migration(_migration_folder(
        c, "name: cs\ndeploy: deploy.sql\n", deploy=None)), ObjectNotFound, "does not exist"),
    Case("export-folder-missing", lambda c: recovery.check_export(COACHING, c.tmp / "nope"),
         ExportMismatch, "No export manifest"),
    Case("export-manifest-not-json", lambda c: recovery.check_export(COACHING, (
        c.file("manifest.json", b"{not json").parent)), ExportMismatch, "unreadable"),
    Case("export-of-another-migration", lambda c: recovery.check_export(
        COACHING, _export_of_another_migration(c)), ExportMismatch, "of migration",
         needs_export=True),
    Case("drop-without-any-export", lambda c: steps20.perform_rollback(
        c.execute(DROP), COACHING, c.tmp / "never-exported"), ExportMismatch,
         "No export manifest"),
    Case("backup-folder-missing", lambda c: backups.list_backups(c.tmp / "no-backups"),
         BackupUnusable, "does not exist"),
    Case("backup-file-garbage", lambda c: backups.choose_backup(
        c.file("x.dump", b"PGDMP-not-really").parent, backup_file="x.dump"),
         BackupUnusable, "cannot be used"),
    Case("backup-file-missing-surgical", lambda c: steps31.restore_backup(
        c.review(SURGICAL), str(c.tmp / "nope.dump")), BackupUnusable, "does not exist"),
    Case("backup-file-empty-parameter-surgical", lambda c: steps31.restore_backup(
        c.review(SURGICAL), ""), ConfigurationError, "backup_file is empty"),
    Case("backup-kind-unknown", lambda c: steps31.restore_backup(
        c.review(SURGICAL), str(c.file("x.sql", b"SELECT 1;")), "zip"),
         ConfigurationError, "backup_kind"),
    Case("migration-time-not-a-date", lambda c: backups.choose_backup(
        c.tmp, before="yesterday after lunch"), ConfigurationError, "not an ISO date"),
    Case("restore-strategy-unknown", lambda c: steps30.plan_restore(
        c.review(FULL), backups.Backup(backups.KIND_PG_DUMP_CUSTOM, c.tmp / "b.dump",
                                       datetime.now(UTC), 1), strategy="nuke", jobs=2,
        block_connections=False, terminate_connections=False),
         ConfigurationError, "nuke"),
    # --- tools older than the server -------------------------------------------------
    Case("pg-dump-older-than-server", lambda c: (_old_pg_dump_only(c), steps20.export_data(
        c.review(DROP), COACHING, c.tmp / "export", show_progress=False)), ToolTooOld,
         "PostgreSQL 12"),
    Case("archive-from-a-newer-pg-dump", lambda c: backups.require_tools_for(
        backups.Backup(backups.KIND_PG_DUMP_CUSTOM, c.tmp / "b.dump", datetime.now(UTC), 1,
                       tool_version="99.1"), 16), ToolTooOld, "older than the server"),
    # --- an empty database, a half-rolled-back one -----------------------------------
    Case("empty-database-sequence-reset", lambda c: steps10.verify_the_issue(
        c.review(SEQ)), ObjectNotFound, "does not exist", database="empty"),
    Case("empty-database-recovery", lambda c: steps21.recover(
        c.execute(RECOVER), COACHING, c.export), ObjectNotFound, "profiles",
         database="empty", needs_export=True),
    Case("empty-database-drop-without-export", lambda c: steps20.perform_rollback(
        c.execute(DROP), COACHING, c.tmp / "never"), ExportMismatch, "No export manifest",
         database="empty"),
    Case("half-rolled-back-recovery-would-duplicate", lambda c: steps21.recover(
        c.execute(RECOVER), COACHING, c.export), PreconditionFailed, "would duplicate",
         database="half", needs_export=True),
    Case("half-rolled-back-export-is-incomplete", lambda c: (steps20.export_data(
        c.review(DROP), COACHING, c.tmp / "half", archive=False, show_progress=False),
        recovery.check_export(COACHING, c.tmp / "half")), ExportMismatch,
         "incomplete: public.sponsor_chat_messages", database="half"),
    Case("half-rolled-back-table-dropped-by-hand", lambda c: steps10.verify_the_issue(
        c.review(SEQ), "public.sponsor_chat_messages", "id"), ObjectNotFound,
         "does not exist", database="half"),
]


@pytest.fixture
def odd_names(demo_db):
    """Odd-but-legal names that really exist: a schema with a space, a table with a dot."""
    with demo_db.connect() as conn:
        conn.execute('CREATE SCHEMA "My Schema"')
        conn.execute('CREATE TABLE "My Schema"."memo.v2 table" ("the id" int PRIMARY KEY)')
        conn.execute('INSERT INTO "My Schema"."memo.v2 table" VALUES (1), (2)')
        conn.commit()


def test_the_corpus_is_big_enough_and_covers_every_notebook():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_refusal_and_changes_nothing(case, request, tmp_path,
                                                            monkeypatch):
    export = request.getfixturevalue("coaching_export") if case.needs_export else None
    pooler = request.getfixturevalue("pooler_url") if case.needs_pooler else ""
    db = request.getfixturevalue("empty_db" if case.database == "empty" else "demo_db")
    if case.database == "demo":
        request.getfixturevalue("odd_names")
    if case.database == "half":
        with db.connect() as conn:
            conn.execute("DROP TABLE public.sponsor_chat_messages")
            conn.commit()
    monkeypatch.setenv("PLAYBOOK_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(tmp_path / "incidents"))
    before = db.fingerprint()
    with pytest.raises(PlaybookError) as raised:
        case.act(Ctx(db, tmp_path, monkeypatch, export, pooler))
    error = raised.value
    assert type(error) is case.error, f"{type(error).__name__}: {error}"
    assert case.says in str(error)
    assert "\n" not in str(error) and "Traceback" not in str(error)
    assert error.exit_code != 0
    assert "s3cr3tpw" not in str(error)
    assert db.fingerprint() == before


def test_the_pooler_port_reads_in_review_but_refuses_execute(demo_db, pooler_url,
                                                             monkeypatch):
    """Port 6543 really answers here (a forwarder to the server): review works through it,
    so the refusal in execute mode is the playbook's choice, not a connection error."""
    monkeypatch.setenv("DATABASE_URL", pooler_url)
    run = begin_run(DROP)
    assert "port=6543" in run.target
    assert steps20.plan_drop(run, COACHING).statements
    with pytest.raises(UnsafeConnection, match="session settings do not hold"):
        begin_run(DROP, mode="execute", confirm_database=demo_db.name)


# --- end to end: one refusal per notebook, through papermill --------------------------------


PAPERMILL_CASES = [
    (TRIAGE, {"mode": "dry-run"}, "ConfigurationError"),
    (SEQ, {"table": "sponsor_connections; DROP TABLE public.profiles"}, "ConfigurationError"),
    (DROP, {"mode": "execute", "confirm_database": "production"}, "WrongDatabase"),
    (RECOVER, {"export_dir": "/nonexistent/export"}, "ExportMismatch"),
    (FULL, {"backup_dir": "/nonexistent/backups"}, "BackupUnusable"),
    (SURGICAL, {"backup_file": "/nonexistent/backup.dump"}, "BackupUnusable"),
    (DROP, {"lock_timeout": "0"}, "ConfigurationError"),
    (RECOVER, {"lock_timeout": "45s"}, "ConfigurationError"),
]


@pytest.mark.parametrize("stem, overrides, error", PAPERMILL_CASES,
                         ids=[c[0] for c in PAPERMILL_CASES])
def test_each_notebook_headless_stops_on_bad_input_with_its_reason(demo_db, tmp_path,
                                                                   incidents, stem,
                                                                   overrides, error):
    before = demo_db.fingerprint()
    run = run_notebook(stem, tmp_path, {**shipped_parameters(stem), **overrides})
    assert run.failed
    assert run.error.ename == error, run.error.ename
    assert "Nothing was changed" in run.error.evalue or "Nothing" in run.error.evalue
    assert demo_db.fingerprint() == before


def test_papermill_cli_exits_non_zero_on_a_pooled_connection(demo_db, pooler_url, tmp_path):
    before = demo_db.fingerprint()
    env = {**os.environ, "DATABASE_URL": pooler_url,
           "PLAYBOOK_INCIDENTS": str(tmp_path / "incidents")}
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOKS / f"{DROP}.ipynb"),
         str(tmp_path / "out.ipynb"), "-p", "mode", "execute", "-p", "confirm_database",
         demo_db.name, "--no-progress-bar", "--cwd", str(ROOT)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "UnsafeConnection" in done.stderr + done.stdout
    assert demo_db.fingerprint() == before


@pytest.mark.parametrize("value, says", [("0", "means wait forever"),
                                         ("31s", "maximum of 30s"),
                                         ("soon", "not a duration")])
def test_playbook_run_refuses_a_bad_lock_timeout_before_anything_runs(demo_db, tmp_path,
                                                                      value, says):
    before = demo_db.fingerprint()
    incidents = tmp_path / "incidents"
    env = {**os.environ, "PLAYBOOK_INCIDENTS": str(incidents)}
    done = subprocess.run(
        [sys.executable, "-m", "playbook", "run", DROP, "--incident", "INC-LT", "-f",
         str(ROOT / "parameters" / f"{DROP}.yaml"), "-p", "mode", "execute", "-p",
         "confirm_database", demo_db.name, "-p", "lock_timeout", value],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not incidents.exists() or not list(incidents.rglob("*.ipynb")), "nothing ran"
    assert demo_db.fingerprint() == before
