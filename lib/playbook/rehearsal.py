"""Rehearsal: the document's "Rollback Testing (Local Environment)", done for real.

``rehearse("20_rollback_coaching_tables")`` copies the target database into a scratch
database on the same server (``CREATE DATABASE ... TEMPLATE``; when other sessions are
connected to the target, which TEMPLATE cannot tolerate, it falls back to
``pg_dump | pg_restore``), runs the notebook there in execute mode with every gate
answered yes and ``confirm_database`` set to the scratch name, verifies the application
on the copy, drops the copy, and records it all under ``incidents/rehearsals/``. The
target itself is only read. ``playbook inventory`` reads "tested" from these records.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import errors as pgerrors

from .db import connecting, localdb
from .db.pgbinaries import client_program
from .errors import PlaybookError, PreconditionFailed
from .incidents import incidents_root
from .parameters import (
    declared_parameters,
    load_parameter_file,
    resolve_notebook,
    shipped_parameter_file,
)
from .records import SUCCEEDED, run_notebook
from .verification import application_checks

REHEARSAL_ENV = "PLAYBOOK_REHEARSAL_URL"
PASSED, FAILED = "passed", "failed"


def rehearsals_root(root: Path | None = None) -> Path:
    return (root or incidents_root()) / "rehearsals"


@dataclass
class Rehearsal:
    notebook: str
    date: str
    outcome: str
    copied_by: str
    source_database: str
    scratch_database: str
    dropped: bool
    run: dict
    checks: list[dict] = field(default_factory=list)
    folder: str = ""

    def summary(self) -> str:
        why = "" if self.outcome == PASSED else f": {self.run.get('why') or 'checks failed'}"
        return (f"rehearsal of {self.notebook} {self.outcome} on a copy of "
                f"{self.source_database} ({self.copied_by}){why}; record in {self.folder}")


def other_sessions(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    ).fetchone()[0]


def _libpq_env(url: str, database: str) -> dict[str, str]:
    """The target as PG* variables: passwords travel in the environment, never argv."""
    params = connecting.parse(url)
    env = dict(os.environ)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                     ("password", "PGPASSWORD"), ("sslmode", "PGSSLMODE")):
        if params.get(key):
            env[var] = params[key]
    env["PGDATABASE"] = database
    return env


def copy_database(url: str, source: str, scratch: str, major: int, *,
                  busy: bool) -> str:
    """Copy ``source`` into a new ``scratch`` database; returns how it was copied."""
    if not busy:
        try:
            localdb.create_database(url, scratch, template=source)
            return "CREATE DATABASE ... TEMPLATE"
        except pgerrors.ObjectInUse:
            pass  # someone connected meanwhile: fall back to a dump
    localdb.create_database(url, scratch)
    dump = subprocess.Popen([str(client_program("pg_dump", major)), "-Fc", "--no-sync"],
                            env=_libpq_env(url, source), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    restore = subprocess.run(
        [str(client_program("pg_restore", major)), "--exit-on-error", "-d", scratch],
        env=_libpq_env(url, scratch), stdin=dump.stdout, capture_output=True, timeout=3600)
    dump.stdout.close()
    dump_err = dump.stderr.read().decode(errors="replace")
    if dump.wait() != 0 or restore.returncode != 0:
        detail = connecting.redact((dump_err or restore.stderr.decode(errors="replace"))[-600:],
                                   url)
        raise PreconditionFailed(
            f"Copying {source!r} with pg_dump | pg_restore failed: {detail}. The target was "
            "only read.", next_step="check the tools' versions and the user's privileges.")
    return "pg_dump | pg_restore (other sessions were connected)"


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def rehearsal_parameters(stem: str, parameters: Mapping[str, object] | None,
                         scratch: str, declared: Mapping[str, dict]) -> dict:
    """The shipped parameters with every gate answered yes, in execute mode, against the
    scratch copy (``-p`` values override the shipped ones)."""
    shipped = load_parameter_file(shipped_parameter_file(stem))
    merged = {**shipped, **(parameters or {})}
    answers = merged.get("answers") or {}
    merged.update({"mode": "execute", "confirm_database": scratch,
                   "database_url_env": REHEARSAL_ENV,
                   "answers": {question: "yes" for question in answers}})
    return {k: v for k, v in merged.items() if k in declared}


def rehearse(stem: str, parameters: Mapping[str, object] | None = None, *,
             env_name: str = connecting.DEFAULT_URL_ENV, root: Path | None = None,
             notebooks_dir: Path | None = None, operator: str | None = None) -> Rehearsal:
    """Run ``stem`` in execute mode on a scratch copy of the target; record and drop it."""
    path = resolve_notebook(stem, notebooks_dir)
    declared = declared_parameters(path)
    url = connecting.database_url(env_name)
    with connecting.session(env_name, purpose="rehearsal", read_only=True,
                            autocommit=True) as conn:
        source, major, busy = conn.info.dbname, conn.info.server_version // 10000, \
            other_sessions(conn)
    scratch = f"rehearsal_{uuid.uuid4().hex[:12]}"
    started = datetime.now(UTC)
    folder = rehearsals_root(root) / f"{started:%Y-%m-%d}-{path.stem}-{scratch[-6:]}"
    folder.mkdir(parents=True, exist_ok=True)
    copied_by = copy_database(url, source, scratch, major, busy=bool(busy))
    scratch_url = localdb.database_url_for(url, scratch)
    checks: list[dict] = []
    dropped = False
    on_copy = rehearsal_parameters(path.stem, parameters, scratch, declared)
    if "export_dir" in declared and not on_copy.get("export_dir"):
        # The copy's exports stay with the rehearsal's record: never among a real
        # incident's, where notebook 21 could take one for the newest real export.
        on_copy["export_dir"] = str(folder / "exports")
    try:
        with _environment(REHEARSAL_ENV, scratch_url):
            record = run_notebook(path.stem, "rehearsal", on_copy, operator=operator,
                                  notebooks_dir=path.parent, folder=folder)
            if record.outcome == SUCCEEDED:
                with connecting.session(REHEARSAL_ENV, purpose="rehearsal-verify",
                                        read_only=True) as conn:
                    checks = [c.as_row() for c in application_checks(conn)]
    finally:
        try:
            localdb.drop_database(url, scratch)
            dropped = True
        except (PlaybookError, psycopg.Error):
            dropped = False
    passed = record.outcome == SUCCEEDED and all(c["result"] == "PASS" for c in checks)
    rehearsal = Rehearsal(
        notebook=path.stem, date=started.isoformat(timespec="seconds"),
        outcome=PASSED if passed else FAILED, copied_by=copied_by, source_database=source,
        scratch_database=scratch, dropped=dropped, run=record.as_dict(),
        checks=[{k: str(v) for k, v in c.items()} for c in checks], folder=str(folder))
    (folder / "rehearsal.json").write_text(json.dumps(asdict(rehearsal), indent=2) + "\n")
    return rehearsal


def read_rehearsals(root: Path | None = None) -> list[Rehearsal]:
    """Every recorded rehearsal, oldest first."""
    found = []
    for path in sorted(rehearsals_root(root).glob("*/rehearsal.json")):
        data = json.loads(path.read_text())
        found.append(Rehearsal(**{k: data.get(k) for k in Rehearsal.__dataclass_fields__}))
    return sorted(found, key=lambda r: r.date)


def last_rehearsal(notebook: str, root: Path | None = None) -> Rehearsal | None:
    matching = [r for r in read_rehearsals(root) if r.notebook == notebook]
    return matching[-1] if matching else None
