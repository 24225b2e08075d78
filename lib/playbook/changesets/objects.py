"""What a migration created: read from its SQL with PostgreSQL's own parser (pglast),
then looked up in the target's catalog.

Tables, sequences (explicit ones, and those the catalog says a table's serial or identity
columns own), functions with their argument types, triggers, policies, types, indexes and
views. A table the migration created that no longer exists is reported as "rollback not
needed" (the procedure document's "relation does not exist" case), not as an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import pglast
import psycopg
from pglast import ast, enums
from pglast.stream import RawStream
from psycopg import sql

from ..db.catalog import owned_sequences
from ..db.queries import value
from ..errors import ConfigurationError

if TYPE_CHECKING:  # migrations.Migration lists its tables through this module
    from .migration import Migration

DEFAULT_SCHEMA = "public"
# The order a rollback shows (and, reversed where it matters, drops) them in.
KINDS = ("view", "table", "sequence", "index", "trigger", "policy", "function", "type")
ROLLBACK_NOT_NEEDED = "absent: rollback not needed"


@dataclass(frozen=True)
class MigrationObject:
    """One object the migration creates. ``table`` is set for objects that live on a table
    (index, trigger, policy); ``arguments`` for functions (their IN argument types)."""

    kind: str
    schema: str
    name: str
    table: str = ""  # schema-qualified, display form
    table_schema: str = ""
    table_name: str = ""
    arguments: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        base = f"{self.schema}.{self.name}"
        if self.kind == "function":
            return f"{base}({', '.join(self.arguments)})"
        if self.kind in ("trigger", "policy"):
            return f"{self.name} on {self.table}"
        return base


@dataclass
class FoundObject:
    """A migration object as the target's catalog sees it now."""

    obj: MigrationObject
    oid: int | None
    rows: int | None = None
    note: str = ""
    owned_by: str = ""  # sequences: the table column that owns it

    @property
    def exists(self) -> bool:
        return self.oid is not None


@dataclass
class Inventory:
    migration: str
    objects: list[FoundObject] = field(default_factory=list)

    def of_kind(self, kind: str, *, present: bool = True) -> list[FoundObject]:
        return [o for o in self.objects if o.obj.kind == kind and (o.exists or not present)]

    @property
    def present(self) -> list[FoundObject]:
        return [o for o in self.objects if o.exists]

    @property
    def rollback_needed(self) -> bool:
        return bool(self.present)

    def rows_at_stake(self) -> dict[str, int]:
        return {o.obj.display: o.rows or 0 for o in self.of_kind("table")}

    def table(self) -> pd.DataFrame:
        rows = [{
            "kind": o.obj.kind,
            "object": o.obj.display,
            "exists": "yes" if o.exists else "no",
            "rows that will be lost": "" if o.rows is None else o.rows,
            "note": o.note,
        } for o in self.objects]
        return pd.DataFrame(rows, columns=["kind", "object", "exists", "rows that will be lost",
                                           "note"])


def _names(parts: tuple | list | None) -> list[str]:
    return [p.sval for p in parts or ()]


def _qualify(parts: list[str]) -> tuple[str, str]:
    if len(parts) == 1:
        return DEFAULT_SCHEMA, parts[0]
    return parts[-2], parts[-1]


def _relation(rel: ast.RangeVar) -> tuple[str, str]:
    return rel.schemaname or DEFAULT_SCHEMA, rel.relname


def _type_text(type_name: ast.TypeName) -> str:
    return RawStream()(type_name)


def parse_created_objects(text: str) -> list[MigrationObject]:
    """Every object the SQL ``text`` creates, in the order it creates them (duplicates
    from re-creation, e.g. DROP ... IF EXISTS then CREATE, appear once)."""
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise ConfigurationError(
            f"The migration's SQL does not parse ({exc}). Nothing was changed.",
            next_step="check the migration file; it must be valid PostgreSQL.",
        ) from None
    found: list[MigrationObject] = []

    def add(obj: MigrationObject) -> None:
        if obj not in found:
            found.append(obj)

    for raw in statements:
        stmt = raw.stmt
        if isinstance(stmt, ast.CreateStmt):
            schema, name = _relation(stmt.relation)
            add(MigrationObject("table", schema, name))
        elif isinstance(stmt, ast.CreateTableAsStmt) and stmt.into is not None:
            schema, name = _relation(stmt.into.rel)
            kind = "view" if stmt.objtype == enums.ObjectType.OBJECT_MATVIEW else "table"
            add(MigrationObject(kind, schema, name))
        elif isinstance(stmt, ast.ViewStmt):
            schema, name = _relation(stmt.view)
            add(MigrationObject("view", schema, name))
        elif isinstance(stmt, ast.CreateSeqStmt):
            schema, name = _relation(stmt.sequence)
            add(MigrationObject("sequence", schema, name))
        elif isinstance(stmt, ast.IndexStmt) and stmt.idxname:
            schema, table = _relation(stmt.relation)
            add(MigrationObject("index", schema, stmt.idxname, f"{schema}.{table}", schema, table))
        elif isinstance(stmt, ast.CreateTrigStmt):
            schema, table = _relation(stmt.relation)
            add(MigrationObject("trigger", schema, stmt.trigname, f"{schema}.{table}", schema,
                                table))
        elif isinstance(stmt, ast.CreatePolicyStmt):
            schema, table = _relation(stmt.table)
            add(MigrationObject("policy", schema, stmt.policy_name, f"{schema}.{table}", schema,
                                table))
        elif isinstance(stmt, ast.CreateFunctionStmt):
            schema, name = _qualify(_names(stmt.funcname))
            arguments = tuple(
                _type_text(p.argType) for p in stmt.parameters or ()
                if p.mode not in (enums.FunctionParameterMode.FUNC_PARAM_OUT,
                                  enums.FunctionParameterMode.FUNC_PARAM_TABLE)
            )
            add(MigrationObject("function", schema, name, arguments=arguments))
        elif isinstance(stmt, ast.CreateEnumStmt | ast.CreateRangeStmt):
            schema, name = _qualify(_names(stmt.typeName))
            add(MigrationObject("type", schema, name))
        elif isinstance(stmt, ast.CompositeTypeStmt):
            schema, name = _relation(stmt.typevar)
            add(MigrationObject("type", schema, name))
        elif isinstance(stmt, ast.CreateDomainStmt):
            schema, name = _qualify(_names(stmt.domainname))
            add(MigrationObject("type", schema, name))
    return sorted(found, key=lambda o: KINDS.index(o.kind))


def migration_objects(migration: Migration) -> list[MigrationObject]:
    return parse_created_objects(migration.deploy_sql())


def object_oid(conn: psycopg.Connection, obj: MigrationObject) -> int | None:
    """The object's oid in the database, or None when it does not exist there."""
    if obj.kind in ("table", "view", "sequence", "index"):
        relkinds = {"table": ["r", "p"], "view": ["v", "m"], "sequence": ["S"],
                    "index": ["i", "I"]}[obj.kind]
        row = conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind::text = ANY(%s)",
            (obj.schema, obj.name, relkinds),
        ).fetchone()
    elif obj.kind == "trigger":
        row = conn.execute(
            "SELECT t.oid FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND t.tgname = %s AND NOT t.tgisinternal",
            (obj.table_schema, obj.table_name, obj.name),
        ).fetchone()
    elif obj.kind == "policy":
        row = conn.execute(
            "SELECT p.oid FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND p.polname = %s",
            (obj.table_schema, obj.table_name, obj.name),
        ).fetchone()
    elif obj.kind == "function":
        # The signature comes from the parsed migration; the catalog resolves it.
        signature = sql.SQL("{}({})").format(
            sql.Identifier(obj.schema, obj.name), sql.SQL(", ").join(
                sql.SQL(a) for a in obj.arguments  # type text rendered by the parser
            ),
        ).as_string(conn)
        try:
            with conn.transaction():
                row = conn.execute("SELECT to_regprocedure(%s)::oid", (signature,)).fetchone()
        except psycopg.Error:  # e.g. an argument type that does not exist
            row = None
        row = row if row and row[0] else None
    else:  # type
        row = conn.execute(
            "SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = %s AND t.typname = %s",
            (obj.schema, obj.name),
        ).fetchone()
    return row[0] if row else None


def find_in_database(conn: psycopg.Connection, migration: Migration,
                     *, count_rows: bool = True) -> Inventory:
    """The migration's objects as they stand in the target, with tables' row counts and
    the sequences their columns own."""
    inventory = Inventory(migration.name)
    objects = migration_objects(migration)
    listed = {(o.kind, o.schema, o.name) for o in objects}
    for obj in objects:
        oid = object_oid(conn, obj)
        found = FoundObject(obj, oid)
        if obj.kind == "table":
            if oid is None:
                found.note = ROLLBACK_NOT_NEEDED
            elif count_rows:
                # Through queries.value: a lock timeout names the session holding the table.
                found.rows = value(conn, sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(obj.schema, obj.name)))
        elif oid is None:
            found.note = "absent"
        inventory.objects.append(found)
        if obj.kind == "table" and oid is not None:
            for owned in owned_sequences(conn, oid):
                schema, name = owned.schema, owned.name
                owner = f"owned by {obj.schema}.{obj.name}.{owned.column}"
                existing = next((f for f in inventory.objects
                                 if f.obj.kind == "sequence" and f.obj.schema == schema
                                 and f.obj.name == name), None)
                if existing is not None:
                    existing.owned_by, existing.note = owner, owner
                elif ("sequence", schema, name) not in listed:
                    seq = MigrationObject("sequence", schema, name)
                    seq_oid = object_oid(conn, seq)
                    inventory.objects.append(FoundObject(seq, seq_oid, note=owner,
                                                         owned_by=owner))
    # Sequences listed before their owning table was seen: attach the owner now.
    for found in inventory.objects:
        if found.obj.kind == "sequence" and found.exists and not found.owned_by:
            row = conn.execute(
                "SELECT n.nspname || '.' || c.relname, a.attname FROM pg_depend d "
                "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
                "JOIN pg_class c ON c.oid = d.refobjid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE d.classid = 'pg_class'::regclass AND d.objid = %s "
                "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')",
                (found.oid,),
            ).fetchone()
            if row:
                found.owned_by = found.note = f"owned by {row[0]}.{row[1]}"
    inventory.objects.sort(key=lambda f: KINDS.index(f.obj.kind))
    return inventory
