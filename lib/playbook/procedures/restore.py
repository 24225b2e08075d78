"""Full database restore (the procedure document's "Nuclear Option"), self-hosted.

The document's steps, each a helper the notebook calls:

1. Verify backup exists      -> :mod:`playbook.backups` (list, choose, prove, test-restore)
2. Prepare for restore       -> :func:`who_is_connected`, :func:`export_rows_after_backup`,
                                :func:`plan_restore` (stop the application: block new
                                connections, end existing ones)
3. Restore from backup       -> :func:`restore_database` (``in_place``: pg_restore --clean
                                --if-exists into the target; ``swap``: into a new database,
                                verified, then renamed over the target)
4. Verify restore            -> :func:`verify_restore`
5. Restart application       -> :func:`reopen_connections`, :func:`review_reimport`,
                                :func:`reimport_rows`

Review mode walks the same path: the plan holds the very statements and the pg_restore
command execute mode runs, and shows them instead.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from .. import backups, incidents, scratch_restore
from ..backups import Backup
from ..db import catalog, connecting, localdb
from ..db.locks import take_playbook_lock
from ..db.names import QualifiedName
from ..db.queries import table, translated_errors
from ..errors import ConfigurationError, ExportMismatch, PreconditionFailed, VerificationFailed
from ..evidence import NOT_DONE, Evidence
from ..exports import Manifest, export_tables, require_sound_export
from ..incidents import run_label
from ..progress import LoadProgress
from ..scratch_restore import TestRestore
from ..verification import Check, orphaned_profiles, require_all_pass

STRATEGIES = ("in_place", "swap")
USER_SCHEMAS_SQL = sql.SQL("""n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'""")


# --- step 2: prepare ------------------------------------------------------------------


def who_is_connected(conn: psycopg.Connection) -> pd.DataFrame:
    """Every other session on this database (pg_stat_activity): who would be cut off."""
    return table(conn, """
        SELECT pid, usename AS "user", application_name, client_addr::text AS client,
               state, to_char(backend_start, 'YYYY-MM-DD HH24:MI:SS') AS connected_since,
               left(query, 80) AS last_query
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND backend_type = 'client backend'
        ORDER BY backend_start""")


def timestamp_columns(conn: psycopg.Connection) -> dict[QualifiedName, list[str]]:
    """Every user table that has timestamp columns, with those columns (catalog order).
    Partitions are read through their parent (exported and re-imported once, routed by
    the parent), never on their own as well."""
    rows = conn.execute(sql.SQL("""
        SELECT n.nspname, c.relname, array_agg(a.attname ORDER BY a.attnum)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {}
          AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype)
        GROUP BY 1, 2 ORDER BY 1, 2""").format(USER_SCHEMAS_SQL)).fetchall()
    return {QualifiedName(s, t): list(cols) for s, t, cols in rows}


def written_after(columns: Iterable[str], moment: datetime) -> sql.Composable:
    """``col1 > t OR col2 > t ...``: a row created, updated or touched after ``moment``."""
    return sql.SQL(" OR ").join(
        sql.SQL("{} > {}").format(sql.Identifier(c), sql.Literal(moment)) for c in columns)


def _utc(conn: psycopg.Connection) -> None:
    # timestamp-without-zone columns compare in the session's zone: make it UTC, as backups are.
    conn.execute("SELECT set_config('TimeZone', 'UTC', false)")
    if not conn.autocommit:
        conn.commit()


def export_rows_after_backup(conn: psycopg.Connection, backup: Backup,
                             folder: Path | str) -> Manifest:
    """Export, in one snapshot, every row written after the backup's time (any
    timestamp column newer) to CSV with counts and SHA-256 (``manifest.json``): the
    document's "Export any critical data created AFTER backup"."""
    _utc(conn)
    columns = timestamp_columns(conn)
    conn.rollback()
    where = {str(name): written_after(cols, backup.taken_at) for name, cols in columns.items()}
    # export_tables opens its own snapshot transaction; autocommit keeps anything it asks
    # before that (settings for its manifest) from opening one first.
    previous, conn.autocommit = conn.autocommit, True
    try:
        return export_tables(
            conn, list(columns), Path(folder), purpose="rows written after the backup",
            show_progress=False, where=where,
            extra={"backup": backup.path.name, "backup_taken_at": backup.taken_at.isoformat(),
               "folder": str(folder)},
        )
    finally:
        conn.autocommit = previous


# --- the plan: every statement and command, built once for review and execute --------


@dataclass
class Step:
    what: str
    statement: sql.Composable | None = None  # run on the maintenance or target session
    command: list[str] | None = None  # a pg_restore invocation (no secret in it)
    on: str = "target"  # "target" | "maintenance" | "tool"
    ends_sessions: bool = False  # returns the sessions it ended
    needs_no_sessions: bool = False  # wait until nobody is connected to the target first


@dataclass
class RestorePlan:
    """What the restore will do, in order. Built from the catalog and the backup."""

    database: str
    strategy: str
    jobs: int
    backup: Backup
    block_connections: bool
    terminate_connections: bool
    url: str = field(repr=False)  # never shown
    maintenance_database: str
    pg_restore: Path
    new_database: str = ""
    old_database: str = ""
    steps: list[Step] = field(default_factory=list)
    reopen: list[Step] = field(default_factory=list)
    database_acl_before: list[tuple[str, str]] = field(default_factory=list)
    platform: str = "self_hosted"
    rendered: pd.DataFrame | None = None  # the statements as rendered by the target session

    def table(self, conn: psycopg.Connection | None = None) -> pd.DataFrame:
        if conn is None and self.rendered is not None:
            return self.rendered
        rows = []
        for number, step in enumerate(self.steps + self.reopen, start=1):
            if step.statement is not None:
                text = step.statement.as_string(conn)
            else:
                text = " ".join(step.command or [])
            rows.append({"#": number, "step": step.what, "runs on": step.on, "statement": text})
        return pd.DataFrame(rows, columns=["#", "step", "runs on", "statement"])

    def show(self):
        """The plan for the notebook: every statement in full (no truncation)."""
        return self.table().style.hide(axis="index").set_properties(
            subset=["statement"], **{"text-align": "left", "font-family": "monospace"})


def _maintenance_database(database: str) -> str:
    return "template1" if database == "postgres" else "postgres"


def database_acl(conn: psycopg.Connection, database: str) -> list[tuple[str, str]]:
    """(grantee, privilege) of the database's ACL (PostgreSQL's default when never set)."""
    rows = conn.execute("""
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type
        FROM pg_database d, LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
        WHERE d.datname = %s AND a.grantee <> d.datdba ORDER BY 1, 2""", (database,)).fetchall()
    return [tuple(r) for r in rows]


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def _terminate(database: str) -> sql.Composable:
    return sql.SQL(
        "SELECT pid, usename, application_name, pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = {} AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND application_name NOT LIKE 'playbook:full-restore%'"
    ).format(sql.Literal(database))


def plan_restore(conn: psycopg.Connection, url: str, backup: Backup, *,
                 strategy: str = "in_place", jobs: int = 2, block_connections: bool = False,
                 terminate_connections: bool = False) -> RestorePlan:
    """Check the parameters against the target and build every statement the restore
    runs. Raises before anything changes (wrong strategy, swap without ending
    sessions, a user who would lock themselves out, pg_restore too old)."""
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"restore_strategy must be 'in_place' or 'swap', got {strategy!r}. Nothing was "
            "changed.", next_step="use 'in_place' (pg_restore --clean into the target) or "
            "'swap' (restore into a new database, then rename it over the target).")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigurationError(f"jobs must be a whole number >= 1, got {jobs!r}. Nothing "
                                 "was changed.", next_step="jobs=2 suits a 2-core server.")
    if strategy == "swap" and not terminate_connections:
        raise ConfigurationError(
            "restore_strategy='swap' renames databases, which PostgreSQL allows only when no "
            "session is connected: it needs terminate_connections=True. Nothing was changed.",
            next_step="set terminate_connections=True, or use restore_strategy='in_place'.")
    database = connecting.current_database(conn)
    major = connecting.server_version(conn)
    pg_restore = backups.require_tools_for(backup, major)
    owner, superuser, is_owner, encoding, collate, ctype = conn.execute("""
        SELECT pg_get_userbyid(d.datdba), r.rolsuper, pg_has_role(d.datdba, 'USAGE'),
               pg_encoding_to_char(d.encoding), d.datcollate, d.datctype
        FROM pg_database d, pg_roles r
        WHERE d.datname = current_database() AND r.rolname = current_user""").fetchone()
    if (block_connections or strategy == "swap") and not (superuser or is_owner):
        raise PreconditionFailed(
            f"Blocking connections to {database!r} needs its owner ({owner}) or a superuser; "
            f"{conn.info.user} is neither and would lock itself out. Nothing was changed.",
            next_step="connect as the database owner, or set block_connections=False.")
    acl = database_acl(conn, database)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    plan = RestorePlan(database, strategy, jobs, backup, block_connections,
                       terminate_connections, url, _maintenance_database(database), pg_restore,
                       database_acl_before=acl)
    db = sql.Identifier(database)
    tool = [str(pg_restore), "--no-password", "--verbose"]
    if strategy == "in_place":
        if block_connections:
            for grantee, privilege in acl:
                if privilege == "CONNECT" and grantee != conn.info.user:
                    plan.steps.append(Step(f"stop new connections as {grantee}", sql.SQL(
                        "REVOKE CONNECT ON DATABASE {} FROM {}").format(db, _grantee(grantee))))
                    plan.reopen.append(Step(f"let {grantee} connect again", sql.SQL(
                        "GRANT CONNECT ON DATABASE {} TO {}").format(db, _grantee(grantee))))
        if terminate_connections:
            plan.steps.append(Step("end the application's sessions", _terminate(database),
                                   ends_sessions=True))
        atomic = ["--single-transaction", "--exit-on-error"] if jobs == 1 else [f"--jobs={jobs}"]
        plan.steps.append(Step(
            "restore into the target (drop what the backup holds, re-create it, load its data)",
            command=[*tool, "--clean", "--if-exists", *atomic, f"--dbname={database}",
                     str(backup.path)], on="tool"))
        return plan
    plan.new_database = f"{database[:40]}_restored_{stamp}"
    plan.old_database = f"{database[:40]}_before_restore_{stamp}"
    new = sql.Identifier(plan.new_database)
    plan.steps.append(Step("create the new database like the target", sql.SQL(
        "CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
    ).format(new, sql.Identifier(owner), sql.Literal(encoding), sql.Literal(collate),
             sql.Literal(ctype)), on="maintenance"))
    if acl != database_acl_default():
        plan.steps.append(Step("copy the database's grants", sql.SQL(
            "REVOKE ALL ON DATABASE {} FROM PUBLIC").format(new), on="maintenance"))
        for grantee, privilege in acl:
            plan.steps.append(Step(f"grant {privilege} to {grantee}", sql.SQL(
                "GRANT {} ON DATABASE {} TO {}").format(sql.SQL(privilege), new,
                                                         _grantee(grantee)), on="maintenance"))
    for setting in conn.execute("""
            SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d
            ON d.oid = s.setdatabase WHERE d.datname = current_database()
            AND s.setrole = 0""").fetchall():
        name, _, value = setting[0].partition("=")
        plan.steps.append(Step(f"copy the database setting {name}", sql.SQL(
            "ALTER DATABASE {} SET {} = {}").format(new, sql.Identifier(name),
                                                    sql.Literal(value)), on="maintenance"))
    plan.steps.append(Step("restore into the new database", command=[
        *tool, f"--jobs={jobs}", "--exit-on-error", f"--dbname={plan.new_database}",
        str(backup.path)], on="tool"))
    plan.steps.append(Step("stop new connections to the target", sql.SQL(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false").format(db), on="maintenance"))
    plan.steps.append(Step("end the application's sessions", _terminate(database),
                           on="maintenance", ends_sessions=True))
    plan.steps.append(Step("rename the damaged database out of the way", sql.SQL(
        "ALTER DATABASE {} RENAME TO {}").format(db, sql.Identifier(plan.old_database)),
        on="maintenance", needs_no_sessions=True))
    plan.steps.append(Step("rename the restored database to the target's name", sql.SQL(
        "ALTER DATABASE {} RENAME TO {}").format(new, db), on="maintenance"))
    plan.steps.append(Step("let the damaged copy be inspected again", sql.SQL(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(plan.old_database)),
        on="maintenance"))
    return plan


def database_acl_default() -> list[tuple[str, str]]:
    return [("PUBLIC", "CONNECT"), ("PUBLIC", "TEMPORARY")]


# --- step 3: restore ------------------------------------------------------------------


@dataclass
class RestoreResult:
    plan: RestorePlan
    executed: bool
    seconds: float = 0.0
    restore_seconds: float = 0.0
    terminated: list[tuple] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def evidence(self) -> Evidence:
        """An executed restore, in the words of its table."""
        if not self.executed:
            return NOT_DONE
        shown = self.table()
        return Evidence(True, "; ".join(f"{k}: {v}" for k, v in shown.iloc[:, -1].items()))

    def table(self) -> pd.DataFrame:
        rows = [("strategy", self.plan.strategy), ("parallel jobs", self.plan.jobs),
                ("backup", self.plan.backup.path.name),
                ("executed", "yes" if self.executed else "no (review mode: nothing changed)")]
        if self.plan.platform == "supabase":
            rows = [("restore", "done in the Supabase dashboard (checklist above)")]
        if self.executed:
            rows += [("sessions ended", len(self.terminated)),
                     ("pg_restore seconds", round(self.restore_seconds, 2)),
                     ("total seconds", round(self.seconds, 2))]
            if self.plan.strategy == "swap":
                rows.append(("damaged database kept as", self.plan.old_database))
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def _admin(url: str, database: str, **kwargs: object) -> psycopg.Connection:
    return connecting.connect(
        url=localdb.database_url_for(url, database), purpose="full-restore",
        limits=connecting.SessionLimits(statement_timeout="0",
                                        idle_in_transaction_session_timeout="0"),
        **kwargs)  # type: ignore[arg-type]


def restore_database(plan: RestorePlan, *, execute: bool,
                     show_progress: bool = False) -> RestoreResult:
    """Run the plan (``execute``) or only return it (review). The playbook's lock is
    held, on the maintenance database, from the first step to the last, so two
    operators cannot restore the same database at once."""
    result = RestoreResult(plan, executed=execute)
    if not execute:
        return result
    started = time.perf_counter()
    scope = f"full-restore {plan.database}"
    with _admin(plan.url, plan.maintenance_database) as holder, \
            _admin(plan.url, plan.maintenance_database, autocommit=True) as maintenance:
        with translated_errors():
            take_playbook_lock(holder, scope)
        target: psycopg.Connection | None = None
        try:
            for step in plan.steps:
                if step.on == "tool":
                    result.restore_seconds += _run_pg_restore(plan, step, result,
                                                              show_progress)
                    if plan.strategy == "swap":
                        _verify_new_database(plan)
                    continue
                if step.on == "target":
                    if target is None or target.closed:
                        target = _admin(plan.url, plan.database, autocommit=True)
                    session = target
                else:
                    session = maintenance
                if step.needs_no_sessions:
                    _wait_for_no_sessions(maintenance, plan.database)
                with translated_errors():
                    cursor = session.execute(step.statement)
                if step.ends_sessions:
                    result.terminated += cursor.fetchall()
                result.log.append(step.what)
        finally:
            if target is not None:
                target.close()
            holder.rollback()  # releases the lock
    result.seconds = time.perf_counter() - started
    return result


def _run_pg_restore(plan: RestorePlan, step: Step, result: RestoreResult,
                    show_progress: bool = False) -> float:
    database = plan.new_database if plan.strategy == "swap" else plan.database
    url = localdb.database_url_for(plan.url, database)
    started = time.perf_counter()
    with LoadProgress(lambda: _admin(plan.url, database), None, f"pg_restore {database}",
                      show_progress):
        done = backups.run_tool(Path(step.command[0]), step.command[1:], url=url)
    seconds = time.perf_counter() - started
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    result.log.append(f"pg_restore finished in {seconds:.1f}s with {len(errors)} errors")
    if done.returncode != 0 or errors:
        where = (f"the new database {plan.new_database!r} (the target was not touched and "
                 "still serves the damaged data)" if plan.strategy == "swap" else
                 "the target" + (" (one transaction: rolled back, nothing changed)"
                                 if plan.jobs == 1 else " (parallel: PARTLY restored)"))
        shown = "; ".join(errors[:5]) or backups._last_line(done.stderr)
        raise VerificationFailed(
            f"pg_restore reported {len(errors) or 'an'} error(s) restoring into {where}: "
            f"{shown}.",
            next_step="read the errors; objects created after the backup that depend on "
            "restored ones block --clean: use restore_strategy='swap', which restores into "
            "an empty database.")
    return seconds


def _verify_new_database(plan: RestorePlan) -> None:
    """Swap only: the new database must hold exactly the archive's data before it takes
    the target's name."""
    expected = backups.archive_counts(plan.backup)
    url = localdb.database_url_for(plan.url, plan.new_database)
    with connecting.connect(url=url, purpose="full-restore-verify", read_only=True) as conn:
        counts = scratch_restore.user_table_counts(conn)
    if counts != expected:
        different = sorted(k for k in set(counts) | set(expected)
                           if counts.get(k) != expected.get(k))
        raise VerificationFailed(
            f"The restored copy {plan.new_database!r} differs from the archive in "
            f"{', '.join(different)}. The target was not touched.",
            next_step="inspect the copy, then drop it; choose another backup.")


def _wait_for_no_sessions(conn: psycopg.Connection, database: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                            (database,)).fetchone()[0]
        if not left:
            return
        time.sleep(0.1)
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
        sql.Identifier(database)))
    raise PreconditionFailed(
        f"Sessions are still connected to {database!r} after they were ended, so it cannot "
        "be renamed. Connections were allowed again; the target was not changed.",
        next_step="find them in pg_stat_activity (a superuser may reconnect), then run again.")


def reopen_connections(plan: RestorePlan, *, execute: bool) -> pd.DataFrame:
    """Step 5's first line: let the application connect again (in place with
    block_connections: give back exactly the CONNECT grants that were taken)."""
    rows = [{"step": s.what, "done": "yes" if execute else "no (review)"} for s in plan.reopen]
    if execute and plan.reopen:
        with _admin(plan.url, plan.maintenance_database, autocommit=True) as conn:
            for step in plan.reopen:
                conn.execute(step.statement)
            acl = database_acl(conn, plan.database)
        if acl != plan.database_acl_before:
            raise VerificationFailed(
                f"After giving connections back, the database's grants are {acl}, not "
                f"{plan.database_acl_before} as before the restore.",
                next_step="grant CONNECT back by hand to the roles missing above.")
        rows.append({"step": "database grants as before the restore", "done": "PASS"})
    return pd.DataFrame(rows or [{"step": "nothing was blocked", "done": "-"}],
                        columns=["step", "done"])


# --- step 4: verify -------------------------------------------------------------------


def verify_restore(conn: psycopg.Connection, backup: Backup,
                   reference: TestRestore | None = None,
                   database_acl_before: list[tuple[str, str]] | None = None) -> list[Check]:
    """The document's verification queries as checks: the backup's tables exist, no
    table beyond them, each count equals the archive's, no orphaned profiles; the
    application's grants equal those of the test restore, the database's as before."""
    expected = backups.archive_counts(backup)
    counts = scratch_restore.user_table_counts(conn)
    checks = [Check("every table of the backup exists", set(expected) <= set(counts),
                    sorted(set(expected) - set(counts)) or "all", "all")]
    extra = sorted(set(counts) - set(expected))
    checks.append(Check("no table the backup does not have", not extra, extra or "none",
                        "none"))
    for name in sorted(expected):
        checks.append(Check(f"{name} rows equal the backup's", counts.get(name) == expected[name],
                            counts.get(name), expected[name]))
    if "public.profiles" in counts and "auth.users" in counts:
        orphans = orphaned_profiles(conn)
        checks.append(Check("no orphaned profiles", orphans == 0, orphans, 0))
    if reference is not None and reference.privileges:
        now = scratch_restore.table_privileges(conn)
        checks.append(Check("table grants equal the test restore's",
                            now == reference.privileges, len(now), len(reference.privileges)))
    if database_acl_before is not None:
        acl = database_acl(conn, connecting.current_database(conn))
        checks.append(Check("database grants as before the restore", acl == database_acl_before,
                            acl, database_acl_before))
    conn.rollback()
    return checks


def require_restored(checks: list[Check], plan: RestorePlan | None = None) -> None:
    blocked = ("Application connections are still blocked." if plan and plan.reopen
               else "The restore itself was kept.")
    require_all_pass(
        checks, "The restored database does not match the backup", outcome=blocked,
        next_step="read the checks table; a table the backup does not have is left by "
        "an in-place restore: restore_strategy='swap' gives an exact copy.")


# --- step 5: re-import the rows written after the backup ------------------------------


def _keys_from_csv(path: Path, columns: list[str]) -> list[list[str | None]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return [[row[c] for c in columns] for row in reader]


def _already_present(conn: psycopg.Connection, name: QualifiedName, key: list[str],
                     values: list[list[str | None]]) -> int:
    if not key or not values:
        return 0
    columns = list(zip(*values, strict=True))
    query = sql.SQL("SELECT count(*) FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
        name.identifier,
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in key),
        sql.SQL(", ").join(sql.SQL("{}::text[]").format(sql.Placeholder()) for _ in key))
    return conn.execute(query, [list(c) for c in columns]).fetchone()[0]


def review_reimport(conn: psycopg.Connection, folder: Path | str) -> pd.DataFrame:
    """What re-importing the export would do, per table: rows exported, rows whose key
    is already present (kept as restored), rows that would be inserted. Read-only."""
    folder = Path(folder)
    manifest = require_sound_export(folder)
    _utc(conn)
    rows = []
    for entry in manifest.files:
        name = QualifiedName(entry.schema, entry.name)
        key = catalog.primary_key(conn, name)
        present = _already_present(conn, name, key, _keys_from_csv(folder / entry.file, key))
        rows.append({"table": entry.table, "rows exported": entry.rows,
                     "key already present (skipped)": present,
                     "rows to insert": entry.rows - present,
                     "note": "" if key else "no primary key: every row is inserted"})
    conn.rollback()
    return pd.DataFrame(rows, columns=["table", "rows exported", "key already present (skipped)",
                                       "rows to insert", "note"])


def reimport_rows(conn: psycopg.Connection, folder: Path | str, *, execute: bool
                  ) -> pd.DataFrame:
    """Insert the exported after-backup rows back (parents first; a row whose key exists
    is skipped, never overwritten), move sequences past the new MAX, and check inside
    the transaction that exactly the reviewed rows went in before COMMIT. In review
    mode, returns :func:`review_reimport`."""
    review = review_reimport(conn, folder)
    if not execute:
        return review
    folder = Path(folder)
    manifest = require_sound_export(folder)
    expected = dict(zip(review["table"], review["rows to insert"], strict=True))
    names = catalog.parents_first(conn, [QualifiedName(f.schema, f.name)
                                         for f in manifest.files])
    entries = manifest.by_table()
    inserted: dict[str, int] = {}
    with translated_errors(), conn.transaction():
        take_playbook_lock(conn, "full-restore reimport")
        for name in names:
            entry = entries[str(name)]
            temp = sql.Identifier(f"reimport_{len(inserted)}")
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
                temp, name.identifier))
            with open(folder / entry.file, newline="") as handle:
                header = next(csv.reader(handle))
            copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER)").format(
                temp, sql.SQL(", ").join(sql.Identifier(c) for c in header))
            with conn.cursor() as cur, open(folder / entry.file, "rb") as data:
                with cur.copy(copy) as copying:
                    for block in iter(lambda d=data: d.read(1 << 20), b""):
                        copying.write(block)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in header)
            done = conn.execute(sql.SQL(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} "
                "ON CONFLICT DO NOTHING").format(name.identifier, cols, cols, temp))
            inserted[str(name)] = done.rowcount
            catalog.advance_sequences(conn, name)
        wrong = {t: (inserted.get(t), int(n)) for t, n in expected.items()
                 if inserted.get(t) != int(n)}
        if wrong:
            raise ExportMismatch(
                f"Re-import inserted other row counts than reviewed ({wrong}: inserted, "
                "expected). The transaction was rolled back; nothing was changed.",
                next_step="someone wrote to the database since the review: review again.")
    conn.commit()
    review["rows inserted"] = [inserted.get(t, 0) for t in review["table"]]
    return review


# --- where the rows written after the backup go ----------------------------------------


def export_folder(run, export_dir: str) -> Path:
    """Where this run exports the rows written after the backup: ``export_dir`` if given;
    by default the incident's ``exports/<notebook>-<run start time>/rows_after_backup``
    (one folder per run: a later run never overwrites an earlier run's export)."""
    if str(export_dir or "").strip():
        return incidents.export_folder(export_dir, run.incident_id, run.notebook)
    what = f"{run.notebook}-{run_label(run.started_at)}"
    return incidents.exports_folder(run.incident_id, what,
                                    started_at=run.started_at) / "rows_after_backup"
