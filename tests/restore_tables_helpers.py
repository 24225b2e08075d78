"""Rehearsal helpers for the restore-tables tests (notebook 31): back up the demo, damage it,
fingerprint tables row by row (checksums the tests compute themselves)."""

from __future__ import annotations

import gzip
from pathlib import Path

import psycopg

from playbook import backups
from playbook.db import pgbinaries

DAMAGED = ("public.journal_entries", "public.virtues", "public.sponsor_visible_memos")


def rows_by_id(url: str, table: str) -> dict[object, str]:
    """id -> md5 of the row's text, computed by the test itself."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return dict(conn.execute(f"SELECT id, md5(t::text) FROM {table} AS t").fetchall())  # noqa: S608


def damage(url: str) -> dict[str, set]:
    """The issue's damage: 10% of journal_entries deleted, virtues changed,
    sponsor_visible_memos emptied, then new rows written after the backup. Returns the
    ids of the new rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM public.journal_entries WHERE id % 10 = 3")
        conn.execute("UPDATE public.virtues SET description = 'CORRUPTED' WHERE id % 3 = 0")
        conn.execute("DELETE FROM public.sponsor_visible_memos")
        new_entries = conn.execute(
            "INSERT INTO public.journal_entries (user_id, virtue_id, title, body) "
            "SELECT user_id, virtue_id, 'after the backup', 'new' FROM public.journal_entries "
            "ORDER BY id LIMIT 5 RETURNING id").fetchall()
        new_memos = conn.execute(
            "INSERT INTO public.sponsor_visible_memos (connection_id, practitioner_user_id, memo) "
            "SELECT id, practitioner_user_id, 'written after the backup' "
            "FROM public.sponsor_connections ORDER BY id LIMIT 3 RETURNING id").fetchall()
    return {"public.journal_entries": {r[0] for r in new_entries},
            "public.sponsor_visible_memos": {r[0] for r in new_memos}}


def _tool(name: str, major: int) -> Path:
    return pgbinaries.client_program(name, major)


def supabase_plain_dump(url: str, major: int, folder: Path) -> Path:
    """A dashboard-style download: pg_dumpall --roles-only, then pg_dump --create
    --format=plain (with \\connect), gzipped."""
    folder.mkdir(parents=True, exist_ok=True)
    roles = backups.run_tool(_tool("pg_dumpall", major), ["--roles-only", "--no-password"],
                             url=url)
    assert roles.returncode == 0, roles.stderr
    data = backups.run_tool(_tool("pg_dump", major), ["--format=plain", "--create",
                                                     "--no-password"], url=url)
    assert data.returncode == 0, data.stderr
    path = folder / "db_cluster-01-01-2025@00-00-00.backup.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(roles.stdout)
        # What Supabase's dumps carry and plain PostgreSQL lacks: harmless on restore.
        out.write('CREATE ROLE postgres;\nCREATE EXTENSION IF NOT EXISTS "pg_graphql";\n'
                  "GRANT USAGE ON SCHEMA public TO supabase_missing_role;\n")
        out.write(data.stdout)
        out.write("--\n-- PostgreSQL database cluster dump complete\n--\n\n")
    return path


def supabase_trio(url: str, major: int, folder: Path) -> Path:
    """roles.sql / schema.sql / data.sql as `supabase db dump` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, program, args in (
        ("roles.sql", "pg_dumpall", ["--roles-only"]),
        ("schema.sql", "pg_dump", ["--schema-only"]),
        ("data.sql", "pg_dump", ["--data-only"]),
    ):
        result = backups.run_tool(_tool(program, major), [*args, "--no-password",
                                                          f"--file={folder / name}"], url=url)
        assert result.returncode == 0, result.stderr
    return folder


def truncated_copy(path: Path, target: Path) -> Path:
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target
