"""Rehearsed: the application keeps writing to the coaching tables while notebook 20 runs
in execute mode (issue 16, item 1). It edits chat messages (UPDATE), or replaces one
message by another in one transaction (DELETE + INSERT, the count unchanged), on its
own session, and notes every write whose COMMIT returned. Afterwards every one of those
writes is either in the export the drop left in the export folder, or the drop failed
and the tables still hold it: never in neither.

The expected content is rebuilt from the rows before the application started and its
committed writes, in commit order; the export is read back with the csv module and its
files hashed here, not by the playbook."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import deque
from pathlib import Path

import psycopg
import pytest

from notebook_runs import run_notebook, shipped_parameters
from playbook.errors import PlaybookError
from playbook.procedures import drops
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20
from reliability.conftest import coaching_tables_present
from reliability.writing_application import WritingApplication

MESSAGES = "public.sponsor_chat_messages"
NOTEBOOK = "20_rollback_coaching_tables"


class Application(WritingApplication):
    """Edits chat messages (``update``) or replaces the oldest by a new one in one
    transaction (``replace``, the count unchanged)."""

    def __init__(self, url: str, kind: str) -> None:
        super().__init__(url)
        self.kind = kind
        self.ids: deque = deque()

    def prepare(self, conn: psycopg.Connection) -> None:
        self.ids = deque(r[0] for r in conn.execute(
            "SELECT id FROM public.sponsor_chat_messages ORDER BY id"))

    def write(self, conn: psycopg.Connection, i: int) -> tuple:
        ids = self.ids
        body = f"{self.kind} {i} written while the rollback runs"
        if self.kind == "update":
            message = ids[i % len(ids)]
            conn.execute("UPDATE public.sponsor_chat_messages SET body = %s WHERE id = %s",
                         (body, message))
            conn.commit()
            return ("update", message, body)
        oldest = ids[0]
        connection, sender = conn.execute(
            "DELETE FROM public.sponsor_chat_messages WHERE id = %s "
            "RETURNING connection_id, sender_id", (oldest,)).fetchone()
        new = conn.execute(
            "INSERT INTO public.sponsor_chat_messages (connection_id, sender_id, body) "
            "VALUES (%s, %s, %s) RETURNING id", (connection, sender, body)).fetchone()[0]
        conn.commit()
        ids.popleft()
        ids.append(new)
        return ("replace", oldest, new, body)


def _messages(rows) -> dict[str, str]:
    return {str(r[0]): r[1] for r in rows}


def _expected(initial: dict[str, str], writes: list[tuple]) -> dict[str, str]:
    """The messages as they must be after ``writes``, applied in commit order."""
    expected = dict(initial)
    for write in writes:
        if write[0] == "update":
            _, message, body = write
            expected[str(message)] = body
        else:
            _, deleted, inserted, body = write
            del expected[str(deleted)]
            expected[str(inserted)] = body
    return expected


def _in(exported: dict[str, str], expected: dict[str, str], write: tuple) -> bool:
    """Whether ``exported`` shows ``write`` (or a later write to the same message)."""
    if write[0] == "update":
        _, message, body = write
        return exported.get(str(message)) == expected[str(message)]
    _, deleted, inserted, body = write
    return str(deleted) not in exported and (str(inserted) not in expected  # deleted later
                                             or exported.get(str(inserted)) == body)


def _exported_messages(folder: Path) -> dict[str, str]:
    """The messages in the export's CSV, after checking every file's SHA-256 here."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (folder / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
    entry = next(f for f in manifest["files"] if f["table"] == MESSAGES)
    with open(folder / entry["file"], newline="") as handle:
        rows = [(row["id"], row["body"]) for row in csv.DictReader(handle)]
    assert len(rows) == entry["rows"]
    return _messages(rows)


@pytest.mark.both_versions
@pytest.mark.parametrize("kind", ["update", "replace"])
def test_no_write_committed_before_the_drop_is_missing_from_its_export(
        demo_db, coaching, incidents, kind):
    with demo_db.connect() as conn:
        initial = _messages(conn.execute("SELECT id, body FROM public.sponsor_chat_messages"))
    run = begin_run("20_rollback_coaching_tables", mode="execute",
                    confirm_database=demo_db.name)
    folder = drops.default_export_dir(coaching, "concurrent-writes")
    application = Application(demo_db.url, kind).start()
    try:
        application.wait_for(5)
        steps20.export_data(run, coaching, folder, show_progress=False)
        # The application keeps writing between the export and the drop (the gate, the
        # checklists...), then during the drop itself.
        application.wait_for(len(application.committed) + 20)
        try:
            frame = steps20.perform_rollback(run, coaching, folder)
            dropped = bool((frame["check"] == "committed").any())
        except PlaybookError as exc:  # allowed: then nothing may have been dropped
            dropped, frame = False, str(exc)
    finally:
        application.stop()
    _every_committed_write_is_kept(demo_db, folder, initial, application.committed,
                                   dropped, frame)


def _every_committed_write_is_kept(db, folder: Path, initial: dict[str, str], committed: list,
                                   dropped: bool, outcome: object) -> None:
    """Every write the application saw COMMIT is in the export the drop left (when it
    committed) or still in the tables (when it did not, and nothing was dropped)."""
    writes = list(committed)
    assert len(writes) >= 25, writes
    expected = _expected(initial, writes)
    if dropped:
        assert coaching_tables_present(db) == set()
        exported = _exported_messages(folder)
        missing = [w for w in writes if not _in(exported, expected, w)]
        assert not missing, f"{len(missing)} of {len(writes)} committed writes are lost"
        assert exported == expected
    else:
        assert len(coaching_tables_present(db)) == 3, outcome
        with db.connect() as conn:
            assert _messages(conn.execute(
                "SELECT id, body FROM public.sponsor_chat_messages")) == expected, outcome


@pytest.mark.both_versions
def test_notebook_20_in_execute_mode_keeps_every_write_committed_while_it_runs(
        demo_db, coaching, incidents, tmp_path):
    with demo_db.connect() as conn:
        initial = _messages(conn.execute("SELECT id, body FROM public.sponsor_chat_messages"))
    answers = {qid: "yes" for qid in shipped_parameters(NOTEBOOK)["answers"]}
    application = Application(demo_db.url, "replace").start()
    try:
        application.wait_for(25)  # some before the run, the rest while it runs
        run = run_notebook(NOTEBOOK, tmp_path, {
            "mode": "execute", "confirm_database": demo_db.name, "answers": answers,
            "incident_id": "writes-during-rollback"})
    finally:
        application.stop()
    dropped = not run.failed and "committed" in run.outputs_text()
    folder = drops.default_export_dir(coaching, "writes-during-rollback")
    _every_committed_write_is_kept(demo_db, folder, initial, application.committed, dropped,
                                   run.error)
