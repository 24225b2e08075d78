"""The scratch server a backup is restored into, and what it needs to hold a Supabase backup.

Every Supabase database uses ``pgcrypto`` and ``uuid-ossp`` in schema ``extensions``
(table defaults such as ``extensions.uuid_generate_v4()``) and ``pg_stat_statements``.
The embedded default (the pgserver wheel, PostgreSQL 16) ships none of them, Debian's
``postgresql-15`` ships all of contrib. So the scratch server is chosen, not assumed:

- ``scratch_url_env`` names a server: that one (the operator's choice);
- else the local PostgreSQL whose ``extension`` folder has the most of Supabase's
  extensions (Debian's 15 when installed), started as the local cluster ``scratch-<major>``;
- ``PLAYBOOK_SCRATCH_POSTGRES=embedded`` forces the embedded default, a bin folder forces
  that one.

Where an extension is missing, :func:`prepare_database` creates **stand-ins** in schema
``extensions``: ``uuid_generate_v4()`` and ``gen_random_uuid()`` (both return PostgreSQL's
own ``gen_random_uuid()``), and the other functions table definitions name, which raise
if ever called (a scratch copy never needs their values: the restored rows carry them).
The notebook says which server and which stand-ins were used.

Roles the backup names are created as NOLOGIN placeholders (owners and grants then
restore) and removed again when the scratch database is dropped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from . import connecting, localdb
from .pgbinaries import Bindir, candidate_bindirs, server_bindir

SUPABASE_EXTENSIONS = ("pgcrypto", "uuid-ossp", "pg_stat_statements")
CHOICE_ENV = "PLAYBOOK_SCRATCH_POSTGRES"

# Stand-ins for the extension functions a table definition can name (defaults, checks,
# generated columns). uuid functions give real values; the others refuse to run.
_UUID_STAND_INS = (
    ("uuid_generate_v4", "", "uuid", "SELECT pg_catalog.gen_random_uuid()"),
    ("gen_random_uuid", "", "uuid", "SELECT pg_catalog.gen_random_uuid()"),
)
_REFUSING_STAND_INS = {
    "uuid-ossp": (("uuid_generate_v1", ""), ("uuid_generate_v1mc", ""), ("uuid_nil", "")),
    "pgcrypto": (("gen_random_bytes", "integer"), ("gen_salt", "text"),
                 ("crypt", "text, text"), ("digest", "text, text"), ("digest", "bytea, text"),
                 ("hmac", "text, text, text"), ("hmac", "bytea, bytea, text")),
}
_RETURNS = {"uuid_generate_v1": "uuid", "uuid_generate_v1mc": "uuid", "uuid_nil": "uuid",
            "gen_random_bytes": "bytea", "gen_salt": "text", "crypt": "text",
            "digest": "bytea", "hmac": "bytea"}


@dataclass
class ScratchServer:
    """Where scratch databases go, and why that server."""

    url: str = field(repr=False)  # private: carries a password
    major: int
    chosen_because: str
    local_cluster: str = ""  # the local cluster's name when the playbook started it

    def describe(self) -> str:
        return f"PostgreSQL {self.major} at {connecting.summary(self.url)} ({self.chosen_because})"


def extension_folder(bindir: Bindir) -> Path | None:
    """The ``share/extension`` folder of a PostgreSQL bin folder (asked of its pg_config)."""
    pg_config = bindir.path / "pg_config"
    if not pg_config.exists():
        return None
    try:
        share = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True,
                               timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    folder = Path(share) / "extension"
    return folder if folder.is_dir() else None


def available_extensions(bindir: Bindir, names: Sequence[str] = SUPABASE_EXTENSIONS
                         ) -> list[str]:
    """Which of ``names`` this PostgreSQL build ships (its control files)."""
    folder = extension_folder(bindir)
    if folder is None:
        return []
    return [name for name in names if (folder / f"{name}.control").exists()]


# Extensions a scratch copy can do without: stand-ins cover what tables use of these, and
# pg_stat_statements holds no table data.
COVERED = ("pgcrypto", "uuid-ossp", "pg_stat_statements")


def best_local_bindir(extensions: Sequence[str] = ()) -> tuple[Bindir, str]:
    """The local PostgreSQL to start for scratch databases, and why it was chosen: the one
    shipping most of the backup's ``extensions`` that no stand-in covers (a table can have a
    ``vector`` column), then most of Supabase's own, then the newest."""
    servers = [b for b in candidate_bindirs() if (b.path / "initdb").exists()]
    choice = os.environ.get(CHOICE_ENV, "").strip()
    if choice and choice != "embedded":
        wanted = Path(choice).resolve()
        for bindir in servers:
            if bindir.path == wanted:
                return bindir, f"{CHOICE_ENV}={choice}"
    if not servers:
        return server_bindir(), "the only PostgreSQL found"  # raises PostgresNotFound
    if choice == "embedded":
        return servers[0], f"{CHOICE_ENV}=embedded: the embedded default"
    needed = [e for e in dict.fromkeys(extensions) if e not in COVERED and e != "plpgsql"]
    shipped = {b.path: set(available_extensions(b, [*SUPABASE_EXTENSIONS, *needed]))
               for b in servers}
    best = max(servers, key=lambda b: (len(shipped[b.path] & set(needed)),
                                       len(shipped[b.path] & set(SUPABASE_EXTENSIONS)), b.major))
    have = shipped[best.path]
    reasons = []
    if needed:
        found = [e for e in needed if e in have]
        lacking = [e for e in needed if e not in have]
        reasons.append(f"ships {', '.join(found) or 'none'} of the backup's other extensions"
                       + (f" (no local PostgreSQL has {', '.join(lacking)}: tables using them "
                          "cannot be restored here)" if lacking else ""))
    supabase = [e for e in SUPABASE_EXTENSIONS if e in have]
    if len(supabase) == len(SUPABASE_EXTENSIONS):
        reasons.append(f"has {', '.join(supabase)} (Supabase's extensions)")
    else:
        missing = [e for e in SUPABASE_EXTENSIONS if e not in have]
        reasons.append(f"lacks {', '.join(missing)}: stand-ins are created for the functions "
                       "tables use")
    return best, "; ".join(reasons)


def scratch_server(scratch_url_env: str = "", extensions: Sequence[str] = ()) -> ScratchServer:
    """The server for scratch databases: ``scratch_url_env``'s, else the best local one for
    a backup creating ``extensions`` (started if needed). Never DATABASE_URL's server by
    default."""
    if scratch_url_env:
        url = connecting.database_url(scratch_url_env)
        with psycopg.connect(url, connect_timeout=10) as conn:
            major = connecting.server_version(conn)
        return ScratchServer(url, major, f"named by {scratch_url_env}")
    bindir, why = best_local_bindir(extensions)
    name = f"scratch-pg{bindir.major}"
    cluster = localdb.LocalCluster(name, major=bindir.major)
    state = cluster.start()
    return ScratchServer(state.url("postgres"), state.major, why, name)


# --- one scratch database: extensions or stand-ins, placeholder roles -----------------------


def prepare_database(conn: psycopg.Connection) -> list[str]:
    """Schema ``extensions`` with pgcrypto and uuid-ossp, or stand-ins for what the server
    lacks. Returns what was done, one line each, for the notebook."""
    try:
        return _prepare(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        return [f"not prepared ({exc.diag.message_primary}): the scratch server's user is not "
                "a superuser; extension errors below come from that"]


def _prepare(conn: psycopg.Connection) -> list[str]:
    done = []
    conn.execute("CREATE SCHEMA IF NOT EXISTS extensions")
    available = {r[0] for r in conn.execute(
        "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)",
        (list(SUPABASE_EXTENSIONS),)).fetchall()}
    for extension in ("pgcrypto", "uuid-ossp"):
        if extension in available:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA extensions")
                         .format(sql.Identifier(extension)))
            done.append(f"extension {extension} (the server ships it)")
            continue
        names = []
        for name, args, returns, body in _UUID_STAND_INS:
            if (extension == "uuid-ossp") == (name == "uuid_generate_v4"):
                conn.execute(sql.SQL(
                    "CREATE OR REPLACE FUNCTION extensions.{}({}) RETURNS {} LANGUAGE sql "
                    "VOLATILE AS {}").format(sql.Identifier(name), sql.SQL(args),
                                             sql.SQL(returns), sql.Literal(body)))
                names.append(f"{name}()")
        for name, args in _REFUSING_STAND_INS[extension]:
            message = (f"{name}() is a stand-in on this scratch server ({extension} is not "
                       "installed): it cannot compute values")
            body = f"BEGIN RAISE EXCEPTION '%', {_quote(message)}; END"
            conn.execute(sql.SQL(
                "CREATE OR REPLACE FUNCTION extensions.{}({}) RETURNS {} LANGUAGE plpgsql AS {}"
            ).format(sql.Identifier(name), sql.SQL(args), sql.SQL(_RETURNS[name]),
                     sql.Literal(body)))
            names.append(f"{name}({args})")
        done.append(f"stand-ins for {extension} (not on this server): {', '.join(names)}")
    return done


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_placeholder_roles(conn: psycopg.Connection, roles) -> list[str]:
    """Create each missing role as NOLOGIN (cluster-wide, on the scratch server only); a
    concurrent creation is tolerated. Returns the roles created."""
    created = []
    for role in dict.fromkeys(roles):
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            created.append(role)
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass
        except psycopg.errors.InsufficientPrivilege:
            break  # no CREATEROLE: owners and grants naming it fail, counted as harmless
    return created


def remove_placeholder_roles(server_url: str, roles: list[str]) -> list[str]:
    """Drop the placeholder roles this run created (after its scratch database is gone).
    A role still owning something elsewhere (another scratch database in use) is left, and
    named in the result."""
    left = []
    if not roles:
        return left
    with psycopg.connect(localdb.database_url_for(server_url, "postgres"), autocommit=True,
                         connect_timeout=10) as conn:
        for role in roles:
            try:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            except psycopg.Error:
                left.append(role)
    return left
