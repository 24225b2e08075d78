"""A migration to roll back by reverse plan, as notebooks 20 and 21 roll it back and
recover it: the same cells as for a change set, each step answered by the reverse plan.

The state before the migration comes from the project's migrations folder (shadow
databases) or from a backup taken before it; the notebook says which.

Every step rebuilds the two shadow databases on the scratch server (a second or two each)
instead of keeping state between cells, so a cell re-run, or run alone, sees what is true
now; they are dropped when the step ends.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import journal
from ..db.scratch_servers import scratch_server
from ..errors import ConfigurationError, ExportMismatch
from ..exports import MANIFEST, export_tables, read_manifest, require_sound_export, verify_files
from ..flags import flag
from ..verification import Check, checks_table
from . import plan as planning
from .data import data_at_stake
from .from_backup import backup_states
from .plan import repair_command
from .rollback import HISTORY_FILE, recover_migration, roll_back_migration
from .shadow import MigrationFile, MigrationsFolder, migration_file, read_migrations_folder


def _scratch_admin_url(scratch_url_env: str) -> str:
    """The server the shadow databases go to: the one ``scratch_url_env`` names, else the
    best local PostgreSQL (scratch_servers). Never the target's own server."""
    return scratch_server(scratch_url_env).url


@dataclass
class ReversibleMigration:
    """One migration (a file of a ``supabase/migrations`` folder, or any ``.sql`` file),
    with where the state before it comes from: the folder, else ``backup``."""

    target: MigrationFile
    folder: MigrationsFolder | None = None
    backup: str = ""
    scratch_url_env: str = ""
    restore_dropped: bool = False  # put back what the migration dropped, from the backup

    @property
    def name(self) -> str:
        return self.target.path.stem

    @property
    def protected_tables(self) -> list:
        return []

    def table(self) -> pd.DataFrame:
        if self.backup:
            source = f"the backup {self.backup}, restored on the scratch server"
        else:
            source = (f"the {len(self.folder.before(self.target.version))} earlier migrations "
                      f"of {self.folder.path}, applied to a Supabase-like base (shadow database)")
        rows = [
            ("migration", str(self.target.path)),
            ("state before it, from", source),
            ("newer migrations in the folder",
             ", ".join(f.label for f in self.folder.after(self.target.version))
             if self.folder else "(no migrations folder given: not checked)"),
            ("scratch server", scratch_server(self.scratch_url_env).describe()),
        ]
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")

    @contextmanager
    def states(self):
        if self.backup:
            with backup_states(self.backup, self.target, self.scratch_url_env) as states:
                yield states
            return
        with planning.shadow_states(_scratch_admin_url(self.scratch_url_env), self.folder,
                                    self.target) as states:
            yield states

    # -- notebook 20 ---------------------------------------------------------------------

    def review(self, run) -> tuple[planning.ReversePlan, pd.DataFrame]:
        """(the reverse plan, the data at stake), read-only."""
        with self.states() as states, run.connect(read_only=True) as live:
            plan = planning.plan_reversal(live, states, self.folder, self.target)
            stake = data_at_stake(states.before, states.after)
        return plan, stake

    def dependents_table(self, run) -> pd.DataFrame:
        """The drift (shown, never touched) and the chain check (raises while newer
        migrations are applied)."""
        plan, _stake = self.review(run)
        rows = [("drift: live differs from the state right after the migration", s)
                for s in plan.drift]
        rows += [(f"newer migration applied: {label}", ", ".join(objects))
                 for label, objects in plan.newer_applied.items()]
        plan.require_newest()
        if not rows:
            rows = [("(none)", "live is exactly the state right after the migration")]
        return pd.DataFrame(rows, columns=["what", "detail"])

    def export_problems(self, export_dir: Path) -> list[str]:
        problems = verify_files(export_dir, read_manifest(export_dir))
        return problems

    def export(self, run, export_dir: Path) -> pd.DataFrame:
        """A first export of the data at stake (read-only); the rollback exports again
        under its write-blocking locks, and that is the export the recovery uses."""
        run.require_open_gates()
        with self.states() as states:
            stake = data_at_stake(states.before, states.after)
        with run.connect(read_only=True, purpose=f"{run.notebook}:export") as live:
            manifest = export_tables(live, stake.tables_to_export, preview_folder(export_dir),
                                     purpose=f"preview of the rollback of {self.target.label}",
                                     extra=stake.manifest_extra())
        return pd.DataFrame([{"table": f.table, "rows": f.rows, "sha256": f.sha256[:16]}
                             for f in manifest.files])

    def recovery_plan(self, export_dir: Path) -> pd.DataFrame:
        """What execute mode will run, in order."""
        manifest = require_sound_export(Path(export_dir))
        created = manifest.extra.get("created_tables", [])
        added = manifest.extra.get("added_columns", {})
        rows = [(1, f"re-apply {self.target.label}", "the whole file, statement by statement")]
        rows += [(2, f"put back {f.table}: {f.rows} rows", "replace the rows the migration "
                  "seeds, generated columns recomputed, triggers paused, foreign keys between "
                  "the refilled tables set aside and added back")
                 for f in manifest.files if f.table in created]
        rows += [(2, f"put back {table}.{', '.join(cols)}", "UPDATE by primary key from the "
                  "export") for table, cols in added.items()]
        if any(f.file == HISTORY_FILE for f in manifest.files):
            repair = repair_command(self.target.version, "applied")
            rows.append((2, "put the migration's row back in Supabase's history",
                         f"the exported row; the same as `{repair}`"))
        rows += [(3, "move sequences past the highest id", "setval, forward only"),
                 (4, "prove every table equals its export and the schema equals the state right "
                  "after the migration", "else ROLLBACK")]
        return pd.DataFrame(rows, columns=["step", "does", "how"])

    def roll_back(self, run, export_dir: Path, *, lock_timeout: str) -> pd.DataFrame:
        """Execute: the rollback in one transaction. Review: the plan that would run."""
        with self.states() as states:
            with run.connect(read_only=True) as live:
                plan = planning.plan_reversal(live, states, self.folder, self.target)
                stake = data_at_stake(states.before, states.after)
            if not run.executing:
                return checks_table([Check("review mode: nothing was changed", True,
                                           f"{len(plan.statements)} statements would run",
                                           "mode='execute' to perform")])
            run.require_open_gates()
            with run.connect(read_only=False, purpose=f"{run.notebook}:drop") as live:
                result = roll_back_migration(live, plan, states, stake, Path(export_dir),
                                             lock_timeout=lock_timeout,
                                             put_back=self.restore_dropped)
        journal.committed("the rollback", [self.target.label + " reversed"], result.exported,
                          f"{len(result.statements)} statements; export {export_dir}")
        return checks_table(result.checks())

    # -- notebook 21 ---------------------------------------------------------------------

    def check_export(self, export_dir: Path) -> pd.DataFrame:
        export_dir = Path(export_dir)
        if not (export_dir / MANIFEST).exists():
            raise ExportMismatch(
                f"There is no export in {export_dir}. Nothing was changed.",
                next_step="pass the export folder the rollback of this migration wrote.")
        manifest = require_sound_export(export_dir)
        return pd.DataFrame([{"table": f.table, "rows": f.rows, "sha256": f.sha256[:16]}
                             for f in manifest.files])

    def recover(self, run, export_dir: Path, *, lock_timeout: str) -> pd.DataFrame:
        manifest = require_sound_export(Path(export_dir))
        if not run.executing:
            return checks_table([Check("review mode: nothing was re-applied", True,
                                       f"{len(manifest.files)} exported tables would be put "
                                       "back", "mode='execute' to perform")])
        run.require_open_gates()
        with self.states() as states, run.connect(read_only=False,
                                                 purpose=f"{run.notebook}:recover") as live:
            result = recover_migration(live, self.target, states, Path(export_dir),
                                       lock_timeout=lock_timeout)
        journal.committed("the recovery", [self.target.label + " re-applied"], result.restored,
                          f"sequences: {', '.join(result.sequences) or 'none'}")
        return checks_table(result.checks())


def preview_folder(export_dir: Path) -> Path:
    """Where the preview export goes: beside the rollback's own export, never in it."""
    export_dir = Path(export_dir)
    return export_dir.with_name(export_dir.name + ".preview")


def load_reversible_migration(migration: str, *, migrations_folder: str = "",
                              backup: str = "", scratch_url_env: str = "",
                              restore_dropped_data: object = False) -> ReversibleMigration:
    """``migration`` (a version or file name in ``migrations_folder``, or a path to a .sql
    file) with the source of the state before it: ``backup`` when given, else the folder."""
    if not migrations_folder and not backup:
        raise ConfigurationError(
            "Reversing a migration needs the state before it: give migrations_folder (the "
            "project's supabase/migrations) or backup (taken before the migration). Nothing "
            "was changed.",
            next_step="set migrations_folder or backup in the parameters.")
    restore_dropped = flag(restore_dropped_data, "restore_dropped_data")
    if restore_dropped and not backup:
        raise ConfigurationError(
            "restore_dropped_data puts back what the migration dropped from the backup taken "
            "before it, and no backup was given. Nothing was changed.",
            next_step="pass backup (a snapshot or backup taken before the migration), or "
            "leave restore_dropped_data false.")
    folder = read_migrations_folder(migrations_folder) if migrations_folder else None
    if folder is not None:
        target = folder.find(migration)
    else:
        target = migration_file(migration)
    return ReversibleMigration(target, folder, str(backup), scratch_url_env, restore_dropped)
