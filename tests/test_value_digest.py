"""The recovery's proof digests a table's values on the server: what it sees and what it cannot."""

from __future__ import annotations

from psycopg import sql

from playbook import value_digest
from playbook.db.names import QualifiedName

A, B = QualifiedName("public", "digest_a"), QualifiedName("public", "digest_b")


def _own_digest(conn, table: QualifiedName) -> tuple[int, int, int]:
    """The suite's own SQL: count and the two halves' sums over every row (partitions too)."""
    return conn.execute(sql.SQL(
        "SELECT count(*), coalesce(sum(x >> 32), 0), coalesce(sum(x & 4294967295), 0) "
        "FROM (SELECT hash_record_extended(t, 0) AS x FROM {} AS t) AS h").format(
        table.identifier)).fetchone()


def test_the_same_rows_in_another_order_digest_alike_and_a_duplicate_row_counts(demo_db):
    with demo_db.connect() as conn:
        conn.execute("CREATE TABLE public.digest_a (id int, body text, amount numeric)")
        conn.execute("CREATE TABLE public.digest_b (LIKE public.digest_a)")
        conn.execute("INSERT INTO public.digest_a SELECT g, 'row ' || g, g / 7.0 "
                     "FROM generate_series(1, 500) g")
        conn.execute("INSERT INTO public.digest_b SELECT * FROM public.digest_a ORDER BY id DESC")
        digests = value_digest.table_digests(conn, [A, B])
        assert digests[str(A)] == digests[str(B)]
        rows, high, low = _own_digest(conn, A)
        assert digests[str(A)] == f"hre1:{rows}:{high}:{low}" and rows == 500
        # Two copies of a row do not cancel out (a sum, not an XOR), nor does an edit hide.
        conn.execute("INSERT INTO public.digest_b SELECT * FROM public.digest_a WHERE id = 7")
        conn.execute("INSERT INTO public.digest_b SELECT * FROM public.digest_a WHERE id = 7")
        conn.execute("DELETE FROM public.digest_b WHERE id IN (8, 9)")
        assert value_digest.table_digests(conn, [B])[str(B)] != digests[str(A)]
        conn.execute("DELETE FROM public.digest_b WHERE id = 7")
        conn.execute("INSERT INTO public.digest_b SELECT * FROM public.digest_a "
                     "WHERE id IN (7, 8, 9)")
        assert value_digest.table_digests(conn, [B])[str(B)] == digests[str(A)]
        conn.execute("UPDATE public.digest_b SET body = 'row 10 ' WHERE id = 10")
        assert value_digest.table_digests(conn, [B])[str(B)] != digests[str(A)]
        conn.rollback()


def test_a_table_with_a_json_column_has_no_digest_and_keeps_the_csv_proof(demo_db):
    with demo_db.connect() as conn:
        conn.execute("CREATE TABLE public.digest_a (id int, payload json)")
        conn.execute("CREATE TABLE public.digest_b (id int, payload jsonb)")
        conn.execute("INSERT INTO public.digest_a VALUES (1, '{\"a\": 1}')")
        conn.execute("INSERT INTO public.digest_b VALUES (1, '{\"a\": 1}')")
        digests = value_digest.table_digests(conn, [A, B])
        assert list(digests) == [str(B)]
        # The refused probe ran in a savepoint: the transaction goes on.
        assert conn.execute("SELECT count(*) FROM public.digest_a").fetchone()[0] == 1
        conn.rollback()


def test_a_partitioned_table_is_digested_with_its_partitions_as_its_export_writes_it(demo_db):
    with demo_db.connect() as conn:
        conn.execute("CREATE TABLE public.digest_a (id int, at date) PARTITION BY RANGE (at)")
        conn.execute("CREATE TABLE public.digest_a_2025 PARTITION OF public.digest_a "
                     "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
        conn.execute("CREATE TABLE public.digest_a_2026 PARTITION OF public.digest_a "
                     "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        conn.execute("INSERT INTO public.digest_a SELECT g, date '2025-06-01' + g "
                     "FROM generate_series(1, 400) g")
        digest = value_digest.table_digests(conn, [A])[str(A)]
        rows, high, low = _own_digest(conn, A)
        assert digest == f"hre1:{rows}:{high}:{low}" and rows == 400
        parts = conn.execute("SELECT (SELECT count(*) FROM public.digest_a_2025), "
                             "(SELECT count(*) FROM public.digest_a_2026)").fetchone()
        assert all(parts) and sum(parts) == 400
        conn.rollback()
