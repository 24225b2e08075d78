"""Names an operator passes as parameters (schema, table, column, sequence).

A name arrives as text, e.g. ``public.sponsor_connections`` or ``"Mixed Case"."a.b"``.
It is split with PostgreSQL's own quoting rules, checked, and from then on travels only
as :class:`psycopg.sql.Identifier`; it is never pasted into SQL. Existence is asked of
the catalog with the name as a query *value*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..errors import ConfigurationError, ObjectNotFound

_UNQUOTED = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
MAX_IDENTIFIER = 63


def split_identifier(text: str) -> list[str]:
    """Split a possibly qualified, possibly quoted identifier into its parts.

    Unquoted parts fold to lower case, as PostgreSQL folds them; quoted parts keep their
    case, spaces and dots (``""`` stands for one ``"``). Anything else, such as
    ``x; DROP TABLE y``, is refused.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(
            f"Expected an object name, got {text!r}. Nothing was changed.",
            next_step="pass a name like public.sponsor_connections.",
        )
    if "\x00" in text:  # PostgreSQL names cannot hold NUL; psycopg would refuse it raw
        raise _bad_name(text, "a NUL character")
    parts: list[str] = []
    i, text = 0, text.strip()
    while i < len(text):
        if text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= len(text):
                    raise _bad_name(text, "an unterminated quote")
                if text[j] == '"':
                    if j + 1 < len(text) and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            part, i = "".join(buf), j + 1
            if not part:
                raise _bad_name(text, "an empty quoted part")
        else:
            match = _UNQUOTED.match(text, i)
            if not match:
                raise _bad_name(text, f"the character {text[i]!r}")
            part, i = match.group(0).lower(), match.end()
        if len(part.encode()) > MAX_IDENTIFIER:
            raise _bad_name(text, f"a part longer than {MAX_IDENTIFIER} bytes")
        parts.append(part)
        if i < len(text):
            if text[i] != ".":
                raise _bad_name(text, f"the character {text[i]!r}")
            i += 1
            if i == len(text):
                raise _bad_name(text, "a trailing dot")
    return parts


def _bad_name(text: str, what: str) -> ConfigurationError:
    return ConfigurationError(
        f"{text!r} is not a valid PostgreSQL object name ({what}). Nothing was changed.",
        next_step='write it as schema.name; quote parts with capitals, spaces or dots: '
        '"My Schema"."My Table".',
    )


@dataclass(frozen=True)
class QualifiedName:
    schema: str
    name: str

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{_display(self.schema)}.{_display(self.name)}"


def _display(part: str) -> str:
    if _UNQUOTED.fullmatch(part) and part == part.lower():
        return part
    return '"' + part.replace('"', '""') + '"'


def parse_table_name(text: str, default_schema: str = "public") -> QualifiedName:
    """``schema.table`` or ``table`` (in ``default_schema``)."""
    parts = split_identifier(text)
    if len(parts) == 1:
        return QualifiedName(default_schema, parts[0])
    if len(parts) == 2:
        return QualifiedName(parts[0], parts[1])
    raise _bad_name(text, "more than two dotted parts")


def parse_column_name(text: str) -> str:
    parts = split_identifier(text)
    if len(parts) != 1:
        raise _bad_name(text, "a column name has no dots unless quoted")
    return parts[0]


def table_oid(conn: psycopg.Connection, table: QualifiedName) -> int:
    """The table's oid, or ObjectNotFound telling the operator what exists instead."""
    row = conn.execute(
        """
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        (table.schema, table.name),
    ).fetchone()
    if row is None:
        raise ObjectNotFound(
            f"Table {table} does not exist in database "
            f"{conn.info.dbname!r}. Nothing was changed.",
            next_step="check the table parameter and that DATABASE_URL points at the right "
            "database (if the table was already rolled back, no rollback is needed).",
        )
    return row[0]


def table_exists(conn: psycopg.Connection, table: QualifiedName) -> bool:
    try:
        table_oid(conn, table)
    except ObjectNotFound:
        return False
    return True


def require_column(conn: psycopg.Connection, table: QualifiedName, column: str) -> None:
    oid = table_oid(conn, table)
    row = conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s "
        "AND attnum > 0 AND NOT attisdropped",
        (oid, column),
    ).fetchone()
    if row is None:
        raise ObjectNotFound(
            f"Column {_display(column)} does not exist in table {table}. Nothing was changed.",
            next_step="check the column parameter.",
        )
