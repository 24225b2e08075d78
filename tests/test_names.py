"""Names from parameters travel only as identifiers: hostile ones are refused or quoted."""

from __future__ import annotations

import pytest
from psycopg import sql

from playbook.db.names import QualifiedName, parse_table_name, split_identifier, table_oid
from playbook.errors import ConfigurationError, ObjectNotFound


@pytest.mark.parametrize(
    "text, parts",
    [
        ("sponsor_connections", ["sponsor_connections"]),
        ("Public.Sponsor_Connections", ["public", "sponsor_connections"]),
        ('"Mixed Case"."a.b"', ["Mixed Case", "a.b"]),
        ('"fo\'o"."ba""r"', ["fo'o", 'ba"r']),
        ('"with space"', ["with space"]),
    ],
)
def test_names_split_like_postgresql_splits_them(text, parts):
    assert split_identifier(text) == parts


@pytest.mark.parametrize(
    "hostile",
    [
        "sponsor_connections; DROP TABLE public.profiles",
        "x' OR '1'='1",
        "public.profiles--",
        '"unterminated',
        "a.b.c.d",
        "",
        "public.",
        "tab le",
        "x" * 70,
    ],
)
def test_hostile_names_are_refused_before_any_sql(hostile):
    with pytest.raises(ConfigurationError):
        parse_table_name(hostile)


def test_quoted_names_render_as_identifiers_never_as_text():
    name = parse_table_name('"ba""r"."fo\'o; DROP TABLE x"')
    rendered = sql.SQL("SELECT * FROM {}").format(name.identifier).as_string(None)
    assert rendered == 'SELECT * FROM "ba""r"."fo\'o; DROP TABLE x"'


def test_a_missing_table_says_rollback_may_not_be_needed(demo_db):
    with demo_db.connect() as conn, pytest.raises(ObjectNotFound, match="does not exist"):
        table_oid(conn, QualifiedName("public", "no_such_table"))
