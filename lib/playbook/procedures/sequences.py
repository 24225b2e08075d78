"""Rollback Script 1 of the procedure document: the sequence behind an id column.

What the document's four steps need: the diagnosis (:func:`diagnose`), the rollback's
statements (:func:`reset_plan`), the checks (:func:`verification_checks`). Notebook 10's
steps, which run them in their transactions, are :mod:`playbook.steps.rollback_sequence`.

The sequence is found in the catalog (``pg_get_serial_sequence`` for serial, ``OWNED BY``
and identity columns; the column default's own dependency otherwise), never from a
naming convention. Review mode shows the very statements execute mode runs: both take
them from :func:`reset_plan`.

Two choices differ from the document, on purpose:

- the reset only ever moves the sequence *forward* (it runs only when the next value is
  not above ``MAX(id)``), under a ``SHARE`` lock on the table so ``MAX(id)`` cannot move
  while it is computed; a healthy sequence gets no statement at all, so running the
  rollback twice changes nothing the second time;
- the test insert runs in a savepoint that is rolled back, and the sequence is put back
  where it was (PostgreSQL never rolls back ``nextval``). The document's clean-up,
  ``DELETE ... WHERE id = (SELECT MAX(id) ...)``, would delete a real row under traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import psycopg
from psycopg import sql

from ..db.locks import take_playbook_lock
from ..db.names import QualifiedName, require_column, table_oid
from ..db.queries import translated_errors
from ..errors import ObjectNotFound, PreconditionFailed
from ..verification import Check, require_all_pass

# The change set whose forward script step 4 re-applies (a name or a change-set folder).
DEFAULT_CHANGE_SET = "sponsor_connections_sequence"
DEFAULT_TABLE = "public.sponsor_connections"
DEFAULT_COLUMN = "id"
# The playbook lock's scope: one operator at a time works on this change set's sequence.
LOCK_SCOPE = "sponsor_connections_sequence"
LOCK_TIMEOUT = "2s"

HEALTHY = "healthy"
BEHIND = "sequence behind the data"
DEFAULT_MISSING = "id default missing"


# --- 1. verify the issue ---------------------------------------------------------------


@dataclass(frozen=True)
class SequenceDiagnosis:
    """What the catalog and the data say about one id column and its sequence."""

    target: QualifiedName
    column: str
    sequence: QualifiedName
    found_by: str
    identity: bool
    column_default: str | None
    default_uses_sequence: bool
    last_value: int
    is_called: bool
    increment: int
    max_id: int | None

    @property
    def next_value(self) -> int:
        """What ``nextval`` would hand out next (computed, so nothing is consumed)."""
        return self.last_value + self.increment if self.is_called else self.last_value

    @property
    def behind(self) -> bool:
        return self.max_id is not None and self.next_value <= self.max_id

    @property
    def default_missing(self) -> bool:
        return not self.default_uses_sequence

    @property
    def problems(self) -> list[str]:
        found = []
        if self.default_missing:
            found.append(DEFAULT_MISSING)
        if self.behind:
            found.append(BEHIND)
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def diagnosis(self) -> str:
        return " and ".join(self.problems) if self.problems else HEALTHY

    def explanation(self) -> str:
        """The diagnosis in words, with the consequence an operator sees in the logs."""
        where = f"{self.target}.{self.column}"
        if self.healthy:
            return (f"{where} is healthy: its default calls {self.sequence}, whose next value "
                    f"{self.next_value} is above MAX({self.column}) = {shown(self.max_id)}.")
        parts = []
        if self.default_missing:
            parts.append(f"{where} has no default calling {self.sequence}: inserts that leave "
                         f"{self.column} out fail with a not-null violation")
        if self.behind:
            parts.append(f"{self.sequence} would hand out {self.next_value}, but "
                         f"MAX({self.column}) is {self.max_id}: inserts fail with a duplicate "
                         "key")
        return "; ".join(parts) + "."

    def table(self) -> pd.DataFrame:
        rows = [
            ("table", str(self.target)),
            ("column", self.column),
            ("sequence", str(self.sequence)),
            ("sequence found by", self.found_by),
            ("last_value", self.last_value),
            ("is_called", self.is_called),
            ("next value (computed, nothing consumed)", self.next_value),
            ("column default", self.column_default or "(none)"),
            (f"MAX({self.column})", shown(self.max_id)),
            ("diagnosis", self.diagnosis),
            ("in words", self.explanation()),
        ]
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def shown(value: int | None) -> str:
    return "(empty table)" if value is None else str(value)


def _find_sequence(conn: psycopg.Connection, oid: int, table: QualifiedName,
                   column: str) -> tuple[int, str, bool, str | None, int | None]:
    """(sequence oid, how it was found, identity?, default expression, attrdef oid)."""
    attnum, identity, default, attrdef = conn.execute(
        """
        SELECT a.attnum, a.attidentity <> '', pg_get_expr(d.adbin, d.adrelid), d.oid
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s AND a.attname = %s
        """,
        (oid, column),
    ).fetchone()
    # Serial, OWNED BY and identity columns: the catalog's own answer.
    owned = conn.execute(
        "SELECT pg_get_serial_sequence(%s::regclass::text, %s)::regclass::oid", (oid, column)
    ).fetchone()[0]
    if owned is not None:
        how = "identity column" if identity else "pg_get_serial_sequence (owned by the column)"
        return owned, how, identity, default, attrdef
    # A default calling nextval() of a sequence nobody declared the owner of.
    named = conn.execute(
        """
        SELECT dep.refobjid FROM pg_depend dep JOIN pg_class s ON s.oid = dep.refobjid
        WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = %s
          AND dep.refclassid = 'pg_class'::regclass AND s.relkind = 'S'
        LIMIT 1
        """,
        (attrdef,),
    ).fetchone() if attrdef is not None else None
    if named is not None:
        return named[0], "the column default (not owned by the column)", False, default, attrdef
    raise ObjectNotFound(
        f"Column {table}.{column} has no sequence: it is neither serial nor identity, no "
        "sequence is OWNED BY it and its default calls none"
        + (f" (default: {default})" if default else " (it has no default)")
        + ". There is nothing to reset. Nothing was changed.",
        next_step="check the table and column parameters; if the sequence of "
        "public.sponsor_connections.id itself is gone, re-apply the forward script "
        f"{DEFAULT_CHANGE_SET}/fix_sponsor_connections_sequence.sql "
        "(psql --single-transaction -f ...).",
    )


def diagnose(conn: psycopg.Connection, table: QualifiedName, column: str) -> SequenceDiagnosis:
    """Read the sequence of ``table.column`` and the data it must stay ahead of."""
    with translated_errors():
        oid = table_oid(conn, table)
        require_column(conn, table, column)
        seq_oid, found_by, identity, default, attrdef = _find_sequence(conn, oid, table, column)
        schema, name, increment = conn.execute(
            """
            SELECT n.nspname, c.relname, s.seqincrement FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_sequence s ON s.seqrelid = c.oid WHERE c.oid = %s
            """,
            (seq_oid,),
        ).fetchone()
        sequence = QualifiedName(schema, name)
        if increment < 0:
            raise PreconditionFailed(
                f"{sequence} counts down (increment {increment}); this rollback only resets "
                "ascending sequences. Nothing was changed.",
                next_step="reset it by hand after review, or escalate.",
            )
        uses = identity or (attrdef is not None and conn.execute(
            """
            SELECT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_attrdef'::regclass
                           AND objid = %s AND refclassid = 'pg_class'::regclass
                           AND refobjid = %s)
            """,
            (attrdef, seq_oid),
        ).fetchone()[0])
        last_value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sequence.identifier)
        ).fetchone()
        max_id = conn.execute(
            sql.SQL("SELECT MAX({}) FROM {}").format(sql.Identifier(column), table.identifier)
        ).fetchone()[0]
    if identity and not default:
        default = "GENERATED ... AS IDENTITY"
    return SequenceDiagnosis(
        target=table, column=column, sequence=sequence, found_by=found_by, identity=identity,
        column_default=default, default_uses_sequence=bool(uses), last_value=int(last_value),
        is_called=bool(is_called), increment=int(increment),
        max_id=None if max_id is None else int(max_id),
    )


# --- 2. run the rollback ---------------------------------------------------------------


@dataclass(frozen=True)
class PlanStep:
    statement: sql.Composable
    why: str

    def text(self, conn: psycopg.Connection | None = None) -> str:
        return self.statement.as_string(conn)


@dataclass
class ResetPlan:
    """The statements the rollback runs, in order; empty when there is nothing to do."""

    diagnosis: SequenceDiagnosis
    steps: list[PlanStep] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        if not self.steps:
            return pd.DataFrame(
                [{"step": 0, "statement": "(none)",
                  "why": f"{self.diagnosis.diagnosis}: nothing to reset, nothing will change"}]
            )
        return pd.DataFrame([{"step": i, "statement": s.text(), "why": s.why}
                             for i, s in enumerate(self.steps, 1)])


def lock_table_statement(table: QualifiedName) -> sql.Composed:
    """SHARE blocks inserts and updates (not reads) until COMMIT, so MAX(id) cannot move
    while the reset computes it; it waits at most lock_timeout."""
    return sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table.identifier)


def _regclass(sequence: QualifiedName) -> sql.Composed:
    return sql.SQL("{}::regclass").format(sql.Literal(str(sequence)))


def reset_plan(diagnosis: SequenceDiagnosis) -> ResetPlan:
    """The rollback's statements for ``diagnosis``: the one place they are built, shown by
    review mode and run by execute mode."""
    d = diagnosis
    plan = ResetPlan(d)
    if d.healthy:
        return plan
    plan.steps.append(PlanStep(lock_table_statement(d.target),
                               f"hold off writes to {d.target} until COMMIT"))
    if d.default_missing:
        plan.steps.append(PlanStep(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT nextval({})").format(
                d.target.identifier, sql.Identifier(d.column), _regclass(d.sequence)),
            f"restore the lost default: {d.column} comes from {d.sequence} again",
        ))
    if d.behind:
        plan.steps.append(PlanStep(
            sql.SQL("SELECT setval({}, COALESCE(MAX({}), 0) + 1, false) FROM {}").format(
                _regclass(d.sequence), sql.Identifier(d.column), d.target.identifier),
            f"next value = MAX({d.column}) + 1 (1 for an empty table); only ever forward",
        ))
    return plan


def begin_change(conn: psycopg.Connection, table: QualifiedName) -> None:
    """The first statements of every changing transaction here: limits, the playbook's
    lock, the table lock."""
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
    take_playbook_lock(conn, LOCK_SCOPE)
    conn.execute(lock_table_statement(table))


# --- 3. verify -------------------------------------------------------------------------


def _test_insert(conn: psycopg.Connection, d: SequenceDiagnosis) -> tuple[int | None, str]:
    """Insert a copy of an existing row with a default id in a savepoint that is rolled
    back; on an empty table (no row to copy) call nextval. (new id, how it was obtained)."""
    copyable = [r[0] for r in conn.execute(
        """
        SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0
          AND NOT attisdropped AND attname <> %s AND attgenerated = '' AND attidentity = ''
        ORDER BY attnum
        """,
        (str(d.target), d.column),
    )]
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in copyable)
    if d.max_id is not None:
        statement = sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM {t} ORDER BY {c} LIMIT 1 RETURNING {c}"
        ).format(t=d.target.identifier, cols=columns, c=sql.Identifier(d.column))
        how = "test insert (copy of a row, rolled back)"
    else:
        statement = sql.SQL("SELECT nextval({})").format(_regclass(d.sequence))
        how = "empty table, no row to copy: nextval"
    new_id = None
    # force_rollback rather than raising psycopg.Rollback: if the session dies in here,
    # the failed rollback must not surface as a bare psycopg.Rollback (the next statement
    # reports the lost connection as the playbook's ConnectionFailed instead).
    with conn.transaction(force_rollback=True):
        new_id = conn.execute(statement).fetchone()[0]
    return new_id, how


def _sequence_shared(conn: psycopg.Connection, d: SequenceDiagnosis) -> bool:
    """True when another column's default also draws from the sequence."""
    return conn.execute(
        """
        SELECT EXISTS (
          SELECT 1 FROM pg_depend dep JOIN pg_attrdef ad ON ad.oid = dep.objid
          WHERE dep.classid = 'pg_attrdef'::regclass AND dep.refobjid = %s::regclass
            AND NOT (ad.adrelid = %s::regclass AND ad.adnum = (
                SELECT attnum FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s)))
        """,
        (str(d.sequence), str(d.target), str(d.target), d.column),
    ).fetchone()[0]


def verification_checks(conn: psycopg.Connection, d: SequenceDiagnosis, *,
                        test_insert: bool = True) -> list[Check]:
    """The document's verification: the default uses the sequence, the next value is
    above MAX(id), and (when ``test_insert``) an insert gets a fresh id. Must run inside
    a transaction holding the table lock: the test's nextval is handed back with setval,
    which is safe only while nobody else can insert."""
    checks = [
        Check(f"{d.column} default draws from {d.sequence}", d.default_uses_sequence,
              d.column_default or "(none)", "identity" if d.identity else
              f"nextval of {d.sequence}"),
        Check(f"next value > MAX({d.column})", not d.behind,
              f"next {d.next_value}, MAX {shown(d.max_id)}", f"> {shown(d.max_id)}"),
    ]
    if not test_insert:
        checks.append(Check("test insert (rolled back)", True, "not run in review mode",
                            "runs in execute mode"))
        return checks
    if not d.default_uses_sequence:
        checks.append(Check("test insert (rolled back)", False, "not tried: no default",
                            f"a new id > {shown(d.max_id)}"))
        return checks
    try:
        new_id, how = _test_insert(conn, d)
        failure = None
    except psycopg.errors.IntegrityError as exc:
        new_id, how, failure = None, "test insert", str(exc).splitlines()[0]
    # nextval is never rolled back: give the consumed id back while the table is locked.
    if _sequence_shared(conn, d):
        handed_back = "one id skipped (the sequence is shared with another column)"
    else:
        conn.execute("SELECT setval(%s::regclass, %s, %s)",
                     (str(d.sequence), d.last_value, d.is_called))
        handed_back = "sequence put back"
    passed = new_id is not None and (d.max_id is None or new_id > d.max_id)
    observed = failure or f"{how}: id {new_id}; {handed_back}"
    checks.append(Check("test insert (rolled back)", passed, observed,
                        f"a new id > {shown(d.max_id)}"))
    return checks


def require_verified(checks: list[Check], after: SequenceDiagnosis, what: str) -> None:
    require_all_pass(
        checks, f"{what} did not verify",
        outcome=f"The transaction was rolled back (the column default is as before); "
        f"{after.sequence} may have moved forward, which PostgreSQL never rolls back and "
        "which only skips ids.",
        next_step="read the checks above; if inserts still fail, re-apply the forward "
        "script (run_recovery=True) or escalate.")


# --- the gate --------------------------------------------------------------------------

