"""The main job (`make demo`): rehearse the whole playbook on a throwaway demo database.

Every notebook runs headlessly through :func:`records.run_notebook`, so the result is a
real incident folder under ``incidents/`` with executed notebooks, HTML copies, JSON
records, exports and a timeline, exactly what an operator would leave.

Because the target is a throwaway demo database, the scenario answers the gates "yes"
itself; against anything else it refuses (see :func:`prepare_demo_database`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from . import backups, demo_app, records
from .db import connecting, localdb
from .db.names import QualifiedName
from .errors import PreconditionFailed
from .parameters import load_parameter_file, shipped_parameter_file
from .timeline import build_timeline
from .verification import row_counts

DEMO_ENV = "DATABASE_URL"


@dataclass
class Step:
    """One notebook run of the rehearsal, with what happens to the database before it."""

    notebook: str
    why: str
    parameters: dict = field(default_factory=dict)
    execute: bool = False
    before: Callable[[str, Path], str] | None = None  # (url, incident folder) -> what it did


def _yes_to_everything(stem: str) -> dict[str, str]:
    shipped = load_parameter_file(shipped_parameter_file(stem))
    return {question: "yes" for question in shipped.get("answers", {})}


def _break(kind: str) -> Callable[[str, Path], str]:
    def action(url: str, _folder: Path) -> str:
        with psycopg.connect(url) as conn:
            return demo_app.break_application(conn, kind)

    return action


def _take_backup(url: str, folder: Path) -> str:
    backup = backups.take_backup(url, folder / "backups")
    return f"backup taken: {backup.path.name}"


def _damage_data(url: str, _folder: Path) -> str:
    """The surgical-restore incident: rows deleted and changed, then new rows written."""
    with psycopg.connect(url) as conn:
        deleted = conn.execute(
            "DELETE FROM public.journal_entries WHERE id % 10 = 0").rowcount
        changed = conn.execute(
            "UPDATE public.virtues SET description = 'CORRUPTED' WHERE id % 3 = 0").rowcount
        added = conn.execute(
            "INSERT INTO public.journal_entries (user_id, virtue_id, title, body) "
            "SELECT user_id, virtue_id, 'written after the backup', body "
            "FROM public.journal_entries ORDER BY id LIMIT 5").rowcount
    return (f"damage: {deleted} journal entries deleted, {changed} virtues changed, "
            f"{added} entries written after the backup")


def _latest_backup(folder: Path) -> str:
    found = sorted((folder / "backups").glob("*.dump"))
    return str(found[-1]) if found else ""


def scenario(database: str) -> list[Step]:
    """The rehearsal, in the order an on-call engineer would meet it."""
    def execute(stem: str) -> dict:
        return {"mode": "execute", "confirm_database": database,
                "answers": _yes_to_everything(stem)}

    return [
        Step("00_triage", "a duplicate-key error on sponsor_connections: what do we do?",
             {"answers": {"application_completely_broken": "yes", "data_corrupted": "no",
                          "multiple_migrations_failed": "no", "forward_fix_possible": "no"}},
             before=_break("sequence-behind")),
        Step("10_rollback_sequence", "review the sequence rollback (read-only)",
             {"answers": _yes_to_everything("10_rollback_sequence")}),
        Step("10_rollback_sequence", "reset the sequence", execute("10_rollback_sequence"),
             execute=True),
        Step("20_rollback_coaching_tables", "export, then drop the coaching tables",
             execute("20_rollback_coaching_tables"), execute=True, before=_take_backup),
        Step("21_recover_coaching_tables", "re-apply the migration and re-import the data",
             execute("21_recover_coaching_tables"), execute=True),
        Step("31_restore_tables", "bring back the damaged rows, keep the new ones",
             execute("31_restore_tables"), execute=True, before=_damage_data),
        Step("30_full_restore", "review the full restore (read-only): backup proven usable",
             {"answers": _yes_to_everything("30_full_restore")}),
    ]


def prepare_demo_database(rows: int) -> str:
    """A fresh demo database: recreated on the embedded cluster, or loaded into the
    (empty) database DATABASE_URL names. Returns its URL."""
    if localdb.target_is_given(DEMO_ENV):
        url = connecting.database_url(DEMO_ENV)
        with connecting.session(url=url, purpose="demo-run") as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r','p') AND n.nspname NOT IN "
                "('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            ).fetchone()[0]
        if tables:
            raise PreconditionFailed(
                f"{connecting.summary(url)} already holds {tables} tables; the demo rehearsal "
                "breaks, drops and restores data, so it only runs on an empty database. "
                "Nothing was changed.",
                next_step="point DATABASE_URL at a new empty database, or unset it to use the "
                "embedded server.",
            )
    else:
        url = localdb.target_url(DEMO_ENV)
        localdb.create_database(url, localdb.DEFAULT_DATABASE, replace=True)
    with connecting.session(url=url, purpose="demo-load",
                            limits=connecting.SessionLimits(statement_timeout="0")) as conn:
        demo_app.create_application(conn)
        demo_app.apply_coaching_migration(conn)
        demo_app.load_sample_data(conn, rows=rows)
        conn.commit()
    return url


@contextmanager
def _target_in_environment(url: str) -> Iterator[None]:
    """The kernels papermill starts read the target from DATABASE_URL, as in production."""
    previous = os.environ.get(DEMO_ENV)
    os.environ[DEMO_ENV] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DEMO_ENV, None)
        else:
            os.environ[DEMO_ENV] = previous


def run_demo(rows: int = 2000, incident_id: str = "", *,
             say: Callable[[str], None] = print) -> int:
    """Load the demo, run the scenario, write the timeline. Exit code: 0 when every step
    ended as planned."""
    incident_id = incident_id or "demo-" + datetime.now(UTC).strftime("%H%M%S")
    url = prepare_demo_database(rows)
    database = connecting.parse(url).get("dbname") or localdb.DEFAULT_DATABASE
    say(f"demo database {connecting.summary(url)} loaded ({rows} chat messages)")
    folder = records.incident_folder(incident_id)
    folder.mkdir(parents=True, exist_ok=True)
    failures = 0
    with _target_in_environment(url):
        for step in scenario(database):
            if step.before:
                say(f"   {step.before(url, folder)}")
            parameters = dict(step.parameters)
            if step.notebook in ("30_full_restore", "31_restore_tables"):
                parameters.update(backup_dir=str(folder / "backups"),
                                  backup_file=_latest_backup(folder))
                if step.notebook == "31_restore_tables":
                    del parameters["backup_dir"]
            record = records.run_notebook(
                step.notebook, incident_id, parameters,
                parameter_file=shipped_parameter_file(step.notebook),
                operator="make demo",
            )
            failures += record.exit_code != 0
            mark = "ok " if record.exit_code == 0 else "FAIL"
            say(f"{mark} {record.summary()}  ({step.why})")
    with psycopg.connect(url) as conn:
        counts = row_counts(conn, [QualifiedName("public", "sponsor_chat_messages"),
                                   QualifiedName("public", "journal_entries")])
    say(f"final state: {counts}")

    timeline = build_timeline(incident_id)
    say(f"incident records: {folder}")
    say(f"timeline: {timeline.markdown_path} and {timeline.picture_path.name}")
    return 1 if failures else 0
