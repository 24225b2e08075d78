"""A database's schema described from the catalog by the tests themselves, independently of
the schema-diff engine under test: two databases with equal descriptions have the same
project schema (Supabase-managed schemas left out, as the playbook leaves them out)."""

from __future__ import annotations

import psycopg

MANAGED = ("auth", "storage", "realtime", "extensions", "pg_catalog", "information_schema",
           "pg_toast", "supabase_migrations")

_QUERIES = {
    "schemas": """
        SELECT n.nspname,
               (SELECT array_agg(a.grantee::regrole::text || ':' || a.privilege_type ORDER BY 1)
                FROM aclexplode(n.nspacl) a WHERE a.grantee <> 0 AND a.grantee <> n.nspowner)
        FROM pg_namespace n WHERE n.nspname <> ALL(%(managed)s) AND n.nspname NOT LIKE 'pg\\_%%'
    """,
    "relations": """
        SELECT n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(c.oid),
               (SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                      ELSE a.grantee::regrole::text END
                                 || ':' || a.privilege_type ORDER BY 1)
                FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL(%(managed)s) AND c.relkind IN ('r','p','v','m','S','f')
    """,
    "columns": """
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname <> ALL(%(managed)s) AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r','p','v','m','f')
    """,
    "constraints": """
        SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL(%(managed)s)
    """,
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname <> ALL(%(managed)s)
    """,
    "views": """
        SELECT schemaname, viewname, definition FROM pg_views
        WHERE schemaname <> ALL(%(managed)s)
    """,
    "functions": """
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               md5(pg_get_functiondef(p.oid)),
               (SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                      ELSE a.grantee::regrole::text END
                                 || ':' || a.privilege_type ORDER BY 1)
                FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                WHERE a.grantee <> p.proowner)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname <> ALL(%(managed)s) AND p.prokind IN ('f', 'p')
    """,
    "triggers": """
        SELECT tn.nspname, t.relname, g.tgname, pg_get_triggerdef(g.oid), g.tgenabled
        FROM pg_trigger g
        JOIN pg_class t ON t.oid = g.tgrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
        JOIN pg_proc p ON p.oid = g.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
        WHERE NOT g.tgisinternal
          AND (tn.nspname <> ALL(%(managed)s) OR pn.nspname <> ALL(%(managed)s))
    """,
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
        FROM pg_policies
    """,
    "types": """
        SELECT n.nspname, t.typname, t.typtype,
               (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                FROM pg_enum e WHERE e.enumtypid = t.oid)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname <> ALL(%(managed)s) AND t.typtype IN ('e', 'd')
    """,
    "publications": """
        SELECT p.pubname, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete,
               n.nspname, c.relname
        FROM pg_publication p
        LEFT JOIN pg_publication_rel r ON r.prpubid = p.oid
        LEFT JOIN pg_class c ON c.oid = r.prrelid
        LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
    """,
    "default_privileges": """
        SELECT d.defaclrole::regrole::text, coalesce(n.nspname, ''), d.defaclobjtype,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
               a.privilege_type
        FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
        CROSS JOIN LATERAL aclexplode(d.defaclacl) a
    """,
}


def describe_schema(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Every part of the project's schema, as sorted rows."""
    params = {"managed": list(MANAGED)}
    return {
        part: sorted(tuple(str(v) for v in row) for row in conn.execute(query, params))
        for part, query in _QUERIES.items()
    }


def differences(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> dict[str, dict]:
    """Per part, the rows only in ``a`` and only in ``b`` (empty when equal)."""
    found = {}
    for part in a:
        only_a = sorted(set(a[part]) - set(b[part]))
        only_b = sorted(set(b[part]) - set(a[part]))
        if only_a or only_b:
            found[part] = {"only_first": only_a, "only_second": only_b}
    return found
