"""The demo application the procedure document talks about, so every step can really run.

A small Supabase-like schema (``auth.users``, profiles, virtues, journal entries), the
coaching-tables migration on top of it, deterministic sample data of any size, and
simulators for the incidents the document rolls back from.
"""

from __future__ import annotations

from pathlib import Path

import pglast
import psycopg
import yaml
from pglast import ast
from psycopg import sql

from ..errors import ConfigurationError, PreconditionFailed

SQL_DIR = Path(__file__).resolve().parent / "sql"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# (schema, table) in load order; the coaching tables exist only after the migration.
APPLICATION_TABLES = (
    ("auth", "users"),
    ("public", "profiles"),
    ("public", "virtues"),
    ("public", "journal_entries"),
)
COACHING_TABLES = (
    ("public", "sponsor_connections"),
    ("public", "sponsor_chat_messages"),
    ("public", "sponsor_visible_memos"),
)
SPONSOR_CONNECTIONS = sql.Identifier("public", "sponsor_connections")

VIRTUES = (
    ("Courage", "Acting rightly in the face of fear."),
    ("Temperance", "Moderation in desires and pleasures."),
    ("Justice", "Giving each their due."),
    ("Prudence", "Practical wisdom in choosing the good."),
    ("Honesty", "Truthfulness in word and deed."),
    ("Humility", "Seeing oneself accurately."),
    ("Patience", "Bearing difficulty without complaint."),
    ("Gratitude", "Recognising the good received."),
    ("Compassion", "Sharing in the suffering of others."),
    ("Integrity", "Being the same person in every room."),
    ("Perseverance", "Continuing in the good despite obstacles."),
    ("Generosity", "Giving freely of oneself."),
)

# Every timestamp is derived from this instant, so two loads are identical. Users sign
# up over the first days of January, the coaching data starts on the 15th and runs to
# the end of the month: a backup or migration time such as 2025-01-20 splits them.
EPOCH = "2025-01-01 00:00:00+00"
MAX_USERS = 20_000

SIMULATORS: dict[str, str] = {
    "sequence-behind": "Set the sequence of public.sponsor_connections.id back below MAX(id): "
    "inserts with a default id fail with a duplicate key.",
    "sequence-default": "Drop the default of public.sponsor_connections.id: inserts with a "
    "default id fail with a not-null violation.",
}


def apply_sql_file(conn: psycopg.Connection, path: Path) -> None:
    """Execute the whole SQL file at ``path`` in one transaction (a savepoint if one is open).

    The file goes to the server as one simple-protocol query, so ``$$`` bodies and ``%``
    need no escaping. Files that control transactions themselves are refused: their
    COMMIT would end the caller's transaction behind its back.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise ConfigurationError(
            f"{path.name} is not valid SQL ({exc}). Nothing was changed."
        ) from None
    if any(isinstance(raw.stmt, ast.TransactionStmt) for raw in statements):
        raise ConfigurationError(
            f"{path.name} contains BEGIN/COMMIT/ROLLBACK. Nothing was changed.",
            next_step="remove the transaction statements; the caller runs it in a transaction.",
        )
    with conn.transaction(), conn.cursor() as cur:
        # prepare=False: a multi-statement string cannot be a prepared statement.
        cur.execute(text, prepare=False)  # type: ignore[arg-type]  # a file, not a literal


def create_application(conn: psycopg.Connection) -> None:
    """Create the demo application (roles, auth schema, profiles, virtues, journal entries)."""
    apply_sql_file(conn, SQL_DIR / "application.sql")


def apply_coaching_migration(conn: psycopg.Connection) -> None:
    """Apply the coaching-tables migration (the deploy script of its change set)."""
    change_set = MIGRATIONS_DIR / "coaching_tables"
    deploy = yaml.safe_load((change_set / "migration.yaml").read_text())["deploy"]
    apply_sql_file(conn, change_set / deploy)


def _exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    qualified = sql.Identifier(schema, table).as_string(conn)
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [qualified]).fetchone()[0]


def _count(conn: psycopg.Connection, schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    return conn.execute(query).fetchone()[0]


def application_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Row counts of the application tables that exist, keyed ``schema.table``."""
    return {
        f"{schema}.{table}": _count(conn, schema, table)
        for schema, table in APPLICATION_TABLES + COACHING_TABLES
        if _exists(conn, schema, table)
    }


# Sample data, one INSERT ... SELECT per table. Ids are md5 of a counter (users) or the
# counter itself (everything else); a connection's practitioner and sponsor are pure
# arithmetic on its number, so messages and memos can join back to it.
_SAMPLE_SQL = {
    "auth.users": """
        INSERT INTO auth.users (id, email, encrypted_password, created_at, last_sign_in_at)
        SELECT md5('user-' || i)::uuid,
               'user' || i || '@example.com',
               '$2a$10$' || md5('password-' || i),  -- shaped like bcrypt, not a real hash
               %(epoch)s::timestamptz + (i - 1) * (interval '9 days' / %(users)s),
               CASE WHEN mod(i, 4) <> 0
                    THEN %(epoch)s::timestamptz + interval '10 days' + i * interval '1 hour' END
        FROM generate_series(1, %(users)s) AS i""",
    # User 1 is the admin, every fifth user a sponsor, the others practitioners.
    "public.profiles": """
        INSERT INTO public.profiles (id, username, full_name, role, created_at, updated_at)
        SELECT u.id, 'user' || i, 'Demo User ' || i,
               CASE WHEN i = 1 THEN 'admin' WHEN mod(i, 5) = 0 THEN 'sponsor'
                    ELSE 'practitioner' END,
               u.created_at, u.created_at
        FROM generate_series(1, %(users)s) AS i
        JOIN auth.users u ON u.id = md5('user-' || i)::uuid""",
    "public.virtues": """
        INSERT INTO public.virtues (name, description, created_at)
        SELECT v.name, v.description, %(epoch)s::timestamptz
        FROM unnest(%(virtue_names)s::text[], %(virtue_descriptions)s::text[])
             AS v(name, description)""",
    "public.journal_entries": """
        INSERT INTO public.journal_entries (id, user_id, virtue_id, title, body, created_at,
                                            updated_at)
        SELECT j, md5('user-' || (1 + mod(j - 1, %(users)s)))::uuid,
               v.ids[1 + mod(j - 1, cardinality(v.ids))],
               'Entry ' || j, 'Reflection number ' || j || '.',
               %(epoch)s::timestamptz + interval '9 days'
                 + (j - 1) * (interval '22 days' / %(journal_entries)s),
               NULL
        FROM generate_series(1, %(journal_entries)s) AS j,
             (SELECT array_agg(id ORDER BY id) AS ids FROM public.virtues) AS v""",
    # Practitioner k (k >= 1) is the k-th user that is neither a sponsor nor user 1.
    "public.sponsor_connections": """
        INSERT INTO public.sponsor_connections (id, practitioner_user_id, sponsor_user_id,
                                                status, created_at, updated_at)
        SELECT c, md5('user-' || ((k / 4) * 5 + mod(k, 4) + 1))::uuid,
               md5('user-' || (5 * (1 + mod(c - 1, %(sponsors)s))))::uuid,
               CASE mod(c, 10) WHEN 0 THEN 'ended' WHEN 1 THEN 'pending' ELSE 'active' END,
               at, at
        FROM generate_series(1, %(connections)s) AS c,
             LATERAL (SELECT 1 + mod(c - 1, %(practitioners)s) AS k,
                             %(epoch)s::timestamptz + interval '14 days'
                               + (c - 1) * (interval '6 days' / %(connections)s) AS at) AS x""",
    "public.sponsor_visible_memos": """
        INSERT INTO public.sponsor_visible_memos (id, connection_id, practitioner_user_id, memo,
                                                  created_at, updated_at)
        SELECT m, c.id, c.practitioner_user_id, 'Shared memo ' || m || '.', at, at
        FROM generate_series(1, %(memos)s) AS m
        JOIN public.sponsor_connections c ON c.id = 1 + mod(m - 1, %(connections)s),
             LATERAL (SELECT c.created_at
                               + (m - 1) * (interval '10 days' / %(memos)s) AS at) AS x""",
    # Messages alternate between the two participants; every third one is unread.
    "public.sponsor_chat_messages": """
        INSERT INTO public.sponsor_chat_messages (id, connection_id, sender_id, body,
                                                  created_at, read_at)
        SELECT i, c.id,
               CASE WHEN mod(i, 2) = 0 THEN c.sponsor_user_id ELSE c.practitioner_user_id END,
               'Message ' || i || '.', at,
               CASE WHEN mod(i, 3) <> 0 THEN at + interval '1 hour' END
        FROM generate_series(1, %(messages)s) AS i
        JOIN public.sponsor_connections c ON c.id = 1 + mod(i - 1, %(connections)s),
             LATERAL (SELECT c.created_at
                               + (i - 1) * (interval '10 days' / %(messages)s) AS at) AS x""",
}


def sample_sizes(rows: int) -> dict[str, int]:
    """How many rows each table gets for ``rows`` chat messages."""
    users = min(MAX_USERS, max(20, rows // 100))
    return {
        "users": users,
        "sponsors": users // 5,
        "practitioners": users - users // 5 - 1,  # neither a sponsor nor the admin
        "virtues": len(VIRTUES),
        "journal_entries": max(50, rows // 2),
        "connections": max(10, rows // 10),
        "memos": max(10, rows // 5),
        "messages": rows,
    }


def _reset_sequences(conn: psycopg.Connection, schema: str, table: str) -> None:
    """Move every sequence owned by a column of the table past that column's MAX."""
    owned = conn.execute(
        """SELECT a.attname, pg_get_serial_sequence(a.attrelid::regclass::text, a.attname)
           FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
        [sql.Identifier(schema, table).as_string(conn)],
    ).fetchall()
    for column, sequence in owned:
        if sequence is None:
            continue
        conn.execute(
            sql.SQL("SELECT setval(%s::regclass, COALESCE(MAX({}), 0) + 1, false) FROM {}").format(
                sql.Identifier(column), sql.Identifier(schema, table)
            ),
            [sequence],
        )


def load_sample_data(conn: psycopg.Connection, rows: int = 200) -> dict[str, int]:
    """Fill the empty demo application with deterministic data: ``rows`` chat messages and
    proportionate users, journal entries, connections and memos (see ``sample_sizes``).

    The coaching tables are filled only if the migration has been applied. Returns the
    row counts per table.
    """
    if rows < 0:
        raise ValueError(f"rows must be zero or more, got {rows}")
    tables = [t for t in APPLICATION_TABLES + COACHING_TABLES if _exists(conn, *t)]
    if len(tables) < len(APPLICATION_TABLES):
        raise PreconditionFailed(
            "The demo application does not exist in this database. Nothing was loaded.",
            next_step="run create_application() first.",
        )
    filled = [f"{s}.{t}" for s, t in tables if _count(conn, s, t)]
    if filled:
        raise PreconditionFailed(
            f"Sample data goes into empty tables, but {', '.join(filled)} already hold rows. "
            "Nothing was loaded.",
            next_step="load into a freshly created demo database.",
        )
    params: dict[str, object] = {
        **sample_sizes(rows),
        "epoch": EPOCH,
        "virtue_names": [name for name, _ in VIRTUES],
        "virtue_descriptions": [description for _, description in VIRTUES],
    }
    with conn.transaction():
        previous = conn.execute("SHOW session_replication_role").fetchone()[0]
        # "replica" skips the foreign-key triggers (the data is consistent by construction),
        # which more than halves the load time. Only superusers may set it; others just wait.
        try:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
            replica = True
        except psycopg.errors.InsufficientPrivilege:
            replica = False
        for schema, table in tables:  # parents before children
            conn.execute(_SAMPLE_SQL[f"{schema}.{table}"], params)  # type: ignore[arg-type]
            _reset_sequences(conn, schema, table)
        if replica:
            # SET LOCAL in a savepoint lasts until the outer transaction ends: restore it.
            conn.execute("SELECT set_config('session_replication_role', %s, true)", [previous])
        for schema, table in tables:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
    return application_counts(conn)


def break_application(conn: psycopg.Connection, kind: str) -> str:
    """Cause the incident ``kind`` (a key of SIMULATORS); returns what was broken."""
    if kind not in SIMULATORS:
        raise ValueError(f"unknown incident {kind!r}; known: {', '.join(sorted(SIMULATORS))}")
    if not _exists(conn, "public", "sponsor_connections"):
        raise PreconditionFailed(
            "public.sponsor_connections does not exist. Nothing was broken.",
            next_step="apply the coaching-tables migration first.",
        )
    with conn.transaction():
        if kind == "sequence-default":
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN id DROP DEFAULT").format(SPONSOR_CONNECTIONS)
            )
            return (
                "public.sponsor_connections.id has no default any more: inserts that leave "
                "id out fail with a not-null violation."
            )
        sequence, lowest, highest = conn.execute(
            sql.SQL("SELECT pg_get_serial_sequence(%s, 'id'), MIN(id), MAX(id) FROM {}").format(
                SPONSOR_CONNECTIONS
            ),
            [SPONSOR_CONNECTIONS.as_string(conn)],
        ).fetchone()
        if sequence is None or lowest is None:
            raise PreconditionFailed(
                "public.sponsor_connections.id owns no sequence, or the table is empty, so no "
                "sequence can fall behind. Nothing was broken.",
                next_step="load the sample data into a freshly migrated demo database.",
            )
        # is_called = false: the very next nextval() hands out the smallest existing id.
        conn.execute("SELECT setval(%s::regclass, %s, false)", [sequence, lowest])
        return (
            f"{sequence} set back to {lowest} while MAX(id) is {highest}: inserts with a "
            "default id fail with a duplicate key."
        )
