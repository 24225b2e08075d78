"""``playbook snapshot``: taken just before a deploy, it makes any later rollback lossless.

One ``pg_dump`` custom-format archive of the target: the whole schema, plus the rows of every
table the migration will alter, drop, rename, truncate, update or delete from (found in its
SQL with PostgreSQL's own parser); the other tables' rows are left out, so the snapshot stays
small. It is a backup like any other: roll back with ``backup`` set to it, and the state
before the migration, its data at stake included, comes from it.
"""

from __future__ import annotations

from pathlib import Path

import pglast
import psycopg
from pglast import ast, enums

from ..backups import Backup, take_backup
from ..db.names import QualifiedName
from ..errors import ConfigurationError
from .shadow import MigrationFile

DEFAULT_SCHEMA = "public"


def _qualified(schema: str | None, name: str) -> QualifiedName:
    return QualifiedName(schema or DEFAULT_SCHEMA, name)


def tables_it_changes(target: MigrationFile) -> list[QualifiedName]:
    """Tables whose rows or columns the migration can destroy: the ones it alters,
    drops, renames, truncates, updates or deletes from."""
    try:
        statements = pglast.parse_sql(target.sql())
    except pglast.parser.ParseError as exc:
        raise ConfigurationError(
            f"{target.label} is not valid SQL for PostgreSQL's parser: {exc}. Nothing was "
            "taken.", next_step="check the file applies with psql on a scratch database.",
        ) from None
    found: list[QualifiedName] = []
    for raw in statements:
        stmt = raw.stmt
        relations = []
        if isinstance(stmt, ast.AlterTableStmt | ast.UpdateStmt | ast.DeleteStmt):
            relations = [stmt.relation]
        elif isinstance(stmt, ast.RenameStmt) and stmt.relation is not None:
            relations = [stmt.relation]
        elif isinstance(stmt, ast.TruncateStmt):
            relations = list(stmt.relations)
        elif isinstance(stmt, ast.DropStmt) and stmt.removeType == enums.ObjectType.OBJECT_TABLE:
            for parts in stmt.objects:
                names = [p.sval for p in parts]
                found.append(_qualified(names[-2] if len(names) > 1 else None, names[-1]))
        for relation in relations:
            found.append(_qualified(relation.schemaname, relation.relname))
    return list(dict.fromkeys(found))


def _all_tables(conn: psycopg.Connection) -> list[QualifiedName]:
    return [QualifiedName(*r) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
        "c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN "
        "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2")]


def _pattern(table: QualifiedName) -> str:
    """pg_dump's pattern for exactly this table (double quotes make every character
    literal, a double quote doubled)."""
    def quoted(part: str) -> str:
        return '"' + part.replace('"', '""') + '"'

    return f"{quoted(table.schema)}.{quoted(table.name)}"


def take_snapshot(url: str, target: MigrationFile, folder: str | Path
                  ) -> tuple[Backup, list[QualifiedName]]:
    """The snapshot archive in ``folder`` and the tables whose rows it holds."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        tables = _all_tables(conn)
    at_stake = set(tables_it_changes(target))
    kept = [t for t in tables if t in at_stake]
    excluded = [f"--exclude-table-data={_pattern(t)}" for t in tables if t not in at_stake]
    backup = take_backup(url, folder, extra_args=excluded)
    return backup, kept
