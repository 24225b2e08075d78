"""A bulk step is never cut short by the limit meant for interactive queries.

Every session of the playbook states a ``statement_timeout`` (60 s) so a look-up can never
hang; but the export, the drop and the re-import of ten million rows run for minutes, and
cutting one rolls the whole step back (the tables stay gone). Rehearsed here with a session
whose interactive limit (50 ms) is far shorter than one COPY of this data."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from playbook import demo_app
from playbook.changesets.objects import find_in_database
from playbook.db import connecting, localdb
from playbook.db.fingerprint import table_checksum
from playbook.db.names import QualifiedName
from playbook.exports import export_tables
from playbook.procedures import drops, recovery

COACHING = (("public", "sponsor_connections"), ("public", "sponsor_chat_messages"),
            ("public", "sponsor_visible_memos"))
SHORT = connecting.SessionLimits(statement_timeout="50ms")


@pytest.fixture
def large_demo(pg_cluster):
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = localdb.create_database(pg_cluster.admin_url, name)
    with psycopg.connect(url) as conn:
        demo_app.create_application(conn)
        demo_app.apply_coaching_migration(conn)
        demo_app.load_sample_data(conn, rows=300_000)
    yield url
    localdb.drop_database(pg_cluster.admin_url, name)


@pytest.mark.both_versions
def test_export_drop_and_recovery_outlast_the_interactive_statement_timeout(
        large_demo, coaching, tmp_path):
    with psycopg.connect(large_demo) as conn:
        before = {t: table_checksum(conn, *t) for t in COACHING}
    with connecting.connect(url=large_demo, limits=SHORT) as probe:
        # The limit really is shorter than one COPY of these tables.
        with pytest.raises(psycopg.errors.QueryCanceled):
            with probe.cursor() as cur, cur.copy(
                    "COPY (SELECT * FROM public.sponsor_chat_messages) TO STDOUT") as copy:
                for _block in copy:
                    pass
    folder = tmp_path / "export"
    with connecting.connect(url=large_demo, limits=SHORT) as conn:
        tables = [QualifiedName(f.obj.schema, f.obj.name)
                  for f in find_in_database(conn, coaching, count_rows=False).of_kind("table")]
        conn.rollback()
        export_tables(conn, tables, folder, purpose="rehearsal", show_progress=False, jobs=1,
                      extra={"migration": coaching.name, "import_order": [
                          str(t) for t in reversed(tables)]})
        assert drops.perform_drop(conn, coaching, folder).committed
        assert recovery.perform_recovery(conn, coaching, folder).committed
    with psycopg.connect(large_demo) as conn:
        assert {t: table_checksum(conn, *t) for t in COACHING} == before
