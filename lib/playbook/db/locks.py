"""The playbook's advisory lock, and who holds the locks a step could not take.

The lock is transaction-scoped (``pg_try_advisory_xact_lock``), so it is released by the
same COMMIT or ROLLBACK that ends the change. A run killed mid-step can still leave its
session behind on the server (an orphaned backend, idle in transaction or waiting) that
keeps the lock and its table locks until the server notices: a rerun then names that
session (pid, application_name, state and age, what it holds) and how to end it, and
:func:`end_stale_backend` ends it when the operator asks for it by pid, only if it is
one of the playbook's own sessions.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import psycopg
from psycopg import conninfo

from ..errors import LockBusy, PreconditionFailed

# First key of the two-key advisory lock space: ASCII "PB" ("playbook").
LOCK_CLASS = 0x5042
# Every session the playbook opens is named ``playbook:<notebook>[:<step>]``
# (connecting.connect), which is how its own orphans are told from the application's.
OWN_APPLICATION_PREFIX = "playbook:"
_HOLDERS_SHOWN = 5


def lock_key(scope: str) -> tuple[int, int]:
    """(class, object) keys for ``scope`` (e.g. a migration's name)."""
    return LOCK_CLASS, zlib.crc32(scope.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class LockHolder:
    """Another session holding a lock a step needs, as pg_stat_activity shows it."""

    pid: int
    application_name: str
    user: str
    state: str
    age_seconds: int
    holds: str

    @property
    def is_playbooks_own(self) -> bool:
        return self.application_name.startswith(OWN_APPLICATION_PREFIX)

    def describe(self) -> str:
        holding = f", holding {self.holds}" if self.holds else ""
        return (f"pid {self.pid} ({self.application_name or 'no application_name'}, user "
                f"{self.user}, {self.state or 'state unknown'} for {_age(self.age_seconds)}"
                f"{holding})")


def _age(seconds: int) -> str:
    minutes, seconds = divmod(max(seconds, 0), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


_HOLDERS = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
       coalesce(a.state, ''),
       extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start))::bigint,
       string_agg(DISTINCT CASE WHEN l.locktype = 'advisory' THEN 'the playbook''s lock'
                                ELSE l.mode || ' on ' || l.relation::regclass::text END,
                  ', ')
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN pg_class c ON l.locktype = 'relation' AND c.oid = l.relation
WHERE l.granted AND a.pid <> pg_backend_pid() AND a.pid <> %(me)s
  AND a.datname = current_database()
  AND ((l.locktype = 'advisory' AND l.classid = %(class)s
        AND (%(object)s::bigint IS NULL OR l.objid = %(object)s::bigint))
       OR (%(object)s::bigint IS NULL AND l.database = (SELECT oid FROM pg_database
                                                        WHERE datname = current_database())
           AND c.relkind IN ('r', 'p', 'm', 'S', 'v') AND c.oid >= 16384))
GROUP BY 1, 2, 3, 4, 5
ORDER BY (coalesce(a.application_name, '') LIKE 'playbook:%%') DESC, 5 DESC
LIMIT %(limit)s
"""


def lock_holders(conn: psycopg.Connection, *, exclude_pid: int | None = None,
                 scope: str | None = None) -> list[LockHolder]:
    """Other sessions of this database holding the playbook's lock (of ``scope`` only,
    when given) or locks on its tables, the playbook's own sessions first, then the
    oldest transactions."""
    objid = lock_key(scope)[1] if scope else None
    rows = conn.execute(_HOLDERS, {"me": exclude_pid or 0, "class": LOCK_CLASS,
                                   "object": objid, "limit": _HOLDERS_SHOWN}).fetchall()
    return [LockHolder(*row) for row in rows]


def holders_seen_from(conn: psycopg.Connection) -> list[LockHolder]:
    """:func:`lock_holders`, asked from a second short session to ``conn``'s server: after
    a lock timeout ``conn``'s own transaction is aborted and can answer nothing."""
    params = conn.info.get_parameters()
    if conn.info.password:
        params["password"] = conn.info.password
    with psycopg.connect(conninfo.make_conninfo("", **params), autocommit=True,
                         connect_timeout=5, application_name="playbook:lock-holders") as side:
        side.execute("SET statement_timeout = '5s'")
        return lock_holders(side, exclude_pid=conn.info.backend_pid)


def what_to_do(holders: list[LockHolder]) -> str:
    """The next step for an operator whose step waited on ``holders``."""
    own = [h for h in holders if h.is_playbooks_own]
    if own:
        pid = own[0].pid
        return (f"pid {pid} is one of the playbook's own sessions, most likely left by a "
                f"killed run: end it with SELECT pg_terminate_backend({pid}); (or "
                f"`playbook locks --end {pid}`), then run again.")
    if holders:
        return ("wait for it to finish, or end it with SELECT pg_terminate_backend(pid) if "
                "you know what it is, then run again.")
    return ("find the blocker in pg_stat_activity / pg_locks, wait or end it, and run again.")


def take_playbook_lock(conn: psycopg.Connection, scope: str) -> None:
    """Take the lock for ``scope`` in the current transaction, or raise LockBusy naming
    the session that holds it. Never waits."""
    classid, objid = lock_key(scope)
    got = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (classid, objid)).fetchone()[0]
    if got:
        return
    holders = lock_holders(conn, scope=scope)
    who = "; ".join(h.describe() for h in holders) or "another session"
    raise LockBusy(
        f"Another operator is already running '{scope}', or a killed run left its session "
        f"behind: {who} holds the playbook's lock. Nothing was changed.",
        next_step="talk to whoever runs it and run again after it has finished; if nobody "
        "does, " + what_to_do(holders),
    )


def end_stale_backend(conn: psycopg.Connection, pid: int) -> LockHolder:
    """End session ``pid`` of this database with ``pg_terminate_backend``, only if it is
    one of the playbook's own sessions (never the application's, never ``conn``'s own);
    its transaction is rolled back by the server. Returns what it was."""
    if pid == conn.info.backend_pid:
        raise PreconditionFailed(f"pid {pid} is this very session. Nothing was ended.")
    row = conn.execute(
        """SELECT pid, coalesce(application_name, ''), coalesce(usename::text, ''),
                  coalesce(state, ''),
                  extract(epoch FROM now() - coalesce(xact_start, backend_start))::bigint
           FROM pg_stat_activity WHERE pid = %s AND datname = current_database()""",
        (pid,)).fetchone()
    if row is None:
        raise PreconditionFailed(
            f"No session with pid {pid} is connected to this database. Nothing was ended.",
            next_step="run the step again; if it still waits, read the pid it names.")
    holder = LockHolder(*row, holds="")
    if not holder.is_playbooks_own:
        raise PreconditionFailed(
            f"pid {pid} is not one of the playbook's sessions (application_name "
            f"{holder.application_name or '(none)'!r}); the playbook ends only its own. "
            "Nothing was ended.",
            next_step="find out whose session it is; end it yourself with "
            f"SELECT pg_terminate_backend({pid}) only if you know it may go.")
    if not conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
        raise PreconditionFailed(
            f"pid {pid} could not be ended (its user may not be ours). Nothing was ended.",
            next_step=f"ask a superuser to run SELECT pg_terminate_backend({pid}).")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
        time.sleep(0.1)
    return holder
