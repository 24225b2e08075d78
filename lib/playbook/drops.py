"""Removing a migration's objects safely (Rollback Script 2 of the procedure document).

:func:`build_drop_plan` turns what the migration created (``migration_objects``) and what
depends on it (``dependencies``) into ``psycopg.sql`` statements in dependency order,
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

from . import journal
from .connecting import bulk_step_limits, lock_timeout_setting
from .dependencies import (
    Dependent,
    check_include_dependents,
    dependents_table,
    find_dependents,
    require_no_unlisted_dependents,
)
from .errors import DependentObjectsExist, ExportFailed, ExportMismatch, VerificationFailed
from .exports import (
    INCOMPLETE,
    MANIFEST,
    Manifest,
    dump_archive,
    export_in_transaction,
    export_statement,
    export_tables,
    fsync_path,
    mark_complete,
    mark_superseded,
    read_manifest,
    require_sound_export,
    verify_files,
    write_manifest,
)
from .fingerprint import table_checksum
from .gates import Gate
from .incidents import exports_folder
from .locks import take_playbook_lock
from .migration_objects import FoundObject, Inventory, find_in_database, object_oid
from .migrations import Migration
from .names import QualifiedName
from .pgbinaries import client_program
from .queries import translated_errors
from .reversal.reversible import ReversibleMigration
from .verification import Check, checks_table

DEFAULT_LOCK_TIMEOUT = "2s"

# The document's five STOP questions, then its prerequisites.
STOP_QUESTIONS = {
    "recent_backup": "Do you have a recent database backup?",
    "backup_tested": "Have you tested restoring from that backup?",
    "data_exported": "Have you exported the migration's data separately? (the next step "
    "exports it; the drop blocks writes to the tables and takes the final export first)",
    "no_other_way": "Is there NO other way to fix the issue (fix forward, partial rollback)?",
    "team_notified": "Has the team been notified?",
    "maintenance_window": "Is a maintenance window scheduled, with the application stopped "
    "(no new writes)?",
    "scripts_reviewed": "Have you reviewed the drop statements shown above?",
    "understand_data_loss": "Do you understand what data will be lost (the row counts "
    "above)?",
}


def lock_scope(migration: Migration) -> str:
    """The advisory lock's scope: one operator at a time per migration."""
    return f"migration:{migration.name}"


def default_export_dir(migration: Migration, incident_id: str = "",
                       export_dir: str = "") -> Path:
    """``export_dir`` if given; else the incident's ``exports/<migration>`` folder (an
    incident named after the UTC start time when there is no incident id)."""
    if export_dir:
        return Path(export_dir).expanduser().resolve()
    return exports_folder(incident_id.strip(), migration.name)


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
    oids = {t.oid: t for t in tables}
    edges = conn.execute(
        "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid = ANY(%s) AND confrelid = ANY(%s) AND conrelid <> confrelid",
        (list(oids), list(oids)),
    ).fetchall()
    referenced_by = {oid: set() for oid in oids}  # parent -> children still standing
    for child, parent in edges:
        referenced_by[parent].add(child)
    ordered: list[FoundObject] = []
    remaining = [t.oid for t in tables]
    while remaining:
        free = [o for o in remaining if not referenced_by[o] & set(remaining)]
        if not free:  # a cycle of foreign keys: DROP TABLE of them all at once copes
            free = remaining[:1]
        for oid in free:
            ordered.append(oids[oid])
            remaining.remove(oid)
    return ordered


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
    plan.before = _before_drop_steps(_export_order(conn, inventory))
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


def review_drop(run, migration: Migration, include_dependents: list[str] = ()) -> DropPlan:
    """The plan, built read-only (review mode shows exactly what execute would run)."""
    if isinstance(migration, ReversibleMigration):
        return migration.review(run)[0]
    with run.connect(read_only=True, purpose=f"{run.notebook}:review") as conn:
        return build_drop_plan(conn, migration, include_dependents)


def inspect_migration(run, migration: Migration) -> Inventory:
    """Step 2: what the migration created, which of it exists, with row counts (for a
    migration reversed by schema diff: the data at stake)."""
    if isinstance(migration, ReversibleMigration):
        return migration.review(run)[1]
    with run.connect(read_only=True) as conn:
        return find_in_database(conn, migration)


def inspect_dependents(run, migration: Migration,
                       include_dependents: list[str] = ()) -> pd.DataFrame:
    """Step 3: what else would go. Shows the table, then raises DependentObjectsExist while
    any outside object is not named in include_dependents."""
    from IPython.display import display

    include_dependents = check_include_dependents(include_dependents)
    if isinstance(migration, ReversibleMigration):
        return migration.dependents_table(run)
    with run.connect(read_only=True) as conn:
        dependents = find_dependents(conn, find_in_database(conn, migration,
                                                            count_rows=False))
    frame = dependents_table(dependents, include_dependents)
    if dependents:
        display(frame)
    require_no_unlisted_dependents(dependents, include_dependents)
    if frame.empty:
        return pd.DataFrame([{"outside object": "(none)", "kind": "",
                              "would be dropped": "nothing outside the migration depends on it"}])
    return frame


# --- the gate ---------------------------------------------------------------------------


def rollback_gate(run, migration: Migration, export_dir: Path) -> Gate:
    """The STOP questions and prerequisites, pre-filled from ``run.answers``.

    The export question is verified against the live data when a manifest is already in
    ``export_dir`` (a failed check closes the gate). Without one (the usual case: notebook
    20 exports right after this gate) nothing can be verified yet, and the question says
    so instead of showing a check: the drop itself blocks writes to the tables and takes
    the final export before dropping anything (:func:`perform_drop`)."""
    export_dir = Path(export_dir)
    questions = dict(STOP_QUESTIONS)
    if not (export_dir / MANIFEST).exists():
        questions["data_exported"] = (
            f"Have you exported the migration's data separately? Not verified yet: there is "
            f"no export in {export_dir}; the next step exports it there and it will be "
            "verified before the drop (the drop blocks writes to the tables and takes the "
            "final export, holding every committed write, before it drops anything).")
    gate = Gate(f"Rollback of {migration.name}: STOP", questions, run.answers)
    if (export_dir / MANIFEST).exists():
        if isinstance(migration, ReversibleMigration):
            problems = migration.export_problems(export_dir)
        else:
            with run.connect(read_only=True) as conn:
                problems = export_problems(conn, migration, export_dir)
        gate.verify("data_exported", not problems,
                    "; ".join(problems) or f"verified: the manifest in {export_dir} matches "
                    "the live data")
    return gate


# --- the export -------------------------------------------------------------------------


def export_migration_data(run, migration: Migration, export_dir: Path,
                          *, archive: bool = True, show_progress: bool = True) -> pd.DataFrame:
    """Step 1: every table of the migration to CSV with rows and SHA-256 in manifest.json
    (one snapshot), plus a pg_dump custom-format archive of the tables. Read-only for the
    database; writes only into ``export_dir``. Runs only while the run's gates are open.
    (A migration reversed by schema diff exports what its reversal destroys beside it, as a
    preview: its rollback exports again under its write lock, into ``export_dir``.)"""
    if isinstance(migration, ReversibleMigration):
        return migration.export(run, export_dir)
    run.require_open_gates()
    export_dir = Path(export_dir)
    with run.connect(read_only=True, purpose=f"{run.notebook}:export") as conn:
        tables = _export_order(conn, find_in_database(conn, migration, count_rows=False))
        major = conn.info.server_version // 10000
        conn.commit()
        # A pg_dump too old for the server is refused before any file is written, so no
        # CSV-only export is ever left for a drop to accept.
        pg_dump = client_program("pg_dump", major) if archive and tables else None
        # INCOMPLETE until the archive is written too (mark_complete below).
        manifest = export_tables(conn, tables, export_dir, purpose=f"rollback of "
                                 f"{migration.name}", show_progress=show_progress,
                                 extra=_export_extra(migration, tables), complete=False)
    if archive and tables:
        manifest.extra["archive"] = dump_archive(run.url(), tables, export_dir / (
            f"{migration.name}.dump"), server_major=major, pg_dump=pg_dump)
        write_manifest(export_dir, manifest)
    mark_complete(export_dir, manifest)
    return manifest_table(manifest, export_dir)


def _export_order(conn: psycopg.Connection, inventory: Inventory) -> list[QualifiedName]:
    """The migration's tables, parents first (the order a re-import needs)."""
    return [QualifiedName(f.obj.schema, f.obj.name)
            for f in _table_order(conn, inventory.of_kind("table"))][::-1]


def _export_extra(migration: Migration, tables: list[QualifiedName]) -> dict:
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
        extra=_export_extra(migration, tables), show_progress=show_progress)
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


# --- the protected tables ---------------------------------------------------------------

# In one round trip: the table and its inheritance children / partitions (rows of a
# partitioned table live in its partitions), each with the file holding its rows; its
# columns; its constraints; and what this transaction (savepoints included, even rolled-back
# ones) has inserted, updated and deleted in them so far, from this backend's own pending
# counters. NULL when the table does not exist.
_PROTECTED_IDENTITY = """
WITH RECURSIVE members(oid) AS (
  SELECT to_regclass(%(table)s)::oid
  UNION SELECT i.inhrelid FROM pg_inherits i JOIN members m ON i.inhparent = m.oid
), top AS (SELECT to_regclass(%(table)s)::oid AS oid)
SELECT
  (SELECT array_agg(ARRAY[c.oid::bigint, c.relfilenode::bigint] ORDER BY c.oid)
   FROM members m JOIN pg_class c ON c.oid = m.oid),
  (SELECT array_agg(ARRAY[attname::text, format_type(atttypid, atttypmod), attnotnull::text]
                    ORDER BY attnum)
   FROM pg_attribute, top WHERE attrelid = top.oid AND attnum > 0 AND NOT attisdropped),
  (SELECT array_agg(ARRAY[conname::text, pg_get_constraintdef(pg_constraint.oid)])
   FROM pg_constraint, top WHERE conrelid = top.oid),
  (SELECT ARRAY[coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),
                coalesce(sum(n_tup_del), 0)]::bigint[]
   FROM pg_stat_xact_all_tables WHERE relid IN (SELECT oid FROM members))
FROM top WHERE top.oid IS NOT NULL
"""


@dataclass(frozen=True)
class ProtectedTable:
    """What a protected table is, from the catalog: its relations and the files holding
    their rows, its columns and constraints, and its row count when first looked at."""

    table: QualifiedName
    relations: tuple[tuple[int, int], ...]  # (oid, relfilenode) of the table and its children
    columns: tuple[tuple[str, str, bool], ...]
    constraints: frozenset[tuple[str, str]]
    rows: int
    checksum: str = ""  # only when track_counts is off (see protected_tables_untouched)


def _protected_identity(conn: psycopg.Connection, table: QualifiedName):
    """(relations, columns, constraints, (inserted, updated, deleted)) or None if the
    table does not exist."""
    row = conn.execute(_PROTECTED_IDENTITY,
                       {"table": table.identifier.as_string(conn)}).fetchone()
    if row is None:
        return None
    relations, columns, constraints, changed = row
    return (tuple(tuple(r) for r in relations), tuple(tuple(c) for c in columns or ()),
            frozenset(tuple(c) for c in constraints or ()), tuple(changed))


def counts_changes(conn: psycopg.Connection) -> bool:
    """Whether this session counts its row changes (``track_counts``), which the proof of
    :func:`protected_tables_untouched` relies on."""
    return conn.execute("SELECT current_setting('track_counts')::boolean").fetchone()[0]


def protected_state(conn: psycopg.Connection, migration: Migration,
                    *, with_checksums: bool = False) -> dict[str, ProtectedTable]:
    """The migration's protected tables as they are now (missing ones are left out).
    Catalog look-ups and one count(*) each; full checksums only if asked."""
    state = {}
    for table in migration.protected_tables:
        identity = _protected_identity(conn, table)
        if identity is None:
            continue
        relations, columns, constraints, _changed = identity
        if with_checksums:
            rows, checksum = table_checksum(conn, table.schema, table.name)
        else:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                table.identifier)).fetchone()[0]
            checksum = ""
        state[str(table)] = ProtectedTable(table, relations, columns, constraints, rows,
                                           checksum)
    return state


def _planned_constraint_drops(plan: DropPlan | None) -> set[tuple[str, str, str]]:
    """(schema, table, constraint) the operator named in include_dependents: their
    disappearance from a protected table is the point of the rollback, not damage."""
    if plan is None:
        return set()
    return {tuple(d.object_names[:3]) for d in plan.included
            if d.kind == "table constraint" and len(d.object_names) >= 3}


def protected_tables_untouched(conn: psycopg.Connection, before: dict[str, ProtectedTable],
                               plan: DropPlan | None = None) -> list[Check]:
    """Checks, inside the drop's transaction, that each protected table still holds what
    it held when ``before`` was taken, in catalog look-ups that take milliseconds.

    Why this proves it without reading the rows again: a table's rows can change in only
    two ways. (1) Row by row (INSERT, UPDATE, DELETE, COPY, MERGE, cascades, triggers,
    event triggers): PostgreSQL counts each such change in ``pg_stat_xact_all_tables``
    for the transaction that makes it, including its savepoints, so zero inserted,
    updated and deleted rows means this transaction changed no row. (2) Wholesale
    (TRUNCATE, a rewriting ALTER TABLE, VACUUM FULL, DROP and CREATE): that gives the
    table a new oid or a new file (``relfilenode``) or other columns, all compared here.
    Writes committed meanwhile by the application belong to other transactions and do
    not make the rollback fail, as a re-count would. Constraints the operator named in
    ``include_dependents`` are expected to be gone; any other difference fails.

    With ``track_counts`` off nothing is counted, so the rows themselves are compared
    (``before`` must then hold checksums, see :func:`protected_state`); slow on large
    tables, and said so in the check's name."""
    checks: list[Check] = []
    planned = _planned_constraint_drops(plan)
    counted = counts_changes(conn)
    for name, was in before.items():
        table = was.table
        identity = _protected_identity(conn, table)
        if identity is None:
            checks.append(Check(f"{name} still exists", False, "missing", "present"))
            continue
        relations, columns, constraints, (inserted, updated, deleted) = identity
        differences = []
        if relations != was.relations:
            differences.append("its storage was replaced (TRUNCATE, rewrite or re-creation)")
        if columns != was.columns:
            differences.append("its columns changed")
        expected = {c for c in was.constraints
                    if (table.schema, table.name, c[0]) not in planned}
        if constraints != expected:
            gone = sorted(c[0] for c in expected - constraints)
            new = sorted(c[0] for c in constraints - expected)
            differences.append("constraints " + ", ".join(
                ([f"lost {', '.join(gone)}"] if gone else [])
                + ([f"gained {', '.join(new)}"] if new else [])))
        checks.append(Check(f"{name}: same table, storage, columns and constraints",
                            not differences, "; ".join(differences) or "unchanged",
                            "unchanged"))
        if counted:
            checks.append(Check(
                f"{name} ({was.rows} rows before): no row inserted, updated or deleted by "
                "this transaction", inserted == updated == deleted == 0,
                f"{inserted} inserted, {updated} updated, {deleted} deleted",
                "0 inserted, 0 updated, 0 deleted"))
        else:
            rows, checksum = table_checksum(conn, table.schema, table.name)
            checks.append(Check(f"{name} rows and checksum unchanged (track_counts is off: "
                                "compared row by row)",
                                (rows, checksum) == (was.rows, was.checksum),
                                f"{rows} rows, {checksum[:12]}",
                                f"{was.rows} rows, {was.checksum[:12]}"))
    return checks


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
                tables = _export_order(conn, find_in_database(conn, migration,
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
                if not all(c.passed for c in result.checks):
                    raise _RollBack()
            # From the first DROP (ACCESS EXCLUSIVE) to the end of COMMIT.
            finished = time.perf_counter()
            result.lock_hold_ms = (finished - started) * 1000
            if blocked is not None:
                result.writes_blocked_ms = (finished - blocked) * 1000
            result.committed = True
        except _RollBack:
            failed = "; ".join(f"{c.name}: observed {c.observed}, expected {c.expected}"
                               for c in result.checks if not c.passed)
            raise VerificationFailed(
                f"Verification inside the transaction failed ({failed}). The transaction was "
                "rolled back; nothing was dropped.",
                next_step="read the checks; find out what changed the protected tables "
                "before running again.") from None
        except pgerrors.DependentObjectsStillExist as exc:
            raise DependentObjectsExist(
                f"PostgreSQL refused a drop because something else depends on it "
                f"({str(exc).splitlines()[0]}). The transaction was rolled back; nothing "
                "was dropped.",
                next_step="run the review again to list the dependents.") from None
    return result


def _rows_dropped(export_dir: Path) -> dict[str, int]:
    """Rows per table the drop deleted: the export's counts, which the drop proved equal
    to the live counts under its lock."""
    try:
        return {f.table: f.rows for f in read_manifest(Path(export_dir)).files}
    except (ExportMismatch, OSError, ValueError):
        return {}


class _RollBack(Exception):
    """Leave the transaction block so that it rolls back."""


def _verify_after_drop(conn: psycopg.Connection, migration: Migration,
                       before: dict[str, ProtectedTable], plan: DropPlan) -> list[Check]:
    checks = []
    # Looked up by name, from the inventory taken before the DROP: parsing the migration
    # again (find_in_database) would cost tens of milliseconds under the locks.
    left = [f.obj.display for f in plan.inventory.present if object_oid(conn, f.obj)]
    checks.append(Check("every object of the migration is gone", not left,
                        ", ".join(left) or "none left", "none left"))
    return checks + protected_tables_untouched(conn, before, plan)


def rollback(run, migration: Migration, export_dir: Path,
             include_dependents: list[str] = (),
             *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> pd.DataFrame:
    """Step 3, Perform: in execute mode drop (see :func:`perform_drop`); in review mode
    say what would be dropped and change nothing."""
    lock_timeout = lock_timeout_setting(lock_timeout)  # refused in review mode too
    if isinstance(migration, ReversibleMigration):
        return migration.roll_back(run, export_dir, lock_timeout=lock_timeout)
    if not run.executing:
        plan = review_drop(run, migration, include_dependents)
        return pd.DataFrame([{"check": "review mode: nothing was dropped", "result": "",
                              "observed": f"{len(plan.statements)} statements would run",
                              "expected": "mode='execute' to perform"}])
    run.require_open_gates()
    with run.connect(purpose=f"{run.notebook}:drop") as conn:
        result = perform_drop(conn, migration, export_dir, include_dependents,
                              lock_timeout=lock_timeout, show_progress=True)
    if result.committed:  # what the record must say, even if nothing else can be written
        journal.committed("the drop", result.dropped, _rows_dropped(export_dir),
                          f"tables locked {result.lock_hold_ms:.0f} ms")
    frame = result.table()
    if result.committed:
        frame = pd.concat([frame, pd.DataFrame([{
            "check": "committed", "result": "PASS",
            "observed": f"tables locked {result.lock_hold_ms:.0f} ms; writes to them "
            f"blocked {result.writes_blocked_ms:.0f} ms", "expected": ""}])],
            ignore_index=True)
    # Attached last: pd.concat drops attrs its inputs do not share.
    frame.attrs["lock_hold_ms"] = result.lock_hold_ms
    frame.attrs["writes_blocked_ms"] = result.writes_blocked_ms
    return frame
