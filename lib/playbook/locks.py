"""The playbook's advisory lock: two operators cannot run a destructive step at once.

The lock is transaction-scoped (``pg_try_advisory_xact_lock``), so it is released by the
same COMMIT or ROLLBACK that ends the change; a killed session cannot leave it behind.
"""

from __future__ import annotations

import psycopg

from .errors import LockBusy

# First key of the two-key advisory lock space: ASCII "PB" ("playbook").
LOCK_CLASS = 0x5042


def lock_key(scope: str) -> tuple[int, int]:
    """(class, object) keys for ``scope`` (e.g. a migration's name)."""
    import zlib

    return LOCK_CLASS, zlib.crc32(scope.encode()) & 0x7FFFFFFF


def take_playbook_lock(conn: psycopg.Connection, scope: str) -> None:
    """Take the lock for ``scope`` in the current transaction, or raise LockBusy naming
    the session that holds it. Never waits."""
    classid, objid = lock_key(scope)
    got = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (classid, objid)).fetchone()[0]
    if got:
        return
    holder = conn.execute(
        """
        SELECT a.pid, a.application_name, a.usename, a.client_addr::text,
               to_char(a.xact_start, 'YYYY-MM-DD HH24:MI:SS TZ')
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted
        LIMIT 1
        """,
        (classid, objid),
    ).fetchone()
    who = (
        f"pid {holder[0]} ({holder[1] or 'no application_name'}, user {holder[2]}, "
        f"from {holder[3] or 'local'}, since {holder[4]})"
        if holder else "another session"
    )
    raise LockBusy(
        f"Another operator is already running '{scope}': {who} holds the playbook's lock. "
        "Nothing was changed.",
        next_step="talk to whoever runs it; run again only after it has finished.",
    )
