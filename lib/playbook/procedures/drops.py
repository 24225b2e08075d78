"""Removing a migration's objects safely (Rollback Script 2 of the procedure document).

:func:`build_drop_plan` turns what the migration created (``changesets.objects``) and what
depends on it (``changesets.dependencies``) into ``psycopg.sql`` statements in dependency order,
never with CASCADE. Review mode shows those very statements (``as_string``);
:func:`perform_drop` runs them in ONE transaction that:

1. takes the playbook's advisory lock (a second operator is refused) and states a
   ``lock_timeout`` (never queue behind a long query while the application queues behind us);
2. blocks every write to the tables it will drop (``LOCK TABLE ... IN EXCLUSIVE MODE``:
   INSERT, UPDATE and DELETE wait, SELECT goes on), then takes the FINAL export from a
   snapshot exported by this very transaction (:func:`final_export`), so it holds every
   write committed before the drop; it is verified (every table in it, every file
   against its size and SHA-256). If it equals step 1's export, that one stays;
   otherwise it replaces it (durably, before COMMIT) and step 1's is marked SUPERSEDED;
3. records what the protected tables are (catalog identity, row counts), drops, then
   before COMMIT checks inside the transaction that every object is gone and that the
   protected tables still hold what they held; anything else is a ROLLBACK and
   VerificationFailed.

Writes to the migration's tables therefore wait from step 2 to COMMIT (about the time of
one export); reads of them wait only from the first DROP, and other tables are locked only
by the DROP (see below).

The DROP of a table takes ACCESS EXCLUSIVE locks on it and on every table its foreign
keys point at (their RI triggers live there: dropping ``sponsor_connections`` locks
``public.profiles``, so logins wait). Everything between the first DROP and COMMIT is
therefore kept to catalog look-ups: the proof about the protected tables is
:func:`protected_tables_untouched`, not a re-read of their rows.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from ..changesets.dependencies import (
    Dependent,
    check_include_dependents,
    find_dependents,
    require_no_unlisted_dependents,
)
from ..changesets.migration import Migration
from ..changesets.objects import FoundObject, Inventory, find_in_database, object_oid
from ..db import catalog
from ..db.connecting import bulk_step_limits, lock_timeout_setting
from ..db.locks import take_playbook_lock
from ..db.names import QualifiedName
from ..db.queries import translated_errors
from ..errors import DependentObjectsExist, ExportFailed, ExportMismatch
from ..exports import (
    INCOMPLETE,
    Manifest,
    export_in_transaction,
    export_statement,
    fsync_path,
    mark_complete,
    mark_superseded,
    read_manifest,
    require_sound_export,
    verify_files,
    write_manifest,
)
from ..incidents import export_folder
from ..verification import Check, checks_table, require_all_pass
from .protected_tables import (
    ProtectedTable,
    counts_changes,
    protected_state,
    protected_tables_untouched,
)

DEFAULT_LOCK_TIMEOUT = "2s"

def lock_scope(migration: Migration) -> str:
    """The advisory lock's scope: one operator at a time per migration."""
    return f"migration:{migration.name}"


def default_export_dir(migration: Migration, incident_id: str = "",
                       export_dir: str = "") -> Path:
    """``export_dir`` if given; else the incident's ``exports/<migration>`` folder (an
    incident named after the UTC start time when there is no incident id)."""
    return export_folder(export_dir, incident_id, migration.name)


# --- the plan ---------------------------------------------------------------------------


@dataclass
class DropStep:
    what: str
    statement: sql.Composed | None  # None: goes with another statement (shown, not run)
    note: str = ""


@dataclass
class DropPlan:
    migration: Migration
    inventory: Inventory
    dependents: list[Dependent]
    included: list[Dependent]
    steps: list[DropStep] = field(default_factory=list)
    # Run before the drops, in the same transaction: writes blocked, the final export.
    before: list[DropStep] = field(default_factory=list)

    @property
    def statements(self) -> list[sql.Composed]:
        return [s.statement for s in self.before + self.steps if s.statement is not None]

    @property
    def tables(self) -> list[QualifiedName]:
        return [QualifiedName(f.obj.schema, f.obj.name) for f in self.inventory.of_kind("table")]

    @property
    def nothing_to_do(self) -> bool:
        return not any(s.statement is not None for s in self.steps)

    def sql_text(self, conn: psycopg.Connection | None = None) -> str:
        if self.nothing_to_do:
            return ""
        return "\n".join(s.as_string(conn) + ";" for s in self.statements)

    def table(self, conn: psycopg.Connection | None = None) -> pd.DataFrame:
        steps = self.before + self.steps if not self.nothing_to_do else []
        rows = [{"step": i + 1, "drops": s.what,
                 "statement": s.statement.as_string(conn) + ";" if s.statement else "",
                 "note": s.note} for i, s in enumerate(steps)]
        if not rows:
            rows = [{"step": 0, "drops": "(nothing)", "statement": "",
                     "note": "every object of the migration is already absent: rollback "
                     "not needed"}]
        return pd.DataFrame(rows, columns=["step", "drops", "statement", "note"])


def _ident(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def block_writes_statement(tables: list[QualifiedName]) -> sql.Composed:
    """Blocks INSERT, UPDATE, DELETE (and other writers' locks) on ``tables`` until the
    transaction ends; SELECT goes on."""
    return sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
        sql.SQL(", ").join(t.identifier for t in tables))


def _before_drop_steps(tables: list[QualifiedName]) -> list[DropStep]:
    """What the drop's transaction runs before the drops: the statements themselves."""
    if not tables:
        return []
    steps = [DropStep("block writes to the tables it drops", block_writes_statement(tables),
                      "waits at most lock_timeout; INSERT/UPDATE/DELETE wait until COMMIT, "
                      "SELECT goes on")]
    steps += [DropStep(f"final export of {t}", export_statement(t),
                       "from this transaction's snapshot (pg_export_snapshot); verified; "
                       "replaces step 1's export if the data changed since") for t in tables]
    return steps


def _dependent_step(dep: Dependent) -> DropStep:
    names = dep.object_names
    if dep.kind in ("view", "materialized view"):
        keyword = sql.SQL("DROP VIEW" if dep.kind == "view" else "DROP MATERIALIZED VIEW")
        statement = sql.SQL("{} {}").format(keyword, _ident(*names))
    elif dep.kind == "table constraint":
        statement = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            _ident(names[0], names[1]), _ident(names[2]))
    elif dep.kind == "trigger":
        statement = sql.SQL("DROP TRIGGER {} ON {}").format(
            _ident(names[2]), _ident(names[0], names[1]))
    elif dep.kind == "policy":
        statement = sql.SQL("DROP POLICY {} ON {}").format(
            _ident(names[2]), _ident(names[0], names[1]))
    elif dep.kind == "publication relation":
        statement = sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
            _ident(dep.object_args[0]), _ident(names[0], names[1]))
    elif dep.kind == "default value":
        statement = sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(
            _ident(names[0], names[1]), _ident(names[2]))
    else:
        raise DependentObjectsExist(
            f"{dep.label} depends on the migration and the playbook does not drop a {dep.kind} "
            "by itself. Nothing was changed.",
            next_step="change or remove it yourself (after review), then run again.",
        )
    return DropStep(dep.label, statement, "outside the migration: included by the operator")


def _table_order(conn: psycopg.Connection, tables: list[FoundObject]) -> list[FoundObject]:
    """Children first: a table is dropped before any table its foreign keys point at."""
    by_name = {str(QualifiedName(t.obj.schema, t.obj.name)): t for t in tables}
    ordered = catalog.children_first(conn, [QualifiedName(t.obj.schema, t.obj.name)
                                            for t in tables])
    return [by_name[str(name)] for name in ordered]


def build_drop_plan(conn: psycopg.Connection, migration: Migration,
                    include_dependents: list[str] | tuple[str, ...] = (),
                    *, inventory: Inventory | None = None) -> DropPlan:
    """The statements that remove what ``migration`` created, in dependency order.
    Raises DependentObjectsExist while objects outside it depend on it and are not named
    in ``include_dependents``."""
    include_dependents = check_include_dependents(include_dependents)
    inventory = inventory or find_in_database(conn, migration)
    dependents = find_dependents(conn, inventory)
    included = require_no_unlisted_dependents(dependents, include_dependents)
    plan = DropPlan(migration, inventory, dependents, included)
    plan.before = _before_drop_steps(export_order(conn, inventory))
    for kind, keyword in (("view", "DROP VIEW"), ("materialized view",
                                                  "DROP MATERIALIZED VIEW")):
        views = [d for d in included if d.kind == kind]
        if views:  # one statement: views on views are dropped together, without CASCADE
            plan.steps.append(DropStep(", ".join(d.label for d in views), sql.SQL("{} {}").format(
                sql.SQL(keyword), sql.SQL(", ").join(_ident(*d.object_names) for d in views)),
                "outside the migration: included by the operator"))
    plan.steps += [_dependent_step(d) for d in included
                   if d.kind not in ("view", "materialized view")]
    our_tables = {(f.obj.schema, f.obj.name) for f in inventory.of_kind("table")}
    for kind in ("trigger", "policy", "index"):
        for found in inventory.of_kind(kind):
            obj = found.obj
            if (obj.table_schema, obj.table_name) in our_tables:
                plan.steps.append(DropStep(f"{kind} {obj.display}", None,
                                           f"goes with table {obj.table}"))
            elif kind == "index":
                plan.steps.append(DropStep(f"index {obj.display}", sql.SQL(
                    "DROP INDEX {}").format(_ident(obj.schema, obj.name))))
            else:
                plan.steps.append(DropStep(f"{kind} {obj.display}", sql.SQL(
                    "DROP {} {} ON {}").format(sql.SQL(kind.upper()), _ident(obj.name),
                                               _ident(obj.table_schema, obj.table_name))))
    for found in inventory.of_kind("view"):
        plan.steps.append(DropStep(f"view {found.obj.display}", sql.SQL(
            "DROP VIEW {}").format(_ident(found.obj.schema, found.obj.name))))
    for found in _table_order(conn, inventory.of_kind("table")):
        plan.steps.append(DropStep(
            f"table {found.obj.display} ({found.rows if found.rows is not None else '?'} rows)",
            sql.SQL("DROP TABLE {}").format(_ident(found.obj.schema, found.obj.name)),
            "WITHOUT CASCADE: fails rather than take anything unlisted along"))
    dropped_tables = {f"{s}.{n}" for s, n in our_tables}
    for found in inventory.of_kind("sequence"):
        owner_table = found.owned_by.removeprefix("owned by ").rsplit(".", 1)[0]
        if found.owned_by and owner_table in dropped_tables:
            plan.steps.append(DropStep(f"sequence {found.obj.display}", None,
                                       f"goes with table {owner_table} ({found.owned_by})"))
        else:
            plan.steps.append(DropStep(f"sequence {found.obj.display}", sql.SQL(
                "DROP SEQUENCE {}").format(_ident(found.obj.schema, found.obj.name))))
    for found in inventory.of_kind("function"):
        obj = found.obj
        # Argument types are the parser's rendering of the migration's own text.
        arguments = sql.SQL(", ").join(sql.SQL(a) for a in obj.arguments)
        plan.steps.append(DropStep(f"function {obj.display}", sql.SQL(
            "DROP FUNCTION {}({})").format(_ident(obj.schema, obj.name), arguments)))
    for found in inventory.of_kind("type"):
        plan.steps.append(DropStep(f"type {found.obj.display}", sql.SQL(
            "DROP TYPE {}").format(_ident(found.obj.schema, found.obj.name))))
    return plan


# --- the gate ---------------------------------------------------------------------------


# --- the export -------------------------------------------------------------------------


def export_order(conn: psycopg.Connection, inventory: Inventory) -> list[QualifiedName]:
    """The migration's tables, parents first (the order a re-import needs)."""
    return [QualifiedName(f.obj.schema, f.obj.name)
            for f in _table_order(conn, inventory.of_kind("table"))][::-1]


def export_extra(migration: Migration, tables: list[QualifiedName]) -> dict:
    return {"migration": migration.name, "import_order": [str(t) for t in tables]}


def staging_folder(export_dir: Path) -> Path:
    """Where the drop writes its final export before it replaces ``export_dir``."""
    return export_dir.with_name(export_dir.name + ".final-partial")


@dataclass
class FinalExport:
    """What the drop's final export found: whether step 1's export already held every
    committed write (``unchanged``) or was replaced, and the checks that prove it."""

    manifest: Manifest
    unchanged: bool
    checks: list[Check]
    superseded: Path | None = None
    seconds: float = 0.0


def final_export(conn: psycopg.Connection, migration: Migration, tables: list[QualifiedName],
                 export_dir: Path, preliminary: Manifest,
                 *, lock_timeout: str, show_progress: bool = False) -> FinalExport:
    """Inside the drop's transaction, once writes to ``tables`` are blocked: export them
    from this transaction's snapshot into a staging folder, then

    - if every table has step 1's rows and SHA-256 (hashed from the bytes the server
      sent), step 1's export (verified before the lock) holds every committed write: it
      stays, the staging folder goes;
    - otherwise the application wrote since step 1: the final export is verified (every
      table in it, every file re-read against its size and SHA-256), fsynced, and takes
      ``export_dir``'s place; step 1's is kept beside it marked SUPERSEDED (with its
      pg_dump archive, which misses those writes).

    Any failure raises, and the caller's transaction rolls back with nothing dropped."""
    started = time.perf_counter()
    staging = staging_folder(export_dir)
    if staging.exists():  # a final export cut short earlier: ours by name and by marker
        if not (staging / INCOMPLETE).exists() and any(staging.iterdir()):
            raise ExportFailed(
                f"{staging} exists and is not a final export cut short. The transaction "
                "was rolled back; nothing was dropped.",
                next_step="move that folder away, then run the drop again.")
        shutil.rmtree(staging)
    manifest = export_in_transaction(
        conn, tables, staging, purpose=f"rollback of {migration.name} (final export, taken "
        "under the drop's write lock)", lock_timeout=lock_timeout,
        extra=export_extra(migration, tables), show_progress=show_progress)
    exported = {f.table: f.rows for f in manifest.files}
    before = {f.table: (f.rows, f.sha256) for f in preliminary.files}
    after = {f.table: (f.rows, f.sha256) for f in manifest.files}
    changed = sorted(t for t in after if before.get(t) != after[t])
    if not changed and before.keys() == after.keys() == set(map(str, tables)):
        # The bytes the server sent under the lock hash to step 1's SHA-256, and step 1's
        # files were checked against theirs before the lock: step 1's export stays.
        shutil.rmtree(staging)
        return FinalExport(preliminary, True, [Check(
            "step 1's export holds every committed write (the final export, taken under "
            "the write lock, has the same rows and SHA-256 per table)", True,
            f"identical: {sum(exported.values())} rows in {len(exported)} files",
            "identical")], seconds=time.perf_counter() - started)
    problems = [f"{t} is not in it" for t in map(str, tables) if t not in exported]
    problems += verify_files(staging, manifest)
    checks = [Check("final export taken under the write lock: every table, every file "
                    "equal to its size and SHA-256", not problems, "; ".join(problems) or
                    f"{sum(exported.values())} rows in {len(exported)} files", "equal")]
    if problems:
        raise ExportFailed(
            f"The final export in {staging} could not be verified ({'; '.join(problems)}). "
            "The transaction was rolled back; nothing was dropped.",
            next_step="check the disk holding the export folder, then run the drop again.")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    superseded = export_dir.with_name(f"{export_dir.name}.superseded-{stamp}")
    manifest.extra["superseded"] = {
        "folder": str(superseded), "created_at": preliminary.created_at,
        "changed_tables": changed,
        "note": "step 1's export, taken before writes were blocked; it and its pg_dump "
        "archive miss the writes made since. Recover from this folder's CSV files."}
    # A table whose file is step 1's, byte for byte, keeps step 1's value digest (taken
    # in step 1's snapshot, of these very rows): none is computed under the lock, where
    # it would hold writers up; a changed table is proven by its CSV's SHA-256 instead.
    kept = {f.table: f.value_digest for f in preliminary.files
            if before.get(f.table) == after.get(f.table)}
    for entry in manifest.files:
        entry.value_digest = kept.get(entry.table, "")
    write_manifest(staging, manifest)
    mark_complete(staging, manifest)  # durable before the swap, and before COMMIT
    # Until COMMIT nothing is dropped: a crash between these steps leaves the tables and
    # at worst no folder at export_dir (the export step writes a new one).
    export_dir.rename(superseded)
    mark_superseded(superseded, export_dir)
    staging.rename(export_dir)
    fsync_path(export_dir.parent)
    checks.append(Check("step 1's export replaced by the final export (the application "
                        f"wrote to {', '.join(changed)} since step 1)", True,
                        f"kept as {superseded.name}, marked SUPERSEDED", "replaced"))
    return FinalExport(manifest, False, checks, superseded,
                       seconds=time.perf_counter() - started)


def manifest_table(manifest: Manifest, export_dir: Path) -> pd.DataFrame:
    rows = [{"table": f.table, "file": f.file, "rows": f.rows, "bytes": f.bytes,
             "sha256": f.sha256[:16] + "…"} for f in manifest.files]
    archive = manifest.extra.get("archive")
    if archive:
        rows.append({"table": "(pg_dump -Fc archive)", "file": archive["file"], "rows": "",
                     "bytes": archive["bytes"], "sha256": archive["sha256"][:16] + "…"})
    frame = pd.DataFrame(rows, columns=["table", "file", "rows", "bytes", "sha256"])
    frame.attrs["folder"] = str(export_dir)
    return frame


def export_problems(conn: psycopg.Connection, migration: Migration, export_dir: Path,
                    *, check_files: bool = True) -> list[str]:
    """Why the export in ``export_dir`` cannot stand in for the live data ([] if it can):
    a missing manifest or file, a checksum mismatch, a table left out, or a row count
    that differs from the live count now."""
    try:
        manifest = read_manifest(export_dir)
    except ExportMismatch as exc:
        return [exc.message]
    problems = verify_files(export_dir, manifest) if check_files else []
    if manifest.extra.get("migration") not in (None, migration.name):
        problems.append(f"the export is of migration {manifest.extra.get('migration')!r}")
    exported = manifest.by_table()
    for found in find_in_database(conn, migration).of_kind("table"):
        name = str(QualifiedName(found.obj.schema, found.obj.name))
        if name not in exported:
            problems.append(f"{name} is not in the export")
        elif exported[name].rows != found.rows:
            problems.append(f"{name} has {found.rows} rows live, the export has "
                            f"{exported[name].rows}")
    return problems


# --- perform ----------------------------------------------------------------------------


@dataclass
class DropResult:
    migration: str
    committed: bool
    dropped: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    lock_hold_ms: float = 0.0  # tables locked ACCESS EXCLUSIVE (reads wait): DROP to COMMIT
    writes_blocked_ms: float = 0.0  # writes to the dropped tables wait: LOCK to COMMIT
    export_checks: list[Check] = field(default_factory=list)
    final_export_s: float = 0.0
    note: str = ""

    def table(self) -> pd.DataFrame:
        frame = checks_table(self.checks)
        if self.note:
            frame = pd.concat([frame, pd.DataFrame([{"check": self.note, "result": "",
                                                     "observed": "", "expected": ""}])],
                              ignore_index=True)
        return frame


def _preliminary_export(migration: Migration, export_dir: Path) -> Manifest:
    """Step 1's export, sound (every file against its SHA-256) and of this migration."""
    manifest = require_sound_export(export_dir)  # before any lock is taken
    exported_for = manifest.extra.get("migration")
    if exported_for not in (None, migration.name):
        raise ExportMismatch(
            f"The export in {export_dir} is of migration {exported_for!r}, not "
            f"{migration.name!r}. Nothing was changed.",
            next_step="point export_dir at this migration's export.")
    return manifest


def perform_drop(conn: psycopg.Connection, migration: Migration, export_dir: Path,
                 include_dependents: list[str] | tuple[str, ...] = (),
                 *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
                 require_export: bool = True, show_progress: bool = False) -> DropResult:
    """Drop what the migration created, in one transaction (see the module's docstring).
    ``conn`` must be a read-write session that is not in a transaction. With
    ``require_export`` (always, from notebook 20) step 1's export must be sound, and the
    final export taken under the write lock is in ``export_dir`` before COMMIT."""
    lock_timeout = lock_timeout_setting(lock_timeout)
    export_dir = Path(export_dir)
    preliminary = _preliminary_export(migration, export_dir) if require_export else None
    result = DropResult(migration.name, committed=False)
    with translated_errors(conn):
        try:
            with conn.transaction():
                # READ COMMITTED whatever the session's default: the final export's
                # snapshot must be taken after the write lock is granted, not at BEGIN.
                conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                bulk_step_limits(conn, lock_timeout)
                take_playbook_lock(conn, lock_scope(migration))
                # Taken before any table lock (nothing of ours is locked yet, and writes
                # to the migration's tables are not held up by it); the proof before
                # COMMIT compares the catalog and this transaction's own row counters.
                before = protected_state(conn, migration,
                                         with_checksums=not counts_changes(conn))
                tables = export_order(conn, find_in_database(conn, migration,
                                                              count_rows=False))
                blocked = None
                if tables:
                    # Writers wait from here to COMMIT; readers until the first DROP.
                    conn.execute(block_writes_statement(tables))
                    blocked = time.perf_counter()
                # Under the lock; the rows are counted by the final export's COPY.
                inventory = find_in_database(conn, migration,
                                             count_rows=preliminary is None)
                if preliminary is not None and tables:
                    final = final_export(conn, migration, tables, export_dir, preliminary,
                                         lock_timeout=lock_timeout,
                                         show_progress=show_progress)
                    exported = final.manifest.by_table()
                    for found in inventory.of_kind("table"):
                        found.rows = exported[str(QualifiedName(found.obj.schema,
                                                                found.obj.name))].rows
                    result.export_checks = final.checks
                    result.final_export_s = final.seconds
                plan = build_drop_plan(conn, migration, include_dependents,
                                       inventory=inventory)
                if plan.nothing_to_do:
                    result.note = "every object of the migration is absent: rollback not needed"
                    return result
                started = time.perf_counter()
                for step in plan.steps:
                    if step.statement is not None:
                        conn.execute(step.statement)
                        result.dropped.append(step.what)
                result.checks = result.export_checks + _verify_after_drop(
                    conn, migration, before, plan)
                require_all_pass(
                    result.checks, "Verification inside the transaction failed",
                    outcome="The transaction was rolled back; nothing was dropped.",
                    next_step="read the checks; find out what changed the protected tables "
                    "before running again.")
            # From the first DROP (ACCESS EXCLUSIVE) to the end of COMMIT.
            finished = time.perf_counter()
            result.lock_hold_ms = (finished - started) * 1000
            if blocked is not None:
                result.writes_blocked_ms = (finished - blocked) * 1000
            result.committed = True
        except pgerrors.DependentObjectsStillExist as exc:
            raise DependentObjectsExist(
                f"PostgreSQL refused a drop because something else depends on it "
                f"({str(exc).splitlines()[0]}). The transaction was rolled back; nothing "
                "was dropped.",
                next_step="run the review again to list the dependents.") from None
    return result


def rows_dropped(export_dir: Path) -> dict[str, int]:
    """Rows per table the drop deleted: the export's counts, which the drop proved equal
    to the live counts under its lock."""
    try:
        return {f.table: f.rows for f in read_manifest(Path(export_dir)).files}
    except (ExportMismatch, OSError, ValueError):
        return {}


def _verify_after_drop(conn: psycopg.Connection, migration: Migration,
                       before: dict[str, ProtectedTable], plan: DropPlan) -> list[Check]:
    checks = []
    # Looked up by name, from the inventory taken before the DROP: parsing the migration
    # again (find_in_database) would cost tens of milliseconds under the locks.
    left = [f.obj.display for f in plan.inventory.present if object_oid(conn, f.obj)]
    checks.append(Check("every object of the migration is gone", not left,
                        ", ".join(left) or "none left", "none left"))
    return checks + protected_tables_untouched(conn, before, plan)
