"""Roll back one migration and recover it, each in one transaction on live.

Rollback: the playbook's advisory lock; ``lock_timeout``; EXCLUSIVE locks on every table at
stake (reads go on, writes wait), so the export taken next holds every committed write; the
export; the Supabase migration-history row set aside; the reverse plan; the schema proof;
the manifest written; COMMIT.

Recovery: the export proven sound; the migration re-applied; the exported rows put back
(seeded rows replaced, generated columns recomputed, sequences moved past the highest id)
and proven equal to the export; the schema proven equal to the state right after the
migration (less the drift live had); the history row put back; COMMIT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from ..db.catalog import advance_sequences
from ..db.connecting import bulk_step_limits
from ..db.locks import take_playbook_lock
from ..db.names import QualifiedName
from ..errors import ExportFailed, ExportMismatch, PreconditionFailed, VerificationFailed
from ..exports import (
    ExportedFile,
    export_in_transaction,
    export_query,
    mark_complete,
    require_finished,
    require_sound_export,
    verify_files,
    write_manifest,
)
from ..verification import Check
from .data import DataAtStake, lock_against_writes, put_back_dropped, restore_at_stake
from .plan import ReversePlan, ShadowStates, history_removal, perform_reversal
from .schema_diff import schema_plan
from .shadow import MigrationFile, apply_sql

HISTORY_FILE = "supabase_migrations.schema_migrations.csv"
HISTORY = QualifiedName("supabase_migrations", "schema_migrations")


def lock_scope(target: MigrationFile) -> str:
    return f"migration:{target.version}"


@dataclass
class RollbackResult:
    statements: list[str]
    export_dir: Path
    exported: dict[str, int] = field(default_factory=dict)
    history_removed: bool = False
    dropped_put_back: dict[str, int] = field(default_factory=dict)

    def checks(self) -> list[Check]:
        """What the transaction proved before it committed."""
        return [
            Check("export taken under the write lock, verified against its SHA-256, fsynced",
                  True, f"{sum(self.exported.values()):,} rows in {len(self.exported)} files, "
                  f"{self.export_dir}", "before COMMIT"),
            Check("reverse plan ran; live equals the state before the migration (less its "
                  "drift)", True, f"{len(self.statements)} statements", "equal"),
            *([Check("what the migration dropped put back from the backup", True,
                     ", ".join(f"{t}: {n:,} rows" for t, n in self.dropped_put_back.items()),
                     "from the state before")] if self.dropped_put_back else []),
            Check("committed", True, "Supabase history row removed" if self.history_removed
                  else "no Supabase history row for this version", ""),
        ]

    def table(self) -> pd.DataFrame:
        rows = [("reverse plan statements run", len(self.statements)),
                ("export folder", str(self.export_dir))]
        rows += [(f"rows exported from {t}", n) for t, n in self.exported.items()]
        rows.append(("Supabase history row removed", "yes" if self.history_removed else "no"))
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")




def _require_idle(conn: psycopg.Connection) -> None:
    """The change must be its own transaction: inside another one it would be a savepoint
    that nothing commits."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise PreconditionFailed(
            "The session is inside a transaction, so the change could not commit on its own. "
            "Nothing was changed.",
            next_step="commit or roll back the session's transaction first.")


def roll_back_migration(conn: psycopg.Connection, plan: ReversePlan, states: ShadowStates,
                        stake: DataAtStake, export_dir: Path, *,
                        lock_timeout: str = "2s", put_back: bool = False) -> RollbackResult:
    """Export what the reversal destroys and reverse the migration, all or nothing. With
    ``put_back`` (the state before came from a backup or snapshot holding the rows), what
    the migration itself dropped gets its rows back from it."""
    plan.require_newest()
    export_dir = Path(export_dir)
    result = RollbackResult(statements=[], export_dir=export_dir)
    _require_idle(conn)
    with conn.transaction():
        # READ COMMITTED whatever the session's default: the export's snapshot must be
        # taken after the write lock is granted, not at BEGIN.
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        bulk_step_limits(conn, lock_timeout)
        take_playbook_lock(conn, lock_scope(plan.migration))
        lock_against_writes(conn, stake.tables_to_export)
        manifest = export_in_transaction(
            conn, stake.tables_to_export, export_dir, lock_timeout=lock_timeout,
            purpose=f"rollback of {plan.migration.label} (taken under its write lock)",
            extra={**stake.manifest_extra(), "migration": plan.migration.label,
                   "drift": plan.drift})
        if plan.history_versions:
            rows, size, digest = export_query(conn, sql.SQL(
                "SELECT * FROM supabase_migrations.schema_migrations WHERE version = {}"
            ).format(sql.Literal(plan.migration.version)), export_dir / HISTORY_FILE)
            manifest.files.append(ExportedFile(str(HISTORY), HISTORY.schema, HISTORY.name,
                                               HISTORY_FILE, rows, size, digest))
            conn.execute(history_removal(plan.migration.version))
            result.history_removed = True
        result.statements = perform_reversal(conn, plan, states)
        if put_back:
            result.dropped_put_back = put_back_dropped(conn, states.before, stake)
        write_manifest(export_dir, manifest)
        problems = verify_files(export_dir, manifest)
        if problems:
            raise ExportFailed(
                f"The export in {export_dir} could not be verified ({'; '.join(problems)}). "
                "The transaction is rolled back: nothing was changed.",
                next_step="check the disk holding the export folder, then run again.")
        mark_complete(export_dir, manifest)  # durable before COMMIT
        result.exported = {f.table: f.rows for f in manifest.files}
    return result


@dataclass
class RecoveryResult:
    restored: dict[str, int]
    sequences: dict[str, int]
    history_restored: bool

    def checks(self) -> list[Check]:
        """What the transaction proved before it committed."""
        return [
            Check("migration re-applied; live equals the state right after it (less its "
                  "drift)", True, "equal", "equal"),
            Check("every exported table equals its export, row for row", True,
                  f"{sum(self.restored.values()):,} rows in {len(self.restored)} tables",
                  "equal"),
            Check("sequences past the highest id", True,
                  ", ".join(f"{s}: next {v}" for s, v in self.sequences.items()) or "none",
                  "past MAX"),
            Check("committed", True, "Supabase history row restored" if self.history_restored
                  else "no Supabase history row to restore", ""),
        ]

    def table(self) -> pd.DataFrame:
        rows = [(f"rows back in {t} (equal to the export)", n) for t, n in self.restored.items()]
        rows += [(f"sequence {s} next value", v) for s, v in self.sequences.items()]
        rows.append(("Supabase history row restored", "yes" if self.history_restored else "no"))
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def recover_migration(conn: psycopg.Connection, target: MigrationFile, states: ShadowStates,
                      export_dir: Path, *, lock_timeout: str = "2s") -> RecoveryResult:
    """Re-apply ``target`` and put back what its rollback exported, all or nothing."""
    require_finished(Path(export_dir))
    manifest = require_sound_export(Path(export_dir))
    if manifest.extra.get("migration") != target.label:
        raise ExportMismatch(
            f"The export in {export_dir} belongs to {manifest.extra.get('migration')!r}, not "
            f"{target.label}. Nothing was changed.",
            next_step="pass the export folder written by this migration's rollback.")
    _require_idle(conn)
    with conn.transaction():
        bulk_step_limits(conn, lock_timeout)
        take_playbook_lock(conn, lock_scope(target))
        apply_sql(conn, target.sql(), label=target.label)
        restored = restore_at_stake(conn, manifest, Path(export_dir))
        sequences: dict[str, int] = {}
        for name in manifest.extra["created_tables"]:
            table = QualifiedName(*name.split(".", 1))
            sequences.update({p.sequence: p.next_value
                              for p in advance_sequences(conn, table)})
        residual = schema_plan(conn, states.after).statements
        if residual != manifest.extra.get("drift", []):
            raise VerificationFailed(
                f"After re-applying {target.label}, live differs from the state right after "
                f"the migration by more than its drift ({'; '.join(residual[:3])[:300]}). The "
                "transaction is rolled back: nothing was changed.",
                next_step="compare the migration file with the one that was rolled back.")
        history = any(f.table == str(HISTORY) for f in manifest.files)
        if history:
            with conn.cursor() as cur, open(Path(export_dir) / HISTORY_FILE, "rb") as handle:
                with cur.copy("COPY supabase_migrations.schema_migrations FROM STDIN "
                              "WITH (FORMAT csv, HEADER)") as copying:
                    copying.write(handle.read())
    return RecoveryResult(restored=restored, sequences=sequences, history_restored=history)
