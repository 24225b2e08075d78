"""Repair chosen tables from a restored backup, keeping what was written since.

Per table, a strategy:

- ``missing``: re-insert the rows deleted since the backup;
- ``missing+changed`` (the default): also put rows changed since the backup back to the
  backup's values;
- ``replace``: the table exactly as in the backup. Rows added since the backup would be
  deleted, so it is refused while there are any, unless the table is named in
  ``replace_despite_new_rows``. A table without a primary key can only be replaced.

Execute mode is one transaction on live: the playbook's advisory lock, ``lock_timeout``,
the chosen tables locked against writes (reads go on), foreign keys respected (deletes
children first, inserts parents first, deferrable constraints deferred), user triggers of
the chosen tables off while their rows are written (an ``updated_at`` trigger would
otherwise overwrite the backup's values), sequences moved past ``MAX``. The backup's rows
travel by streaming: COPY out of the scratch database, COPY into a temporary table on
live, then ``INSERT ... SELECT`` / ``UPDATE ... FROM`` by key. Before COMMIT everything is
diffed again inside the transaction: what was chosen now equals the backup, the rows
added since the backup are untouched, and no other table changed; otherwise the
transaction is rolled back (:class:`VerificationFailed`).

Review mode shows the very statements, built by the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from ..db import catalog
from ..db.fingerprint import table_checksum
from ..db.locks import take_playbook_lock
from ..db.names import QualifiedName, parse_table_name
from ..db.queries import translated_errors
from ..errors import ConfigurationError, PreconditionFailed
from ..evidence import NOT_DONE, Evidence, checks_evidence
from ..incidents import export_folder, run_label
from ..runs import Run
from ..verification import Check, checks_table, require_all_pass
from . import table_diff
from .protected_tables import counts_changes, table_identity
from .table_diff import ADDED, CHANGED, DELETED, KeySink, TableDiff, TableShape

MISSING, MISSING_CHANGED, REPLACE = "missing", "missing+changed", "replace"
STRATEGIES = (MISSING, MISSING_CHANGED, REPLACE)
DEFAULT_STRATEGY = MISSING_CHANGED
LOCK_SCOPE = "31_restore_tables"

# --- choosing strategies ----------------------------------------------------------------


def resolve_strategies(tables: Sequence[QualifiedName], strategy: Mapping[str, str],
                       replace_despite_new_rows: Sequence[str]) -> tuple[dict[str, str],
                                                                         set[str]]:
    """(table -> strategy, tables allowed to lose rows added since); malformed names,
    unknown strategies and tables that are not chosen are refused."""
    if not isinstance(strategy, Mapping):
        raise ConfigurationError(
            f"strategy must map table names to {', '.join(STRATEGIES)}. Nothing was changed.")
    chosen = {str(t) for t in tables}
    resolved = {name: DEFAULT_STRATEGY for name in chosen}
    for name, value in strategy.items():
        table = str(parse_table_name(name))
        if value not in STRATEGIES:
            raise ConfigurationError(
                f"strategy for {table} is {value!r}; use one of {', '.join(STRATEGIES)}. "
                "Nothing was changed.")
        if table not in chosen:
            raise ConfigurationError(
                f"strategy names {table}, which is not among the chosen tables. Nothing was "
                "changed.", next_step="add it to `tables`, or remove it from `strategy`.")
        resolved[table] = value
    allowed = {str(parse_table_name(t)) for t in replace_despite_new_rows}
    return resolved, allowed


def refusals(diff: TableDiff, strategy: str, allowed: set[str]) -> str:
    """Why ``strategy`` cannot run on this table ("" if it can)."""
    name = str(diff.table)
    if not diff.shape.has_key and strategy != REPLACE:
        return (f"{name} has no primary key, so deleted and changed rows cannot be told "
                "apart: only `replace` can repair it")
    if strategy == REPLACE and name not in allowed and (diff.added or not diff.shape.has_key):
        what = (f"{diff.added} row(s) were added since the backup" if diff.shape.has_key
                else "rows added since the backup cannot be recognised without a key")
        return (f"`replace` of {name} would delete what was written since the backup: {what}")
    return ""


# --- the statements -----------------------------------------------------------------------


def _temp(kind: str, index: int) -> sql.Identifier:
    return sql.Identifier(f"playbook_{kind}_{index}")


def _key_match(shape: TableShape, left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k))
        for k in shape.key_names)


def statements(shape: TableShape, strategy: str, index: int) -> dict[str, list[sql.Composable]]:
    """The statements for one table, by phase: ``stage`` (temporary tables), ``delete``,
    ``write``. Review mode prints them; execute mode runs them."""
    table = shape.table.identifier
    columns = shape.column_list()
    stage, delete, write = [], [], []
    missing, changed, added = (_temp("missing", index), _temp("changed", index),
                               _temp("added", index))
    like = sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA")
    overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if shape.identity_always else sql.SQL("")
    if not shape.has_key:
        stage.append(like.format(missing, columns, table))
        delete.append(sql.SQL("DELETE FROM {}").format(table))
        write.append(sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {}").format(
            table, columns, overriding, columns, missing))
        return {"stage": stage, "delete": delete, "write": write}
    stage.append(like.format(missing, columns, table))
    if strategy in (MISSING_CHANGED, REPLACE):
        stage.append(like.format(changed, columns, table))
    if strategy == REPLACE:
        stage.append(like.format(added, sql.SQL(", ").join(map(sql.Identifier, shape.key_names)),
                                 table))
        delete.append(sql.SQL("DELETE FROM {} AS t USING {} AS k WHERE {}").format(
            table, added, _key_match(shape, "t", "k")))
    write.append(sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {}").format(
        table, columns, overriding, columns, missing))
    values = [c for c in shape.columns if c not in shape.key_names]
    if strategy in (MISSING_CHANGED, REPLACE) and values:
        write.append(sql.SQL("UPDATE {} AS t SET {} FROM {} AS s WHERE {}").format(
            table, sql.SQL(", ").join(sql.SQL("{} = {}").format(
                sql.Identifier(c), sql.Identifier("s", c)) for c in values),
            changed, _key_match(shape, "t", "s")))
    return {"stage": stage, "delete": delete, "write": write}


# --- streaming the backup's rows to live -------------------------------------------------


class StageRows(KeySink):
    """COPY the rows of each batch of keys out of the scratch database into a temporary
    table on live."""

    def __init__(self, scratch: psycopg.Connection, live: psycopg.Connection,
                 shape: TableShape, temp: sql.Identifier) -> None:
        self.scratch, self.live, self.shape, self.temp = scratch, live, shape, temp
        self.rows = 0

    def write(self, keys: list[tuple]) -> None:
        source = sql.SQL("COPY ({}) TO STDOUT").format(self.shape.rows_by_key_query())
        target = sql.SQL("COPY {} ({}) FROM STDIN").format(self.temp, self.shape.column_list())
        arrays = table_diff.key_arrays(keys, len(self.shape.key))
        with self.scratch.cursor() as out, self.live.cursor() as into:
            with out.copy(source, arrays) as reading, into.copy(target) as writing:
                for chunk in reading:
                    writing.write(chunk)
        self.rows += len(keys)


class StageKeys(KeySink):
    """Keys of the rows to delete (``replace``), into a temporary table on live."""

    def __init__(self, live: psycopg.Connection, shape: TableShape, temp: sql.Identifier):
        self.live, self.shape, self.temp = live, shape, temp

    def write(self, keys: list[tuple]) -> None:
        target = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self.temp, sql.SQL(", ").join(map(sql.Identifier, self.shape.key_names)))
        with self.live.cursor() as cur, cur.copy(target) as writing:
            for key in keys:
                writing.write_row([str(v) for v in key])


def _stage_whole_table(scratch: psycopg.Connection, live: psycopg.Connection,
                       shape: TableShape, temp: sql.Identifier) -> None:
    source = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(shape.column_list(),
                                                                  shape.table.identifier)
    target = sql.SQL("COPY {} ({}) FROM STDIN").format(temp, shape.column_list())
    with scratch.cursor() as out, live.cursor() as into:
        with out.copy(source) as reading, into.copy(target) as writing:
            for chunk in reading:
                writing.write(chunk)


# --- order, triggers, sequences, the rest of the database ----------------------------------


def _enabled_user_triggers(conn: psycopg.Connection, table: QualifiedName) -> list[str]:
    return [r[0] for r in conn.execute(
        """
        SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal AND t.tgenabled <> 'D'
        ORDER BY 1
        """, (table.schema, table.name)).fetchall()]


def _set_triggers(conn: psycopg.Connection, table: QualifiedName, names: list[str],
                  enable: bool) -> None:
    verb = sql.SQL("ENABLE" if enable else "DISABLE")
    for name in names:
        conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
            table.identifier, verb, sql.Identifier(name)))


def other_tables(conn: psycopg.Connection, chosen: Sequence[QualifiedName]
                 ) -> list[QualifiedName]:
    """Tables that must not change: every other table of the chosen tables' schemas and
    every table referencing a chosen one (cascades)."""
    schemas = sorted({t.schema for t in chosen})
    names = {str(t) for t in chosen}
    found = set(table_diff.list_tables(conn, schemas))
    for cs, cn, ps, pn in conn.execute(
        """
        SELECT cn.nspname, c.relname, pn.nspname, p.relname
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE k.contype = 'f'
        """).fetchall():
        if str(QualifiedName(ps, pn)) in names:
            found.add(QualifiedName(cs, cn))
    return sorted((t for t in found if str(t) not in names), key=str)


def others_before(live: psycopg.Connection, others: Sequence[QualifiedName]) -> dict:
    """What :func:`others_unchanged` compares with: each table's identity (relations and
    their files, columns, constraints) from the catalog; with ``track_counts`` off, its
    rows and checksum instead (a full read)."""
    if counts_changes(live):
        return {str(t): table_identity(live, t) for t in others}
    return {str(t): table_checksum(live, t.schema, t.name) for t in others}


def others_unchanged(live: psycopg.Connection, others: Sequence[QualifiedName],
                     before: dict) -> list[Check]:
    """One check per table not chosen: this transaction changed none of its rows (its
    own row counters in ``pg_stat_xact_all_tables``, cascades and triggers included, zero)
    and it is the same table (same storage, columns, constraints); the drop proves its
    protected tables the same way (drops.protected_tables_untouched). Writes committed
    meanwhile by the application to those tables are theirs, not the repair's."""
    checks = []
    counted = counts_changes(live)
    for table in others:
        then = before[str(table)]
        if not counted:
            now = table_checksum(live, table.schema, table.name)
            checks.append(Check(f"{table} unchanged (not chosen; track_counts is off: "
                                "compared row by row)", now == then,
                                f"{now[0]} rows, md5 {now[1][:12]}",
                                f"{then[0]} rows, md5 {then[1][:12]}"))
            continue
        now = table_identity(live, table)
        same = now is not None and then is not None and now[:3] == then[:3]
        inserted, updated, deleted = now[3] if now is not None else (0, 0, 0)
        untouched = same and inserted == updated == deleted == 0
        checks.append(Check(f"{table} unchanged (not chosen): same table, no row inserted, "
                            "updated or deleted by this transaction", untouched,
                            f"{inserted} inserted, {updated} updated, {deleted} deleted"
                            + ("" if same else "; its storage, columns or constraints "
                               "changed"), "0 inserted, 0 updated, 0 deleted"))
    return checks


# --- review: the plan ----------------------------------------------------------------------


@dataclass
class TablePlan:
    diff: TableDiff
    strategy: str
    index: int
    refused: str = ""

    def statements(self) -> dict[str, list[sql.Composable]]:
        return statements(self.diff.shape, self.strategy, self.index)

    def rows_written(self) -> dict[str, int]:
        d = self.diff
        if not d.shape.has_key:
            return {"inserted": d.backup_rows, "updated": 0, "deleted": d.live_rows}
        return {"inserted": d.deleted,
                "updated": d.changed if self.strategy != MISSING else 0,
                "deleted": d.added if self.strategy == REPLACE else 0}


@dataclass
class RepairPlan:
    """What execute mode will do, table by table (parents first)."""

    tables: list[TablePlan]
    allowed: set[str] = field(default_factory=set)

    def table(self) -> pd.DataFrame:
        rows = []
        for plan in self.tables:
            counts = plan.rows_written()
            rows.append({"table": str(plan.diff.table), "strategy": plan.strategy,
                         "rows to insert": counts["inserted"], "rows to update":
                         counts["updated"], "rows to delete": counts["deleted"],
                         "rows added since backup kept": 0 if plan.strategy == REPLACE
                         else plan.diff.added,
                         "of the updated: modified after the backup": (
                             0 if plan.strategy == MISSING else
                             plan.diff.changed_after_backup if plan.diff.changed_after_backup
                             is not None else ("cannot tell" if plan.diff.changed else 0)),
                         "refused": plan.refused or ""})
        return pd.DataFrame(rows)

    def statements_table(self, conn: psycopg.Connection | None = None) -> pd.DataFrame:
        rows = [{"step": "lock", "table": "", "statement":
                 "SELECT pg_try_advisory_xact_lock(...)  -- the playbook's lock, "
                 f"scope {LOCK_SCOPE!r}"}]
        for plan in self.tables:
            rows.append({"step": "lock", "table": str(plan.diff.table), "statement":
                         sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                             plan.diff.table.identifier).as_string(conn)})
        for plan in self.tables:
            for phase, items in plan.statements().items():
                for statement in items:
                    rows.append({"step": phase, "table": str(plan.diff.table),
                                 "statement": statement.as_string(conn)})
        rows.append({"step": "sequences", "table": "", "statement":
                     "SELECT setval(<sequence of each serial/identity column>, MAX(column)) "
                     "-- only where MAX(column) >= the next value"})
        rows.append({"step": "verify", "table": "", "statement":
                     "diff again inside the transaction; COMMIT only if every check passes"})
        return pd.DataFrame(rows)

    def require_allowed(self) -> None:
        refused = [p.refused for p in self.tables if p.refused]
        if refused:
            raise PreconditionFailed(
                "Refused: " + "; ".join(refused) + ". Nothing was changed.",
                next_step="choose `missing+changed` for these tables, or name them in "
                "replace_despite_new_rows if losing those rows is intended (they are in the "
                "diff's export).")


def plan_repair(live: psycopg.Connection, report: table_diff.DiffReport,
                strategy: Mapping[str, str] | None = None,
                replace_despite_new_rows: Sequence[str] = ()) -> RepairPlan:
    """The plan for ``report``'s tables with their strategies (parents first)."""
    tables = [d.table for d in report.diffs]
    resolved, allowed = resolve_strategies(tables, strategy or {}, replace_despite_new_rows)
    by_name = report.by_table()
    order = catalog.parents_first(live, tables)
    plans = []
    for index, table in enumerate(order):
        diff = by_name[str(table)]
        chosen = resolved[str(table)]
        plans.append(TablePlan(diff, chosen, index, refusals(diff, chosen, allowed)))
    return RepairPlan(plans, allowed)


# --- execute --------------------------------------------------------------------------------


@dataclass
class RepairResult:
    checks: list[Check]
    written: dict[str, dict[str, int]]
    sequences: list[str]
    committed: bool

    def evidence(self) -> Evidence:
        """A committed repair whose checks all passed inside its transaction."""
        return checks_evidence(self.checks) if self.committed else NOT_DONE

    def table(self) -> pd.DataFrame:
        if not self.committed and not self.checks:
            return pd.DataFrame([("review mode", "nothing was changed; the statements above "
                                  "are what execute mode runs")],
                                columns=["", "value"]).set_index("")
        return checks_table(self.checks)


def execute_repair(scratch: psycopg.Connection, live: psycopg.Connection, plan: RepairPlan,
                   *, on_step: Callable[[str], None] | None = None,
                   show_progress: bool = False) -> RepairResult:
    """Run ``plan`` in one transaction on ``live`` (see the module's docstring). The diff
    is taken again under the locks: the plan only chose the strategies. ``show_progress``:
    a bar for each of those diffs (rows and MB/s)."""
    plan.require_allowed()
    step = on_step or (lambda _name: None)
    with translated_errors():  # a session lost here is reported like one lost later
        for conn in (scratch, live):
            conn.commit()
            table_diff.make_comparable(conn)
            conn.commit()
    scratch.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    checks: list[Check] = []
    written: dict[str, dict[str, int]] = {}
    with translated_errors(), scratch.transaction(), live.transaction():
        take_playbook_lock(live, LOCK_SCOPE)
        for item in plan.tables:
            live.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                item.diff.table.identifier))
        live.execute("SET CONSTRAINTS ALL DEFERRED")
        chosen = [p.diff.table for p in plan.tables]
        others = other_tables(live, chosen)
        before_others = others_before(live, others)
        step("locked")
        before: dict[str, TableDiff] = {}
        for item in plan.tables:
            shape = table_diff.table_shape(scratch, live, item.diff.table)
            phases = statements(shape, item.strategy, item.index)
            for statement in phases["stage"]:
                live.execute(statement)
            if not shape.has_key:
                _stage_whole_table(scratch, live, shape, _temp("missing", item.index))
                diff = table_diff.compare_table(scratch, live, shape)
            else:
                sinks: dict[str, list[KeySink]] = {
                    DELETED: [StageRows(scratch, live, shape, _temp("missing", item.index))]}
                if item.strategy in (MISSING_CHANGED, REPLACE):
                    sinks[CHANGED] = [StageRows(scratch, live, shape,
                                                _temp("changed", item.index))]
                if item.strategy == REPLACE:
                    sinks[ADDED] = [StageKeys(live, shape, _temp("added", item.index))]
                with table_diff.rows_progress(scratch, shape.table, item.diff.backup_rows,
                                              f"diff {shape.table} under lock",
                                              show_progress) as tick:
                    diff = table_diff.compare_table(scratch, live, shape, sinks, tick=tick)
            refused = refusals(diff, item.strategy, plan.allowed)
            if refused:  # rows were added between the review and now
                raise PreconditionFailed(
                    f"Refused: {refused}. The transaction was rolled back; nothing was changed.",
                    next_step="review the diff again.")
            before[str(shape.table)] = diff
            item.diff = diff
        step("staged")
        triggers = {str(p.diff.table): _enabled_user_triggers(live, p.diff.table)
                    for p in plan.tables}
        for item in plan.tables:
            _set_triggers(live, item.diff.table, triggers[str(item.diff.table)], enable=False)
        for item in reversed(plan.tables):  # children first
            for statement in item.statements()["delete"]:
                cur = live.execute(statement)
                written.setdefault(str(item.diff.table), {})["deleted"] = cur.rowcount
        for item in plan.tables:  # parents first
            counts = written.setdefault(str(item.diff.table), {"deleted": 0})
            for statement in item.statements()["write"]:
                cur = live.execute(statement)
                kind = "updated" if statement.as_string(live).startswith("UPDATE") else "inserted"
                counts[kind] = counts.get(kind, 0) + cur.rowcount
        for item in plan.tables:
            _set_triggers(live, item.diff.table, triggers[str(item.diff.table)], enable=True)
        live.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred FKs are checked here
        step("written")
        moved = [str(s) for p in plan.tables
                 for s in catalog.advance_sequences(live, p.diff.table) if s.moved]
        for item in plan.tables:
            shape = item.diff.shape
            with table_diff.rows_progress(scratch, shape.table, item.diff.backup_rows,
                                          f"check {shape.table}", show_progress) as tick:
                after = table_diff.compare_table(scratch, live, shape, tick=tick)
            checks += after_checks(before[str(shape.table)], after, item.strategy)
        checks += others_unchanged(live, others, before_others)
        step("verified")
        require_all_pass(
            checks, "The repair did not verify inside its transaction", rolled_back=True,
            next_step="read the checks; a trigger or a concurrent writer may be at work. "
            "Consider the full restore notebook (30_full_restore).")
    step("committed")
    return RepairResult(checks, written, moved, True)


def after_checks(before: TableDiff, after: TableDiff, strategy: str) -> list[Check]:
    """The in-transaction checks of one table."""
    name = str(before.table)
    if not before.shape.has_key:
        return [Check(f"{name} equals the backup (whole table)", bool(after.whole_table_equal),
                      f"{after.live_rows} rows", f"{after.backup_rows} rows, same checksum")]
    checks = [Check(f"{name}: rows deleted since the backup are back", after.deleted == 0,
                    after.deleted, 0)]
    if strategy == MISSING:
        checks.append(Check(f"{name}: changed rows left as they were (strategy missing)",
                            after.changed == before.changed, after.changed, before.changed))
    else:
        checks.append(Check(f"{name}: changed rows have the backup's values", after.changed == 0,
                            after.changed, 0))
    if strategy == REPLACE:
        checks.append(Check(f"{name}: rows added since the backup removed (replace)",
                            after.added == 0, after.added, 0))
    else:
        checks.append(Check(f"{name}: rows added since the backup untouched",
                            (after.added, after.added_digest) == (before.added,
                                                                  before.added_digest),
                            f"{after.added} rows, digest {after.added_digest[:12]}",
                            f"{before.added} rows, digest {before.added_digest[:12]}"))
    return checks


def diff_export_folder(run: Run, export_dir: str | Path = "") -> Path:
    """Where notebook 31 exports its diff: ``export_dir`` if given; by default the
    incident's ``exports/31_restore_tables-<run start time>`` (one folder per run)."""
    return export_folder(export_dir, run.incident_id,
                         f"31_restore_tables-{run_label(run.started_at)}",
                         started_at=run.started_at)
