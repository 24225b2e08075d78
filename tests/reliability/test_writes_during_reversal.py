"""Rehearsed: a chat app keeps writing while its newest migration (replies and reactions,
tests/corpus/chat) is rolled back. The application adds reactions (a table the migration
created) and sets replies (a column it added to an older table), one transaction per
write, on its own session, and notes every write whose COMMIT returned. Afterwards every
one of those writes is in the export the rollback left, and the recovery brings it back;
or the rollback failed and the database still holds it: never in neither (issue 14, with
issue 16's guarantee).

The expected rows are rebuilt here from the rows before the application started and its
committed writes; the export is read back with the csv module and hashed here."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import psycopg
import pytest

from corpus_projects import CORPUS, chat_rows, record_history
from playbook.db import localdb
from playbook.errors import PlaybookError
from playbook.reversal import plan as reversal
from playbook.reversal.data import data_at_stake
from playbook.reversal.rollback import recover_migration, roll_back_migration
from playbook.reversal.shadow import read_migrations_folder
from reliability.writing_application import WritingApplication

TARGET = "20240320090000"  # replies and reactions: a new table, columns added to old ones


class ChatApplication(WritingApplication):
    """Even writes add a reaction, odd ones set a message's reply."""

    name = "the chat app"

    def __init__(self, url: str, messages: list[int], users: list[str]) -> None:
        super().__init__(url)
        self.messages, self.users = messages, users

    def write(self, conn: psycopg.Connection, i: int) -> tuple:
        message = self.messages[i % len(self.messages)]
        if i % 2 == 0:
            user, emoji = self.users[i % len(self.users)], f"w{i}"
            conn.execute("insert into public.reactions (message_id, user_id, emoji) "
                         "values (%s, %s, %s)", (message, user, emoji))
            conn.commit()
            return ("reaction", str(message), user, emoji)
        reply_to = self.messages[(i * 7) % len(self.messages)]
        conn.execute("update public.messages set reply_to = %s where id = %s",
                     (reply_to, message))
        conn.commit()
        return ("reply", str(message), str(reply_to))


def _state(conn: psycopg.Connection) -> tuple[set[tuple], dict[str, str]]:
    reactions = {(str(m), str(u), e) for m, u, e in conn.execute(
        "select message_id, user_id, emoji from public.reactions")}
    replies = {str(i): "" if r is None else str(r) for i, r in conn.execute(
        "select id, reply_to from public.messages")}
    return reactions, replies


def _expected(initial: tuple[set[tuple], dict[str, str]], writes: list[tuple]):
    reactions, replies = set(initial[0]), dict(initial[1])
    for write in writes:
        if write[0] == "reaction":
            reactions.add(write[1:])
        else:
            replies[write[1]] = write[2]
    return reactions, replies


def _exported(folder: Path) -> tuple[set[tuple], dict[str, str]]:
    """Reactions and replies as the export's CSV files hold them, after checking every
    file against the manifest's SHA-256 here."""
    manifest = json.loads((folder / "manifest.json").read_text())
    assert not (folder / "INCOMPLETE").exists()
    files = {}
    for entry in manifest["files"]:
        data = (folder / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        with open(folder / entry["file"], newline="") as handle:
            files[entry["table"]] = list(csv.DictReader(handle))
        assert len(files[entry["table"]]) == entry["rows"], entry["file"]
    reactions = {(r["message_id"], r["user_id"], r["emoji"])
                 for r in files["public.reactions"]}
    replies = {r["id"]: r["reply_to"] for r in files["public.messages"]}
    return reactions, replies


@pytest.mark.both_versions
def test_a_chat_app_writing_through_the_rollback_of_its_migration_loses_nothing(
        pg_cluster, databases, tmp_path):
    folder = read_migrations_folder(CORPUS / "chat")
    target = folder.find(TARGET)
    live = databases(folder.up_to(TARGET))
    record_history(live, folder)
    chat_rows(live)
    live.commit()
    initial = _state(live)
    messages = sorted(int(m) for m in initial[1])
    users = [str(r[0]) for r in live.execute("select id from auth.users order by id")]
    live.rollback()
    url = localdb.database_url_for(pg_cluster.admin_url, live.info.dbname)
    export_dir = tmp_path / "export"

    application = ChatApplication(url, messages, users).start()
    try:
        application.wait_for(10)
        with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
            plan = reversal.plan_reversal(live, states, folder, target)
            stake = data_at_stake(states.before, states.after)
            live.rollback()
            application.wait_for(len(application.committed) + 20)  # writes after review
            try:
                roll_back_migration(live, plan, states, stake, export_dir)
                rolled_back = True
            except PlaybookError as exc:  # allowed: then nothing may have changed
                rolled_back, outcome = False, str(exc)
                live.rollback()
    finally:
        application.stop()

    writes = list(application.committed)
    assert len(writes) >= 30, writes
    expected = _expected(initial, writes)
    if not rolled_back:
        assert _state(live) == expected, outcome
        return
    assert live.execute("select to_regclass('public.reactions')").fetchone()[0] is None
    exported = _exported(export_dir)
    missing = [w for w in writes if (w[1:] not in exported[0] if w[0] == "reaction"
                                     else exported[1].get(w[1]) != expected[1][w[1]])]
    assert not missing, f"{len(missing)} of {len(writes)} committed writes are not exported"
    assert exported == expected
    live.rollback()

    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        recover_migration(live, target, states, export_dir)
    assert _state(live) == expected
