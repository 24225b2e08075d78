"""The state before a migration, rebuilt from the project's migrations folder.

A Supabase project keeps its migrations as ``supabase/migrations/<version>_<name>.sql``,
applied in version order. The state before migration V is a Supabase-like base plus every
migration older than V, applied to an empty scratch database: what ``supabase db diff``
calls the shadow database. The base is the one scratch restores use (the ``extensions``
schema with pgcrypto and uuid-ossp or their stand-ins, ``auth`` and ``storage`` tables:
``scratch_servers.prepare_database`` and ``supabase_base.sql``) plus the API roles, their
grants, the Realtime publication and Supabase's default privileges (``shadow_base.sql``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pglast
import psycopg
from pglast import ast

from ..changesets.migration import read_sql_file
from ..db.scratch_servers import create_placeholder_roles, prepare_database
from ..errors import ConfigurationError, ObjectNotFound, PreconditionFailed
from ..supabase_dumps import BASE_SQL as SUPABASE_BASE_SQL

SHADOW_BASE = Path(__file__).resolve().parent / "shadow_base.sql"
MIGRATION_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>.+)\.sql$")
# Extensions the base provides with stand-in functions where the server lacks them.
STAND_IN_EXTENSIONS = {"pgcrypto", "uuid-ossp"}
# Supabase's API roles, which migrations grant to.
API_ROLES = ("anon", "authenticated", "service_role")


@dataclass(frozen=True)
class MigrationFile:
    """One file of a migrations folder: ``<version>_<name>.sql``."""

    version: str
    name: str
    path: Path

    @property
    def label(self) -> str:
        return self.path.name

    def sql(self) -> str:
        return read_sql_file(self.path, "The migration",
                             "check the file's permissions and encoding.")


@dataclass(frozen=True)
class MigrationsFolder:
    """A project's migrations, in the order they were applied."""

    path: Path
    files: tuple[MigrationFile, ...]

    def find(self, target: str) -> MigrationFile:
        """The migration named by its version, its file name or its path."""
        wanted = Path(str(target).strip()).name
        for item in self.files:
            if wanted in (item.version, item.label, item.path.stem):
                return item
        raise ObjectNotFound(
            f"There is no migration {target!r} in {self.path}. Nothing was changed.",
            next_step="pass the version (the digits before '_') or the file name of one of: "
            + ", ".join(f.label for f in self.files),
        )

    def before(self, target: str) -> tuple[MigrationFile, ...]:
        """Every migration applied before ``target``."""
        version = self.find(target).version
        return tuple(f for f in self.files if int(f.version) < int(version))

    def after(self, target: str) -> tuple[MigrationFile, ...]:
        """Every migration newer than ``target``: objects they made depend on it."""
        version = self.find(target).version
        return tuple(f for f in self.files if int(f.version) > int(version))

    def up_to(self, target: str) -> tuple[MigrationFile, ...]:
        """Every migration up to and including ``target``."""
        return (*self.before(target), self.find(target))


def read_migrations_folder(path: str | Path) -> MigrationsFolder:
    """The ``*.sql`` migrations of ``path`` (a ``supabase/migrations`` folder, or a project
    folder holding one), in version order; other files are ignored."""
    folder = Path(str(path)).expanduser()
    if (folder / "supabase" / "migrations").is_dir():
        folder = folder / "supabase" / "migrations"
    if not folder.is_dir():
        raise ObjectNotFound(
            f"The migrations folder {folder} does not exist. Nothing was changed.",
            next_step="pass the project's supabase/migrations folder (or the project folder).",
        )
    files = []
    for entry in folder.iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match and entry.is_file():
            files.append(MigrationFile(match["version"], match["name"], entry.resolve()))
    if not files:
        raise ObjectNotFound(
            f"{folder} holds no migration named <version>_<name>.sql. Nothing was changed.",
            next_step="pass the folder `supabase migration new` writes into.",
        )
    versions = [f.version for f in files]
    duplicated = sorted({v for v in versions if versions.count(v) > 1})
    if duplicated:
        raise ConfigurationError(
            f"{folder} has several migrations with the version(s) {', '.join(duplicated)}: "
            "their order is undefined. Nothing was changed.",
            next_step="rename them so each version is unique, as the Supabase CLI requires.",
        )
    return MigrationsFolder(folder.resolve(), tuple(sorted(files, key=lambda f: int(f.version))))


def migration_file(path: str | Path) -> MigrationFile:
    """A single migration file given by its path (its version is the digits before '_',
    or 0 when the name has none)."""
    file = Path(str(path)).expanduser()
    if not file.is_file() or file.suffix != ".sql":
        raise ObjectNotFound(
            f"The migration {file} is not a .sql file. Nothing was changed.",
            next_step="pass the path of the migration's .sql file, or its version with "
            "migrations_folder.")
    match = MIGRATION_FILE.match(file.name)
    return MigrationFile(match["version"] if match else "0",
                         match["name"] if match else file.stem, file.resolve())


def _available_extensions(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM pg_available_extensions")}


def statements_to_apply(sql_text: str, available_extensions: set[str]) -> list[str]:
    """The statements of a migration as this server can run them: a
    ``create extension if not exists`` of an extension the base stands in for, and the server
    lacks, is left out (the base already provides its functions)."""
    try:
        parsed = pglast.parse_sql(sql_text)
    except pglast.parser.ParseError as exc:
        raise ConfigurationError(
            f"The migration is not valid SQL for PostgreSQL's parser: {exc}. Nothing was "
            "changed.",
            next_step="check the file applies with psql on a scratch database first.",
        ) from None
    encoded = sql_text.encode("utf-8")
    statements = []
    for raw in parsed:
        stmt = raw.stmt
        if (isinstance(stmt, ast.CreateExtensionStmt) and stmt.if_not_exists
                and stmt.extname in STAND_IN_EXTENSIONS
                and stmt.extname not in available_extensions):
            continue
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(encoded)
        statements.append(encoded[start:end].decode("utf-8").strip())
    return [s for s in statements if s]


def first_failure(conn: psycopg.Connection, statements: list[str]
                  ) -> tuple[int, str, str] | None:
    """Run ``statements`` in order in the caller's transaction, stopping at the first that
    fails: (its number from 1, the statement, the error's first line), or None."""
    for number, statement in enumerate(statements, start=1):
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            return number, statement, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def apply_sql(conn: psycopg.Connection, sql_text: str, *, label: str) -> None:
    """Run a migration's statements in the caller's transaction, naming the file and the
    statement that failed."""
    failure = first_failure(conn, statements_to_apply(sql_text, _available_extensions(conn)))
    if failure:
        number, statement, first = failure
        raise PreconditionFailed(
            f"{label}, statement {number} failed: {first}. The statement: {statement[:200]!r}.",
            next_step="the migrations folder must apply cleanly in order onto a new Supabase "
            "project: fix the file, or give a backup or snapshot taken before the migration "
            "instead.")


def apply_base(conn: psycopg.Connection) -> list[str]:
    """The Supabase-like base every shadow database starts from. Returns the API roles it
    had to create (cluster-wide placeholders: the caller removes them when done)."""
    created = create_placeholder_roles(conn, API_ROLES)
    prepare_database(conn)
    for base in (SUPABASE_BASE_SQL, SHADOW_BASE):
        apply_sql(conn, base.read_text(encoding="utf-8"), label=base.name)
    return created


def build_shadow(conn: psycopg.Connection, migrations: tuple[MigrationFile, ...]) -> list[str]:
    """Apply the base and ``migrations`` to the empty database ``conn`` is connected to, in
    one transaction, committed at the end. Returns the placeholder roles created."""
    found = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    ).fetchone()[0]
    if found:
        raise PreconditionFailed(
            f"The shadow database {conn.info.dbname!r} is not empty ({found} relations). "
            "Nothing was changed.",
            next_step="give a new, empty scratch database for the state before the migration.",
        )
    created = apply_base(conn)
    for item in migrations:
        apply_sql(conn, item.sql(), label=item.label)
    conn.commit()
    return created
