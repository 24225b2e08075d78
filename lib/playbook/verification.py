"""Verification: checks with an expected and an observed value, shown as pass/fail.

The procedure document's verification queries become :class:`Check` objects so a
notebook can show them as a table and stop on the first failure with the evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import psycopg
from psycopg import sql

from .db.names import QualifiedName, parse_table_name, table_exists
from .errors import ConfigurationError, VerificationFailed

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


_EXPECT = re.compile(r"^\s*(=|==|!=|<>|>=|<=|>|<)\s*(-?\d+)\s*$")
_COMPARE = {"=": int.__eq__, "==": int.__eq__, "!=": int.__ne__, "<>": int.__ne__,
            ">=": int.__ge__, "<=": int.__le__, ">": int.__gt__, "<": int.__lt__}


@dataclass(frozen=True)
class NamedCheck:
    """A check a change set carries (``checks:`` in its migration.yaml): a read-only query
    returning one number, and what that number must be (``"> 0"``, ``"= 0"``...)."""

    name: str
    query: str
    expect: str

    @classmethod
    def parse(cls, item: object, where: str) -> NamedCheck:
        ok = (isinstance(item, dict) and all(isinstance(item.get(k), str) and item.get(k)
                                             for k in ("name", "query", "expect"))
              and _EXPECT.match(item["expect"]))
        if not ok:
            raise ConfigurationError(
                f"{where}: each check needs name, query and expect (like \"> 0\" or \"= 0\"), "
                f"got {item!r}. Nothing was changed.",
                next_step="fix the change set's `checks:` list.")
        return cls(item["name"], item["query"], item["expect"])

    def run(self, conn: psycopg.Connection) -> Check:
        """Run the query read-only, in a savepoint (a failing query is a failed check)."""
        operator, number = _EXPECT.match(self.expect).groups()
        try:
            with conn.transaction():
                value = conn.execute(self.query).fetchone()[0]  # the change set's own SQL
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return Check(self.name, False, f"query failed: {first}", self.expect)
        passed = isinstance(value, int) and _COMPARE[operator](value, int(number))
        return Check(self.name, passed, value, self.expect)


_PROJECT_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%'
ORDER BY 1, 2
"""
# Supabase's own schemas: the platform checks those, not the project's rollback.
PLATFORM_SCHEMAS = ("auth", "storage", "realtime", "_realtime", "extensions", "graphql",
                    "graphql_public", "pgbouncer", "pgsodium", "vault", "supabase_functions",
                    "supabase_migrations", "net", "cron", "information_schema")


def project_tables_readable(conn: psycopg.Connection) -> list[Check]:
    """The checks of a migration that carries none: every table of the project answers a
    read (never another application's tables by name)."""
    tables = [QualifiedName(*r) for r in conn.execute(_PROJECT_TABLES, (list(PLATFORM_SCHEMAS),))]
    answers = {t: _readable(conn, t) for t in tables}
    return [Check(f"{t} answers a read", ok, ok, True) for t, ok in answers.items()]


def checks_table(checks: Iterable[Check]) -> pd.DataFrame:
    return pd.DataFrame([c.as_row() for c in checks],
                        columns=["check", "result", "observed", "expected"])


def require_all_pass(checks: Sequence[Check], what: str, *, rolled_back: bool = False,
                     outcome: str = "", next_step: str = "") -> None:
    """Raise :class:`VerificationFailed` naming every failed check (observed, expected).

    ``what`` opens the message ("The repair did not verify"); ``outcome`` says what was
    left changed (by default from ``rolled_back``); ``next_step`` what the operator does
    next. Raised inside a ``conn.transaction()`` block, it rolls that transaction back."""
    failed = [c for c in checks if not c.passed]
    if failed:
        state = outcome or ("The transaction was rolled back; nothing was changed."
                            if rolled_back else "Changes made before this check were kept.")
        details = "; ".join(f"{c.name}: observed {c.observed}, expected {c.expected}"
                            for c in failed)
        raise VerificationFailed(
            f"{what}: {details}. {state}",
            next_step=next_step or "read the checks table above; if the application is down, "
            "consider the full restore notebook (30_full_restore).",
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
