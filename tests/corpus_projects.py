"""The suite's own Supabase projects (tests/corpus, written for it) brought to life: a
database built from a project's migrations, a week of a chat app's rows, the Supabase
migration history, and row checksums computed by the suite's own SQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from playbook.db import localdb
from playbook.reversal.shadow import build_shadow

CORPUS = Path(__file__).resolve().parent / "corpus"

SUPABASE_HISTORY_TABLE = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
  version text primary key, statements text[], name text);
"""


def new_database(cluster, migrations) -> tuple[str, psycopg.Connection]:
    """A new database on ``cluster`` with ``migrations`` applied as the project's deploys
    did; returns its name and an open session to it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = localdb.create_database(cluster.admin_url, name)
    conn = psycopg.connect(url)
    build_shadow(conn, migrations)
    return name, conn


def record_history(conn, folder) -> None:
    """The rows `supabase db push` leaves in supabase_migrations.schema_migrations."""
    conn.execute(SUPABASE_HISTORY_TABLE)
    for item in folder.files:
        conn.execute("insert into supabase_migrations.schema_migrations values (%s, %s, %s)",
                     (item.version, [item.sql()], item.name))


def chat_rows(conn) -> None:
    """A week of a chat app: users (their profiles made by the trigger), rooms (one seeded
    room renamed, the other deleted), messages replying to later ones, reactions."""
    conn.execute("""
        insert into auth.users (id, email, raw_user_meta_data)
        select ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid,
               'user' || g || '@example.test', jsonb_build_object('full_name', 'User ' || g)
        from generate_series(1, 40) g;
        update public.rooms set title = 'General chat' where slug = 'general';
        delete from public.rooms where slug = 'random';
        insert into public.rooms (slug, title) select 'room-' || g, 'Room ' || g
        from generate_series(1, 5) g;
        insert into public.messages (room_id, author_id, kind, body, sent_at)
        select (select id from public.rooms order by id offset (g % 3) limit 1),
               ('00000000-0000-0000-0000-' || lpad((1 + g % 40)::text, 12, '0'))::uuid,
               (array['text', 'image', 'system'])[1 + g % 3]::public.message_kind,
               repeat('x', g % 50) || ' message ' || g,
               timestamptz '2024-05-01' + g * interval '1 minute'
        from generate_series(1, 500) g;
    """)


def checksums(conn, queries: dict[str, str]) -> dict[str, str]:
    """An MD5 of each query's rows, in a fixed order, by the suite's own SQL."""
    digest = "select md5(coalesce(string_agg(r::text, '|' order by r::text), '')) from ({}) r"
    return {name: conn.execute(digest.format(query)).fetchone()[0]
            for name, query in queries.items()}
