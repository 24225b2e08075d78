"""What the catalog says about tables: their primary key, their foreign-key order, the
sequences their columns own, and moving those sequences past the rows.

Every procedure that deletes, re-imports or repairs rows asks these questions; they are
answered here once, from ``pg_index``, ``pg_constraint`` and ``pg_depend``, never from a
naming convention (a sequence is not assumed to be called ``<table>_id_seq``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .names import QualifiedName


def primary_key(conn: psycopg.Connection, table: QualifiedName) -> list[str]:
    """The columns of ``table``'s primary key, in key order (empty: it has none)."""
    return [r[0] for r in conn.execute(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord
        """, (table.schema, table.name)).fetchall()]


def parents_first(conn: psycopg.Connection, tables: Sequence[QualifiedName]
                  ) -> list[QualifiedName]:
    """``tables`` ordered so that a table comes after every table of ``tables`` its
    foreign keys point to (the order rows go in); ties, and the members of a cycle of
    foreign keys, in name order. Reversed, it is the order tables are dropped in."""
    names = {str(t): t for t in tables}
    regclasses = [t.identifier.as_string(conn) for t in tables]
    edges = conn.execute(
        """
        WITH chosen AS (SELECT to_regclass(t) AS oid FROM unnest(%s::text[]) AS t)
        SELECT cn.nspname, c.relname, pn.nspname, p.relname
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE k.contype = 'f' AND k.conrelid <> k.confrelid
          AND k.conrelid IN (SELECT oid FROM chosen) AND k.confrelid IN (SELECT oid FROM chosen)
        """, (regclasses,)).fetchall()
    parents: dict[str, set[str]] = {n: set() for n in names}
    for cs, cn, ps, pn in edges:
        child, parent = str(QualifiedName(cs, cn)), str(QualifiedName(ps, pn))
        if child in names and parent in names:
            parents[child].add(parent)
    ordered: list[QualifiedName] = []
    placed: set[str] = set()
    while len(ordered) < len(names):
        ready = sorted(n for n in names if n not in placed and parents[n] <= placed)
        if not ready:  # a cycle: deferred constraints (or the FK check) will tell
            ready = sorted(n for n in names if n not in placed)
        for name in ready:
            ordered.append(names[name])
            placed.add(name)
    return ordered


def children_first(conn: psycopg.Connection, tables: Sequence[QualifiedName]
                   ) -> list[QualifiedName]:
    """The order tables are dropped or emptied in: a table before the ones it points to."""
    return parents_first(conn, tables)[::-1]


@dataclass(frozen=True)
class OwnedSequence:
    """A sequence owned by a column (serial, ``OWNED BY`` or identity)."""

    schema: str
    name: str
    column: str

    @property
    def qualified(self) -> QualifiedName:
        return QualifiedName(self.schema, self.name)


def owned_sequences(conn: psycopg.Connection, table_oid: int) -> list[OwnedSequence]:
    """Every sequence owned by a column of the table: serial and OWNED BY sequences
    (pg_depend 'a') and identity sequences ('i'), in column order."""
    return [OwnedSequence(*r) for r in conn.execute(
        """
        SELECT n.nspname, s.relname, a.attname
        FROM pg_depend d
        JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_namespace n ON n.oid = s.relnamespace
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = %s AND d.deptype IN ('a', 'i')
        ORDER BY a.attnum
        """,
        (table_oid,),
    ).fetchall()]


@dataclass(frozen=True)
class SequencePosition:
    """Where an owned sequence stands after :func:`advance_sequences`."""

    sequence: str
    column: str
    next_value: int
    moved: bool

    def __str__(self) -> str:
        return f"{self.sequence}: next {self.next_value}" + (" (moved)" if self.moved else "")


def advance_sequences(conn: psycopg.Connection, table: QualifiedName
                      ) -> list[SequencePosition]:
    """Move every sequence owned by a column of ``table`` past that column's MAX, and
    only ever forward: a sequence already ahead of the rows (or of an empty table) is
    left where it is, so ids handed out before are never handed out again. Run it inside
    the transaction that wrote the rows, holding their lock."""
    oid = conn.execute("SELECT %s::regclass::oid", (table.identifier.as_string(conn),)
                       ).fetchone()[0]
    positions = []
    for owned in owned_sequences(conn, oid):
        sequence = owned.qualified.identifier
        regclass = sequence.as_string(conn)
        highest = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
            sql.Identifier(owned.column), table.identifier)).fetchone()[0]
        last, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sequence)).fetchone()
        step = conn.execute("SELECT seqincrement FROM pg_sequence WHERE seqrelid = %s::regclass",
                            (regclass,)).fetchone()[0]
        following = last + step if called else last
        moved = highest is not None and step > 0 and highest >= following
        if moved:
            conn.execute("SELECT setval(%s::regclass, %s, true)", (regclass, highest))
            following = highest + step
        positions.append(SequencePosition(str(owned.qualified), owned.column, following, moved))
    return positions

