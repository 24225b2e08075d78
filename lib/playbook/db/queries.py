"""Running SQL and showing results as tables.

Statements are ``psycopg.sql.Composable`` objects or constant strings; values always
travel as parameters. Errors PostgreSQL raises for reasons an operator can act on are
translated into the playbook's exceptions (see :func:`translated_errors`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from ..errors import ConnectionFailed, LockBusy, ObjectNotFound, PlaybookError
from .locks import LockHolder, holders_seen_from, what_to_do

Query = str | sql.Composable


def table(conn: psycopg.Connection, query: Query, params: Sequence[Any] | dict | None = None
          ) -> pd.DataFrame:
    """The result of ``query`` as a pandas table (column names kept)."""
    with translated_errors(conn), conn.cursor() as cur:
        cur.execute(query, params)
        columns = [c.name for c in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def value(conn: psycopg.Connection, query: Query, params: Sequence[Any] | dict | None = None
          ) -> Any:
    """The first column of the first row, or None."""
    with translated_errors(conn):
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def as_text(statement: sql.Composable, conn: psycopg.Connection | None = None) -> str:
    """The statement as it will be sent: review mode shows exactly this."""
    return statement.as_string(conn)


def run_script(conn: psycopg.Connection, path: Path) -> None:
    """Execute a whole SQL file (functions with $$ bodies included) in the current
    transaction, with the simple query protocol."""
    text = Path(path).read_text()
    with translated_errors(conn), conn.cursor() as cur:
        cur.execute(text.encode(), prepare=False)


@contextmanager
def translated_errors(conn: psycopg.Connection | None = None) -> Iterator[None]:
    """Turn PostgreSQL errors an operator can act on into the playbook's own. Given the
    session, a lock timeout names the sessions holding the locks (see locks.py)."""
    try:
        yield
    except PlaybookError:
        raise
    except pgerrors.LockNotAvailable as exc:
        holders = _lock_holders(conn)
        who = ("; ".join(h.describe() for h in holders) if holders
               else "another session holds it")
        raise LockBusy(
            f"A lock could not be taken within lock_timeout ({_first_line(exc)}): {who}. "
            "The transaction was rolled back; nothing was changed.",
            next_step=what_to_do(holders),
        ) from None
    except pgerrors.UndefinedTable as exc:
        raise ObjectNotFound(
            f"A table the step needs does not exist ({_first_line(exc)}). Nothing was changed.",
            next_step="check that DATABASE_URL points at the right database and the table "
            "name; if it was already rolled back, the rollback is not needed.",
        ) from None
    except pgerrors.InsufficientPrivilege as exc:
        raise PlaybookError(
            f"The database user lacks a privilege ({_first_line(exc)}). Nothing was changed.",
            next_step="connect as the table owner or a role with the needed privileges.",
        ) from None
    except pgerrors.QueryCanceled as exc:
        raise PlaybookError(
            f"A statement ran past statement_timeout and was cancelled ({_first_line(exc)}). "
            "The transaction was rolled back.",
            next_step="look for long-running queries or locks, then run again.",
        ) from None
    except (pgerrors.AdminShutdown, psycopg.OperationalError) as exc:
        raise ConnectionFailed(
            f"The connection to the database was lost ({_first_line(exc)}). An open "
            "transaction is rolled back by the server; nothing it did was kept.",
            next_step="check the server, then run the step again from the top (it is safe to "
            "re-run).",
        ) from None


def _lock_holders(conn: psycopg.Connection | None) -> list[LockHolder]:
    if conn is None:
        return []
    try:
        return holders_seen_from(conn)
    except psycopg.Error:  # naming the blocker is a courtesy: never hide the lock error
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
