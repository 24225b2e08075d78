"""Verification: checks with an expected and an observed value, shown as pass/fail.

The procedure document's verification queries become :class:`Check` objects so a
notebook can show them as a table and stop on the first failure with the evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import psycopg
from psycopg import sql

from .errors import VerificationFailed
from .names import QualifiedName, table_exists

# The application's own tables (the document's "other data ... unaffected").
APPLICATION_TABLES = (
    QualifiedName("auth", "users"),
    QualifiedName("public", "profiles"),
    QualifiedName("public", "virtues"),
    QualifiedName("public", "journal_entries"),
)


@dataclass
class Check:
    name: str
    passed: bool
    observed: object
    expected: object

    def as_row(self) -> dict[str, object]:
        return {"check": self.name, "result": "PASS" if self.passed else "FAIL",
                "observed": self.observed, "expected": self.expected}


def checks_table(checks: Iterable[Check]) -> pd.DataFrame:
    return pd.DataFrame([c.as_row() for c in checks],
                        columns=["check", "result", "observed", "expected"])


def require_all_pass(checks: Sequence[Check], what: str, *, rolled_back: bool = False) -> None:
    failed = [c for c in checks if not c.passed]
    if failed:
        state = ("The transaction was rolled back; nothing was changed." if rolled_back
                 else "Changes made before this check were kept.")
        details = "; ".join(f"{c.name}: observed {c.observed}, expected {c.expected}"
                            for c in failed)
        raise VerificationFailed(
            f"{what} failed: {details}. {state}",
            next_step="read the checks table above; if the application is down, consider the "
            "full restore notebook (30_full_restore).",
        )


def row_counts(conn: psycopg.Connection, tables: Iterable[QualifiedName]) -> dict[str, int]:
    """Row counts of the tables that exist (missing ones are left out)."""
    counts = {}
    for table in tables:
        if table_exists(conn, table):
            counts[str(table)] = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(table.identifier)
            ).fetchone()[0]
    return counts


def orphaned_profiles(conn: psycopg.Connection) -> int:
    """Profiles without their auth.users row (the document's restore check)."""
    return conn.execute(
        "SELECT count(*) FROM public.profiles p LEFT JOIN auth.users u ON p.id = u.id "
        "WHERE u.id IS NULL"
    ).fetchone()[0]


def application_checks(conn: psycopg.Connection,
                       expected_counts: dict[str, int] | None = None,
                       tables: Sequence[str] | None = None) -> list[Check]:
    """The document's "Verify Application" as queries, on the tables this database has:
    each of the application's tables that exists is readable; login data (users with
    profiles) and no orphaned profiles when both ``auth.users`` and ``public.profiles``
    exist; and, when given, counts equal to ``expected_counts``. Another project's
    database is never failed for lacking the demo's tables: only what exists is checked,
    and ``expected_counts`` names the rest. ``tables`` (the ``checks`` parameter) names the
    tables that must exist and be readable instead; a missing one fails."""
    from .names import parse_table_name

    checks = []
    if tables:
        required = [parse_table_name(t) for t in tables]
        present = [t for t in required if table_exists(conn, t)]
        checks += [Check(f"{t} exists and is readable", False, "missing", True)
                   for t in required if t not in present]
    else:
        present = [t for t in APPLICATION_TABLES if table_exists(conn, t)]
    for table in present:
        readable = _readable(conn, table)
        checks.append(Check(f"{table} exists and is readable", readable, readable, True))
    names = {str(t) for t in present}
    if {"auth.users", "public.profiles"} <= names:
        login = conn.execute(
            "SELECT count(*) FROM auth.users u JOIN public.profiles p ON p.id = u.id"
        ).fetchone()[0]
        checks.append(Check("login data readable (users with profiles)", login > 0, login, "> 0"))
        orphans = orphaned_profiles(conn)
        checks.append(Check("no orphaned profiles", orphans == 0, orphans, 0))
    expected_counts = expected_counts or {}
    if expected_counts:
        counts = row_counts(conn, [parse_table_name(t) for t in expected_counts])
        for table, expected in expected_counts.items():
            observed = counts.get(str(parse_table_name(table)))
            checks.append(Check(f"{table} rows unchanged", observed == expected, observed,
                                expected))
    return checks


def _readable(conn: psycopg.Connection, table: QualifiedName) -> bool:
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(table.identifier))
        return True
    except psycopg.Error:
        return False
