"""What differs between two databases, as the SQL that turns the first into the second.

The engine is migra's (``schemainspect`` reads each catalog, ``migra`` orders the changes
the way a careful DBA would: policies and constraints before the tables they sit on, views
re-created around the columns they read, functions replaced with their old bodies). migra
leaves out three things every Supabase migration touches, so they are compared here from
the catalog: publication membership (Realtime), default privileges and grants on schemas.

schemainspect is handed the playbook's own psycopg session, so a comparison made after the
reverse plan ran, inside its transaction, sees the uncommitted result: that is the proof
before COMMIT.

Supabase-managed schemas (``auth``, ``storage``, ``extensions``...) differ between a real
project and any local copy, so they are left out of the comparison; triggers and policies a
project puts on their tables (``on_auth_user_created``, policies on ``storage.objects``) are
the project's own and are kept. Extensions are the platform's and are not compared.
"""

from __future__ import annotations

import re
import types
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg
from migra import Migration
from psycopg import sql
from psycopg.rows import namedtuple_row
from schemainspect import get_inspector

MANAGED_SCHEMAS = frozenset({
    "auth", "storage", "realtime", "_realtime", "extensions", "graphql", "graphql_public",
    "pgbouncer", "pgsodium", "pgsodium_masks", "vault", "supabase_functions",
    "supabase_migrations", "net", "cron", "_analytics", "pgtle", "information_schema",
    "pg_catalog", "pg_toast",
})
# Inspector collections keyed by object, each object carrying its ``schema``.
_COLLECTIONS = ("schemas", "relations", "tables", "views", "materialized_views",
                "composite_types", "functions", "selectables", "sequences", "constraints",
                "indexes", "enums", "domains", "types", "collations", "privileges")
_DEFAULT_ACL_KINDS = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES",
                      "n": "SCHEMAS"}


class _InspectionCursor:
    """The cursor shape schemainspect reads a catalog through, over a psycopg 3 session
    (so it reads inside that session's transaction)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self.connection = types.SimpleNamespace(server_version=conn.info.server_version)

    def execute(self, query: str, params: object = None) -> list:
        return self._conn.cursor(row_factory=namedtuple_row).execute(query).fetchall()


def _project_owned(obj: object) -> bool:
    return getattr(obj, "schema", None) not in MANAGED_SCHEMAS


_INHERITED = """
SELECT n.nspname, c.relname, k.conname
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.conparentid <> 0
UNION ALL
SELECT n.nspname, t.relname, i.relname
FROM pg_inherits h
JOIN pg_class i ON i.oid = h.inhrelid AND i.relkind = 'i'
JOIN pg_index x ON x.indexrelid = i.oid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
"""


def _quoted(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def partitions(conn: psycopg.Connection) -> dict[str, str]:
    """Each partition's quoted name, with its parent's."""
    rows = conn.execute(
        "SELECT cn.nspname, c.relname, pn.nspname, p.relname FROM pg_inherits h "
        "JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace "
        "JOIN pg_class p ON p.oid = h.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace "
        "WHERE c.relispartition")
    return {_quoted(r[0], r[1]): _quoted(r[2], r[3]) for r in rows}


def inspect(conn: psycopg.Connection):  # -> schemainspect.pg.PostgreSQL
    """The project's part of ``conn``'s catalog, as schemainspect sees it. Constraints and
    indexes a partition inherits from its parent are the parent's: they come and go with it."""
    inspected = get_inspector(_InspectionCursor(conn))
    inherited = {_quoted(*row) for row in conn.execute(_INHERITED)}
    for name in _COLLECTIONS:
        items = getattr(inspected, name, None)
        if isinstance(items, dict):
            setattr(inspected, name, OrderedDict(
                (key, obj) for key, obj in items.items()
                if _project_owned(obj) and not (
                    name in ("constraints", "indexes")
                    and _quoted(obj.schema, obj.table_name, obj.name) in inherited)))
    inspected.extensions = OrderedDict()
    inspected.triggers = OrderedDict(
        (key, t) for key, t in inspected.triggers.items()
        if _project_owned(t) or t.proc_schema not in MANAGED_SCHEMAS)
    return inspected


# --- what migra does not compare ---------------------------------------------------------

_PUBLICATIONS = """
SELECT p.pubname, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
       coalesce((SELECT array_agg(n.nspname || '.' || c.relname ORDER BY n.nspname, c.relname)
                 FROM pg_publication_rel r
                 JOIN pg_class c ON c.oid = r.prrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE r.prpubid = p.oid), '{}') AS tables
FROM pg_publication p
ORDER BY p.pubname
"""

_DEFAULT_ACLS = """
SELECT pg_get_userbyid(d.defaclrole) AS owner,
       coalesce(n.nspname, '') AS schema,
       d.defaclobjtype AS kind,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
       a.privilege_type AS privilege
FROM pg_default_acl d
LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
CROSS JOIN LATERAL aclexplode(d.defaclacl) a
"""

_SCHEMA_GRANTS = """
SELECT n.nspname AS schema,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
       a.privilege_type AS privilege
FROM pg_namespace n
CROSS JOIN LATERAL aclexplode(n.nspacl) a
WHERE a.grantee <> n.nspowner
"""


@dataclass(frozen=True)
class Publication:
    name: str
    options: tuple[bool, bool, bool, bool, bool]  # all tables, insert, update, delete, truncate
    tables: frozenset[str]


def publications(conn: psycopg.Connection) -> dict[str, Publication]:
    found = {}
    for row in conn.execute(_PUBLICATIONS):
        found[row[0]] = Publication(row[0], tuple(row[1:6]), frozenset(row[6]))
    return found


def default_privileges(conn: psycopg.Connection) -> set[tuple[str, str, str, str, str]]:
    return {tuple(row) for row in conn.execute(_DEFAULT_ACLS)
            if row[1] not in MANAGED_SCHEMAS}


def schema_grants(conn: psycopg.Connection) -> set[tuple[str, str, str]]:
    return {tuple(row) for row in conn.execute(_SCHEMA_GRANTS)
            if row[0] not in MANAGED_SCHEMAS and not row[0].startswith("pg_")}


def _table(qualified: str) -> sql.Identifier:
    schema, _, name = qualified.partition(".")
    return sql.Identifier(schema, name)


def _create_publication(pub: Publication) -> sql.Composed:
    all_tables, *publish = pub.options
    actions = [a for a, on in zip(("insert", "update", "delete", "truncate"), publish,
                                  strict=True) if on]
    target = sql.SQL("FOR ALL TABLES") if all_tables else (
        sql.SQL("FOR TABLE {}").format(sql.SQL(", ").join(_table(t) for t in sorted(pub.tables)))
        if pub.tables else sql.SQL(""))
    return sql.SQL("CREATE PUBLICATION {} {} WITH (publish = {})").format(
        sql.Identifier(pub.name), target, sql.Literal(", ".join(actions)))


def publication_changes(live: dict[str, Publication], wanted: dict[str, Publication]
                        ) -> tuple[list[sql.Composed], list[sql.Composed]]:
    """(before, after): what runs before migra's statements (leaving publications, while the
    tables still exist) and after them (joining, once the tables exist again)."""
    before, after = [], []
    for name in sorted(live.keys() - wanted.keys()):
        before.append(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    for name in sorted(wanted.keys() - live.keys()):
        after.append(_create_publication(wanted[name]))
    for name in sorted(live.keys() & wanted.keys()):
        now, then = live[name], wanted[name]
        if now.options != then.options:
            before.append(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
            after.append(_create_publication(then))
            continue
        if then.options[0]:
            continue
        for table in sorted(now.tables - then.tables):
            before.append(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                sql.Identifier(name), _table(table)))
        for table in sorted(then.tables - now.tables):
            after.append(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(name), _table(table)))
    return before, after


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def default_privilege_changes(live: set, wanted: set) -> list[sql.Composed]:
    statements = []
    for verb, rows in (("REVOKE", live - wanted), ("GRANT", wanted - live)):
        for owner, schema, kind, grantee, privilege in sorted(rows):
            scope = (sql.SQL(" IN SCHEMA {}").format(sql.Identifier(schema))
                     if schema else sql.SQL(""))
            link = sql.SQL("TO") if verb == "GRANT" else sql.SQL("FROM")
            statements.append(sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {}{} {} {} ON {} {} {}").format(
                sql.Identifier(owner), scope, sql.SQL(verb), sql.SQL(privilege),
                sql.SQL(_DEFAULT_ACL_KINDS[kind]), link, _grantee(grantee)))
    return statements


def schema_grant_changes(live: set, wanted: set, *, existing: Iterable[str]) -> list[sql.Composed]:
    """Grants on schemas that exist on both sides (a schema being dropped or created
    carries its own)."""
    both = set(existing)
    statements = []
    for verb, rows in (("REVOKE", live - wanted), ("GRANT", wanted - live)):
        for schema, grantee, privilege in sorted(rows):
            if schema not in both:
                continue
            link = sql.SQL("TO") if verb == "GRANT" else sql.SQL("FROM")
            statements.append(sql.SQL("{} {} ON SCHEMA {} {} {}").format(
                sql.SQL(verb), sql.SQL(privilege), sql.Identifier(schema), link,
                _grantee(grantee)))
    return statements


# --- the plan ----------------------------------------------------------------------------


@dataclass
class SchemaPlan:
    """The statements that turn one database's schema into another's, in order."""

    statements: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.statements

    def sql(self) -> str:
        return "\n\n".join(self.statements)


_DROP_TABLE = re.compile(r'^drop table (?P<table>.+);$')
_REVOKE = re.compile(r'^revoke \w+ on (?:table|sequence) (?P<table>.+) from .+;$')


def _without_implied(statements: list[str], parents: dict[str, str]) -> list[str]:
    """migra's statements less those a DROP TABLE already implies: revoking grants on a
    table it drops (noise in the review), and dropping a partition whose parent it drops
    (which would fail: the partition went with its parent)."""
    dropped = {m["table"] for s in statements if (m := _DROP_TABLE.match(s))}
    kept = []
    for statement in statements:
        revoke = _REVOKE.match(statement)
        if revoke and revoke["table"] in dropped:
            continue
        drop = _DROP_TABLE.match(statement)
        if drop and parents.get(drop["table"]) in dropped:
            continue
        kept.append(statement)
    return kept


def _rendered(conn: psycopg.Connection, statements: Iterable[sql.Composable]) -> list[str]:
    return [s.as_string(conn) + ";" for s in statements]


def schema_plan(source: psycopg.Connection, target: psycopg.Connection) -> SchemaPlan:
    """What turns ``source``'s schema into ``target``'s (both read in their current
    transactions; nothing is written)."""
    engine = Migration(inspect(source), inspect(target))
    engine.set_safety(False)
    engine.add_all_changes(privileges=True)
    core = [s.strip() for s in engine.statements if s.strip()]
    core = _without_implied(core, partitions(source))
    before, after = publication_changes(publications(source), publications(target))
    schemas_in_both = {r[0] for r in source.execute("SELECT nspname FROM pg_namespace")} & {
        r[0] for r in target.execute("SELECT nspname FROM pg_namespace")}
    after += default_privilege_changes(default_privileges(source), default_privileges(target))
    after += schema_grant_changes(schema_grants(source), schema_grants(target),
                                  existing=schemas_in_both)
    return SchemaPlan(_rendered(source, before) + core + _rendered(source, after))
