"""Change sets: what the playbook knows about one migration, kept together in one folder.

A change set is ``lib/playbook/migrations/<name>/`` holding ``migration.yaml`` (its title,
the deploy and revert scripts, the tables a rollback must leave untouched, the notebook
that rolls it back, the id column a sequence change set repairs) beside the SQL files.
:class:`Migration` is the one model of it: triage, the inventory, the sequence rollback
and the drop all read it from here. :func:`load_migration` takes that name, or a path to
such a folder, or a path to a bare ``.sql`` migration file (then nothing is protected
beyond what the drop plan checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from ..db.names import QualifiedName, parse_column_name, parse_table_name
from ..errors import ConfigurationError, ObjectNotFound
from ..verification import NamedCheck
from .objects import parse_created_objects

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
DESCRIPTION = "migration.yaml"


@dataclass
class Migration:
    """One change set: its name, its deploy SQL, and what a rollback must protect."""

    name: str
    folder: Path
    deploy: Path
    title: str = ""
    revert: Path | None = None
    data_loss: str = ""
    safety: str = ""
    protected_tables: list[QualifiedName] = field(default_factory=list)
    # The application's checks after a rollback or recovery ("Verify Application"): the
    # change set's own, never another application's (none: every project table is read).
    checks: list[NamedCheck] = field(default_factory=list)
    # The notebook that rolls it back (triage recommends it, the inventory names it).
    notebook: str = ""
    # A sequence change set: the id column (table, column) whose sequence its forward
    # script repairs (``table``/``column`` in migration.yaml).
    sequence_column: tuple[QualifiedName, str] | None = None

    @cached_property
    def tables(self) -> tuple[QualifiedName, ...]:
        """The tables its deploy SQL creates (parsed, never guessed from names); for a
        sequence change set that creates none, the table whose id it repairs."""
        created = tuple(QualifiedName(o.schema, o.name)
                        for o in parse_created_objects(self.deploy_sql()) if o.kind == "table")
        if not created and self.sequence_column:
            return (self.sequence_column[0],)
        return created

    def deploy_sql(self) -> str:
        return read_sql_file(self.deploy, "The deploy script",
                             "point `migration` at the change set's own folder or .sql file.")

    def table(self) -> pd.DataFrame:
        rows = [
            ("migration", self.name),
            ("title", self.title or "(none given)"),
            ("deploy script", self.deploy.name),
            ("revert script", self.revert.name if self.revert else "(none)"),
            ("data lost by a rollback", self.data_loss or "(not stated)"),
            ("protected tables", ", ".join(str(t) for t in self.protected_tables) or "(none)"),
        ]
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def read_sql_file(path: Path, what: str, next_step: str) -> str:
    """The text of a migration's SQL file; ConfigurationError when it cannot be read as
    UTF-8 (nothing was changed)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"{what} {path} cannot be read as UTF-8 SQL ({type(exc).__name__}: {exc}). "
            "Nothing was changed.", next_step=next_step) from None


def _refuse(what: str) -> ObjectNotFound:
    known = sorted(p.name for p in MIGRATIONS_DIR.iterdir() if (p / DESCRIPTION).exists())
    return ObjectNotFound(
        f"{what}. Nothing was changed.",
        next_step=f"pass one of the change sets {', '.join(known)}, or a path to a folder "
        f"holding {DESCRIPTION}, or a path to the migration's .sql file.",
    )


def _in_a_migrations_folder(name_or_path: object) -> bool:
    """A ``<version>_<name>.sql`` file inside a folder called ``migrations`` (as the
    Supabase CLI keeps them)."""
    if not isinstance(name_or_path, str | Path):
        return False
    path = Path(str(name_or_path)).expanduser()
    return (path.suffix == ".sql" and path.is_file() and path.parent.name == "migrations"
            and re.match(r"^\d+_.+\.sql$", path.name) is not None)


def load_migration(name_or_path: str | Path, *, migrations_folder: str = "", backup: str = "",
                   scratch_url_env: str = "", restore_dropped_data: object = False):
    """The change set called ``name_or_path`` (a folder under lib/playbook/migrations), or
    the one at that path (a change-set folder, or a bare ``.sql`` deploy script).

    With ``migrations_folder`` (a project's ``supabase/migrations``) or ``backup`` (taken
    before the migration), ``name_or_path`` is a migration reversed by schema diff instead
    (:class:`reversal.reversible.ReversibleMigration`), the folder or the backup giving the
    state to return to."""
    if not (migrations_folder or backup) and _in_a_migrations_folder(name_or_path):
        # A file of a project's supabase/migrations: its folder holds the state before it.
        migrations_folder = str(Path(str(name_or_path)).expanduser().resolve().parent)
    if migrations_folder or backup:
        # Imported here: the reversal builds on changesets, which imports this module.
        from ..reversal.reversible import load_reversible_migration

        return load_reversible_migration(str(name_or_path), migrations_folder=migrations_folder,
                                         backup=backup, scratch_url_env=scratch_url_env,
                                         restore_dropped_data=restore_dropped_data)
    if not isinstance(name_or_path, str | Path) or not str(name_or_path).strip():
        raise ConfigurationError(
            f"migration must name a change set or a path, got {name_or_path!r}. Nothing was "
            "changed.",
            next_step="pass e.g. migration='coaching_tables'.",
        )
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if "/" not in text and not text.endswith(".sql"):
        # A bare name: only a folder directly under the shipped change sets.
        if text in (".", "..") or not (MIGRATIONS_DIR / text / DESCRIPTION).exists():
            raise _refuse(f"There is no change set called {text!r}")
        path = MIGRATIONS_DIR / text
    if path.is_file() and path.suffix == ".sql":
        return Migration(name=path.stem, folder=path.parent.resolve(), deploy=path.resolve(),
                         title=path.name)
    if not (path / DESCRIPTION).is_file():
        raise _refuse(f"{text!r} is neither a change-set folder (with {DESCRIPTION}) nor a "
                      ".sql file")
    folder = path.resolve()
    try:
        description = yaml.safe_load((folder / DESCRIPTION).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(
            f"{folder / DESCRIPTION} is not valid YAML ({exc}). Nothing was changed."
        ) from None
    if not isinstance(description, dict) or not description.get("deploy"):
        raise ConfigurationError(
            f"{folder / DESCRIPTION} does not name its deploy script (key 'deploy'). Nothing "
            "was changed.",
            next_step="add `deploy: <file>.sql` to the change set's description.",
        )
    deploy = folder / str(description["deploy"])
    if not deploy.is_file():
        raise _refuse(f"The deploy script {deploy} named by {DESCRIPTION} does not exist")
    revert = folder / str(description["revert"]) if description.get("revert") else None
    return Migration(
        name=str(description.get("name") or folder.name),
        folder=folder,
        deploy=deploy,
        title=str(description.get("title") or ""),
        revert=revert,
        data_loss=str(description.get("data_loss") or ""),
        safety=str(description.get("safety") or ""),
        protected_tables=[parse_table_name(str(t))
                          for t in description.get("protected_tables") or []],
        checks=[NamedCheck.parse(item, f"{folder / DESCRIPTION}")
                for item in description.get("checks") or []],
        notebook=str(description.get("notebook") or ""),
        sequence_column=(parse_table_name(str(description["table"])),
                         parse_column_name(str(description["column"])))
        if description.get("table") and description.get("column") else None,
    )


def known_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every change set under ``folder`` (by default the ones the playbook ships)."""
    return [load_migration(spec.parent) for spec in sorted(folder.glob(f"*/{DESCRIPTION}"))]
