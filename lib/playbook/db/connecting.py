"""Connecting to the target database without ever handling a secret in the open.

Notebooks receive the *name* of an environment variable (``database_url_env``), never
a connection string, so a password cannot land in papermill's parameter metadata. The
connection string may also be empty when libpq's own ``PG*`` variables, a service file
or ``.pgpass`` describe the target. Everything shown to the operator goes through
:func:`summary` or :func:`redact`, which never print a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import conninfo

from ..errors import ConfigurationError, ConnectionFailed, UnsafeConnection

DEFAULT_URL_ENV = "DATABASE_URL"
# Ports of Supabase's connection pooler (Supavisor/PgBouncer); 6543 is transaction mode.
TRANSACTION_POOLER_PORTS = {"6543"}
LIBPQ_TARGET_VARIABLES = ("PGHOST", "PGSERVICE", "PGDATABASE", "PGPORT", "PGUSER")


# The longest a step may wait for a lock. While a DROP waits for its ACCESS EXCLUSIVE
# lock, every query of the application on that table queues behind it: a longer wait is
# an outage, and 0 (PostgreSQL's "wait forever") is refused outright.
MAX_LOCK_TIMEOUT = "30s"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?")
_MILLISECONDS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000,
                 "d": 86_400_000, None: 1}


def lock_timeout_setting(value: object) -> str:
    """``value`` (``"2s"``, ``"300ms"``, ``1500`` = ms, as PostgreSQL reads it) as the
    lock_timeout to set, in milliseconds; refused before anything connects when it is 0
    (wait forever), above MAX_LOCK_TIMEOUT, or not a duration."""
    text = "" if isinstance(value, bool) else str(value).strip()
    match = _DURATION.fullmatch(text)
    limit = _to_milliseconds(_DURATION.fullmatch(MAX_LOCK_TIMEOUT))
    milliseconds = _to_milliseconds(match) if match else None
    if milliseconds is None or milliseconds < 1 or milliseconds > limit:
        why = (
            "is not a duration PostgreSQL reads (a number with us, ms, s, min, h or d)"
            if milliseconds is None else
            "is 0 or rounds to 0, which means wait forever: a DROP would hold the "
            "application's queries behind it"
            if milliseconds < 1 else f"is above the playbook's maximum of {MAX_LOCK_TIMEOUT}"
        )
        raise ConfigurationError(
            f"lock_timeout {value!r} {why}. Nothing was changed.",
            next_step=f"pass a duration from 1ms to {MAX_LOCK_TIMEOUT}, e.g. lock_timeout "
            "2s (the default); if a lock is busy, find its holder rather than wait longer.",
        )
    return f"{round(milliseconds)}ms"


def bulk_step_limits(conn: psycopg.Connection, lock_timeout: object) -> None:
    """For the open transaction of a bulk step (an export, a drop, a re-import, a reverse
    plan): every lock wait bounded by ``lock_timeout``, but no statement cut short by the
    session's ``statement_timeout``, a limit meant for interactive queries (a COPY or an
    index build of ten million rows runs for minutes, and cutting it rolls the step back)."""
    conn.execute("SELECT set_config('lock_timeout', %s, true), "
                 "set_config('statement_timeout', '0', true)",
                 (lock_timeout_setting(lock_timeout),))


def _to_milliseconds(match: re.Match | None) -> float | None:
    return float(match.group(1)) * _MILLISECONDS[match.group(2)] if match else None


@dataclass(frozen=True)
class SessionLimits:
    """Limits every session states, so no step waits forever or hides who it is."""

    statement_timeout: str = "60s"
    lock_timeout: str = "2s"
    idle_in_transaction_session_timeout: str = "5min"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lock_timeout", lock_timeout_setting(self.lock_timeout))


def database_url(env_name: str = DEFAULT_URL_ENV) -> str:
    """The connection string held by ``env_name``; "" when libpq's PG* variables or a
    service name describe the target instead."""
    if not env_name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):
        raise ConfigurationError(
            f"database_url_env must be the name of an environment variable, got {env_name!r}.",
            next_step="pass e.g. database_url_env='DATABASE_URL' and export DATABASE_URL.",
        )
    value = os.environ.get(env_name)
    if value:
        return value.strip()
    if any(os.environ.get(name) for name in LIBPQ_TARGET_VARIABLES):
        return ""
    raise ConfigurationError(
        f"The environment variable {env_name} is not set and no PGHOST/PGSERVICE/PGDATABASE "
        "describes a server. Nothing was changed.",
        next_step=(
            f"export {env_name}=postgresql://USER@HOST:PORT/DBNAME (password in ~/.pgpass or "
            "PGPASSWORD), or run `playbook db start` for the embedded demo server."
        ),
    )


def parse(url: str) -> dict[str, str]:
    """The libpq keywords of ``url`` (URI or key=value form); raises ConfigurationError
    with the secret left out of the message."""
    try:
        return conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        detail = redact(str(exc), url)
        raise ConfigurationError(
            f"The connection string is malformed ({detail}). Nothing was changed.",
            next_step="check the URL's form: postgresql://user@host:port/dbname",
        ) from None


def summary(url: str) -> str:
    """host, port, user and database of ``url`` (PG* variables filling gaps); never the
    password."""
    params = parse(url)
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    user = params.get("user") or os.environ.get("PGUSER") or "(default user)"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
    service = params.get("service") or os.environ.get("PGSERVICE")
    text = f"host={host} port={port} user={user} dbname={dbname}"
    return f"service={service} {text}" if service else text


def secrets_of(url: str) -> list[str]:
    """Every secret that could leak from ``url`` and the environment."""
    found = []
    try:
        password = conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
        match = re.search(r"://[^:/@]*:([^@]*)@", url)
        if match:
            password = match.group(1)
    for candidate in (password, os.environ.get("PGPASSWORD")):
        if candidate:
            found.append(candidate)
    return found


def redact(text: str, url: str = "") -> str:
    """``text`` with every password of ``url``/PGPASSWORD and any URL password replaced."""
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    # Any other URI-embedded password, e.g. inside a driver's error message.
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def is_transaction_pooler(url: str) -> bool:
    """True for Supabase's transaction-mode pooler, where session state does not hold."""
    params = parse(url)
    port = params.get("port") or os.environ.get("PGPORT") or ""
    return port in TRANSACTION_POOLER_PORTS


def require_session_connection(url: str) -> None:
    """Refuse destructive work through a transaction-mode pooler."""
    if is_transaction_pooler(url):
        raise UnsafeConnection(
            f"{summary(url)} is a transaction-mode pooler (port 6543): advisory locks, "
            "lock_timeout and session settings do not hold there, so destructive steps are "
            "refused. Nothing was changed.",
            next_step="use the direct connection (port 5432) or the session pooler for this run.",
        )


def connect(
    env_name: str = DEFAULT_URL_ENV,
    *,
    purpose: str = "playbook",
    read_only: bool = False,
    limits: SessionLimits | None = None,
    autocommit: bool = False,
    url: str | None = None,
) -> psycopg.Connection:
    """Open a session to the target with its limits stated.

    ``read_only`` makes every transaction of the session read-only (review mode): a
    write attempted there fails with ReadOnlySqlTransaction.
    """
    url = database_url(env_name) if url is None else url
    parse(url)
    limits = limits or SessionLimits()
    try:
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            application_name=f"playbook:{purpose}"[:63],
            connect_timeout=int(os.environ.get("PLAYBOOK_CONNECT_TIMEOUT", "10")),
        )
    except psycopg.OperationalError as exc:
        reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "", url)
        raise ConnectionFailed(
            f"Could not connect to {summary(url)}: {reason}. Nothing was changed.",
            next_step="check the server is up, the host/port/database in the URL, and the "
            "credentials (~/.pgpass or PGPASSWORD).",
        ) from None
    with conn.cursor() as cur:
        for setting, value in (
            ("statement_timeout", limits.statement_timeout),
            ("lock_timeout", limits.lock_timeout),
            ("idle_in_transaction_session_timeout", limits.idle_in_transaction_session_timeout),
            ("default_transaction_read_only", "on" if read_only else "off"),
        ):
            cur.execute("SELECT set_config(%s, %s, false)", (setting, value))
    if not autocommit:
        conn.commit()
    return conn


@contextmanager
def session(
    env_name: str = DEFAULT_URL_ENV, **kwargs: object
) -> Iterator[psycopg.Connection]:
    """``connect`` as a context manager that always closes the session."""
    conn = connect(env_name, **kwargs)  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        conn.close()


def current_database(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_database()").fetchone()[0]


def server_version(conn: psycopg.Connection) -> int:
    """Major version of the server, e.g. 15 or 16."""
    return conn.info.server_version // 10000


def describe(conn: psycopg.Connection) -> dict[str, str]:
    """What the operator needs to see to know where they are; no password."""
    info = conn.info
    return {
        "host": info.host,
        "port": str(info.port),
        "user": info.user,
        "database": info.dbname,
        "server": conn.execute("SHOW server_version").fetchone()[0],
        "read_only": conn.execute("SHOW default_transaction_read_only").fetchone()[0],
        "application_name": conn.execute("SHOW application_name").fetchone()[0],
    }
