"""Fault injection without touching the product: a psycopg cursor that can end its own
backend (``pg_terminate_backend`` from another session) just before the N-th statement
matching a pattern, and a :class:`Run` whose sessions use it. The product code then meets
a real server-side kill, exactly as it would if a DBA or an OOM killer ended it."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from playbook.runs import Run


def statement_text(query: object, conn: psycopg.Connection) -> str:
    if isinstance(query, bytes):
        return query.decode(errors="replace")
    if isinstance(query, str):
        return query
    try:
        return query.as_string(conn)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - only for matching
        return repr(query)


@dataclass
class Tripwire:
    """Calls ``action(conn)`` once, before (or, with ``after``, right after) the
    ``occurrence``-th statement (execute or COPY) whose text matches ``pattern``; records
    every statement seen."""

    pattern: str = r"(?!)"  # matches nothing: only record
    occurrence: int = 1
    action: Callable[[psycopg.Connection], None] | None = None
    after: bool = False
    at_commit: bool = False  # fire when the transaction sends COMMIT instead
    seen: list[str] = field(default_factory=list)
    fired_at: str = ""
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, conn: psycopg.Connection, query: object) -> bool:
        """Record the statement; True when it is the one to trip on."""
        text = " ".join(statement_text(query, conn).split())
        with self._lock:
            self.seen.append(text)
            if self.fired_at or not re.search(self.pattern, text):
                return False
            self._count += 1
            if self._count != self.occurrence:
                return False
            self.fired_at = text
        if self.action is not None and not self.after:
            self.action(conn)
        return True

    def done(self, conn: psycopg.Connection, tripped: bool) -> None:
        if tripped and self.after and self.action is not None:
            self.action(conn)


def tripwire_cursor(tripwire: Tripwire) -> type[psycopg.Cursor]:
    class TripwireCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):  # type: ignore[override]
            tripped = tripwire.before(self.connection, query)
            result = super().execute(query, params, **kwargs)
            tripwire.done(self.connection, tripped)
            return result

        def copy(self, statement, params=None, **kwargs):  # type: ignore[override]
            tripwire.before(self.connection, statement)
            return super().copy(statement, params, **kwargs)

    return TripwireCursor


def instrument(conn: psycopg.Connection, tripwire: Tripwire) -> psycopg.Connection:
    conn.cursor_factory = tripwire_cursor(tripwire)
    if tripwire.at_commit:
        # COMMIT of a `with conn.transaction()` block goes through this (private) method;
        # wrapping it on the instance is the only way to act between the last statement
        # and COMMIT whatever the last statement is.
        original = conn._exec_command

        def exec_command(command, *args, **kwargs):
            if command == b"COMMIT" and not tripwire.fired_at and tripwire.action:
                tripwire.fired_at = "COMMIT"
                tripwire.action(conn)
            return original(command, *args, **kwargs)

        conn._exec_command = exec_command  # type: ignore[method-assign]
    return conn


def terminator(admin_url: str) -> Callable[[psycopg.Connection], None]:
    """An action that ends the victim's backend from another session and waits until
    the server has really ended it."""

    def kill(victim: psycopg.Connection) -> None:
        pid = victim.info.backend_pid
        with psycopg.connect(admin_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()[0]

    return kill


class InstrumentedRun(Run):
    """A notebook's Run whose read-write sessions go through ``tripwire``."""

    tripwire: Tripwire

    @classmethod
    def wrap(cls, run: Run, tripwire: Tripwire) -> InstrumentedRun:
        new = cls(**{f: getattr(run, f) for f in run.__dataclass_fields__})
        new.tripwire = tripwire
        return new

    def connect(self, *, read_only: bool | None = None, purpose: str | None = None,
                **kwargs: object) -> psycopg.Connection:
        conn = super().connect(read_only=read_only, purpose=purpose, **kwargs)
        return instrument(conn, self.tripwire)
