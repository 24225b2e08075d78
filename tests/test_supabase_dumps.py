"""Supabase's backups (dashboard download, roles/schema/data trio) restored into a scratch
database, with their errors captured and classified."""

from __future__ import annotations

import gzip

import psycopg
import pytest

from playbook import backup_kinds, backups, supabase_dumps
from playbook.errors import BackupUnusable
from restore_tables_helpers import supabase_plain_dump, supabase_trio, truncated_copy


def test_psql_errors_are_classified_with_their_line():
    stderr = (
        'psql:/tmp/x.sql:12: ERROR:  role "supabase_admin" already exists\n'
        "psql:/tmp/x.sql:40: ERROR:  grant options cannot be granted back to your own grantor\n"
        'psql:/tmp/x.sql:41: ERROR:  extension "pg_graphql" is not available\n'
        'psql:/tmp/x.sql:90: ERROR:  relation "public.lost" does not exist\n'
        "psql:/tmp/x.sql:91: ERROR:  invalid command \\N\n"
    )
    errors = supabase_dumps.parse_psql_errors(stderr)
    assert [(e.line, e.harmless) for e in errors] == [
        (12, True), (40, True), (41, True), (90, False), (91, False)]
    assert "data was lost" in errors[-1].why


def test_dashboard_download_restores_into_scratch_without_touching_the_superuser(
        demo_db, pg_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH_SERVER_URL", pg_cluster.admin_url)
    path = supabase_plain_dump(demo_db.url, demo_db.major, tmp_path)
    backup = backup_kinds.read_any_backup(path)
    assert backup.kind == backup_kinds.KIND_SUPABASE_PLAIN
    restored = supabase_dumps.restore_to_scratch(backup, "SCRATCH_SERVER_URL")
    try:
        with demo_db.connect() as conn:
            expected = conn.execute("SELECT count(*) FROM public.journal_entries").fetchone()[0]
        assert restored.counts["public.journal_entries"] == expected
        assert restored.script.fatal == []
        assert restored.script.harmless  # "role postgres already exists" and the like
        # The dump's ALTER ROLE postgres ... PASSWORD never ran: we still log in.
        psycopg.connect(pg_cluster.admin_url).close()
    finally:
        restored.scratch.drop()


def test_trio_restores_into_scratch(demo_db, pg_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH_SERVER_URL", pg_cluster.admin_url)
    folder = supabase_trio(demo_db.url, demo_db.major, tmp_path / "trio")
    backup = backup_kinds.read_any_backup(folder)
    assert backup.kind == backup_kinds.KIND_SUPABASE_TRIO
    restored = supabase_dumps.restore_to_scratch(backup, "SCRATCH_SERVER_URL")
    try:
        assert restored.counts["public.sponsor_chat_messages"] == demo_db.scalar(
            "SELECT count(*) FROM public.sponsor_chat_messages")
    finally:
        restored.scratch.drop()


def test_truncated_download_is_refused_before_any_restore(demo_db, tmp_path):
    path = supabase_plain_dump(demo_db.url, demo_db.major, tmp_path)
    cut = truncated_copy(path, tmp_path / "cut.backup.gz")
    with pytest.raises(BackupUnusable, match="truncated or damaged"):
        backup_kinds.read_any_backup(cut)
    plain = tmp_path / "cut.backup"
    with gzip.open(path, "rb") as handle:
        text = handle.read()
    plain.write_bytes(text[: len(text) * 2 // 3])
    with pytest.raises(BackupUnusable, match="truncated"):
        backup_kinds.read_any_backup(plain)


def test_a_copy_that_fails_stops_the_restore_with_its_line(pg_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH_SERVER_URL", pg_cluster.admin_url)
    script = tmp_path / "broken.backup"
    script.write_text(
        "-- PostgreSQL database dump\n"
        "CREATE TABLE public.kept (id int PRIMARY KEY);\n"
        "COPY public.missing_table (id) FROM stdin;\n1\n\\N\n\\.\n"
        "--\n-- PostgreSQL database dump complete\n--\n")
    backup = backup_kinds.read_any_backup(script)
    with pytest.raises(BackupUnusable, match="line 3"):
        supabase_dumps.restore_to_scratch(backup, "SCRATCH_SERVER_URL")


def test_unreadable_file_is_refused(tmp_path):
    junk = tmp_path / "photo.backup"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(BackupUnusable):
        backup_kinds.read_any_backup(junk)


@pytest.mark.parametrize("statement,fatal", [
    ('CREATE TABLE "public"."projects" (\n    "id" "uuid" DEFAULT "extensions"."x"()\n);', True),
    ("COPY public.projects (id, name) FROM stdin;", True),
    ('INSERT INTO "public"."projects" ("id") VALUES (\'public.tasks\');', True),
    ("ALTER TABLE ONLY public.projects ADD CONSTRAINT projects_pkey PRIMARY KEY (id);", True),
    ("ALTER TABLE ONLY public.tasks ADD CONSTRAINT t_fk FOREIGN KEY (p) REFERENCES "
     "public.projects(id);", False),
    ("CREATE TABLE public.audit (id int);", False),
    ("ALTER EVENT TRIGGER issue_pg_graphql_access OWNER TO supabase_admin;", False),
    ("GRANT MAINTAIN ON TABLE public.projects TO service_role;", False),
    ("CREATE POLICY p ON public.projects USING (owner = auth.uid());", False),
    ("CREATE VIEW public.v AS SELECT * FROM public.projects;", False),
    ('CREATE TABLE "fo\'o"."ba""r" (id int);', True),
])
def test_an_error_is_fatal_only_when_its_statement_creates_or_fills_a_chosen_table(
        statement, fatal):
    chosen = supabase_dumps.Chosen.of(["public.projects", '"fo\'o"."ba""r"'])
    error = supabase_dumps.RestoreError("x.sql", 7, "some error", False, "", statement)
    supabase_dumps.judge(error, chosen)
    assert error.harmless is not fatal, error.why


def _archive(url: str, tmp_path):
    return backup_kinds.read_any_backup(backups.take_backup(url, tmp_path / "bk").path)


def test_a_pg_dump_archive_restores_only_the_chosen_tables_rows(
        demo_db, pg_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH_SERVER_URL", pg_cluster.admin_url)
    backup = _archive(demo_db.url, tmp_path)
    restored = supabase_dumps.restore_to_scratch(backup, "SCRATCH_SERVER_URL",
                                                 tables=["public.journal_entries"])
    try:
        assert restored.script.fatal == [] and restored.script.errors == []
        assert any("only the chosen tables' rows" in p for p in restored.scratch.prepared)
        with restored.scratch.connect() as scratch, demo_db.connect() as live:
            for table, rows in (("public.journal_entries", None), ("public.profiles", 0),
                                ("public.sponsor_chat_messages", 0)):
                expected = live.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                found = scratch.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                assert found == (expected if rows is None else rows), table
            # The chosen table keeps its primary key: the diff and the repair read by it.
            assert scratch.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = "
                                   "'public.journal_entries'::regclass AND contype = 'p'"
                                   ).fetchone()[0] == 1
    finally:
        restored.scratch.drop()


def test_a_chosen_table_with_inheritance_children_gets_their_rows_too(
        demo_db, pg_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH_SERVER_URL", pg_cluster.admin_url)
    with demo_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE public.events (id int PRIMARY KEY, kind text)")
        conn.execute("CREATE TABLE public.events_2025 () INHERITS (public.events)")
        conn.execute("INSERT INTO public.events VALUES (1, 'parent')")
        conn.execute("INSERT INTO public.events_2025 VALUES (2, 'child'), (3, 'child')")
    backup = _archive(demo_db.url, tmp_path)
    restored = supabase_dumps.restore_to_scratch(backup, "SCRATCH_SERVER_URL",
                                                 tables=["public.events"])
    try:
        with restored.scratch.connect() as scratch:
            assert scratch.execute("SELECT count(*) FROM public.events").fetchone()[0] == 3
    finally:
        restored.scratch.drop()
