"""Backups restored into a scratch database (never production), whatever Supabase wrote.

Three kinds: ``pg_dump`` custom archives (restored as the script they hold, ``pg_restore
--file``); the dashboard download, one plain SQL script in ``pg_dumpall`` style, often
gzipped (``*.backup``, ``*.backup.gz``); the trio ``supabase db dump`` writes, ``roles.sql``,
``schema.sql``, ``data.sql`` (comments stripped, each ending with ``RESET ALL;``, schema.sql
without ``auth``/``storage`` whose rows are in data.sql).

Every script runs through ``psql`` with ``ON_ERROR_STOP`` off, because Supabase's backups
always raise some errors in plain PostgreSQL: each is kept with its line and statement and
judged against the chosen tables (:mod:`restore_errors`). The rows the backup holds (its
``COPY`` blocks and ``INSERT``s, partitions each once) are compared with the rows restored;
a chosen table that does not restore whole stops the step, named with its line.

The script is rewritten on the way, line for line (line numbers stay those of the
original): ``\\connect`` is removed so the data lands in the scratch database, other
databases' sections of a cluster dump are blanked, ``\\restrict`` is dropped, and ``CREATE
ROLE``/``ALTER ROLE`` are never run. The roles the dump names are created as NOLOGIN
placeholders instead (and dropped with the scratch database), so a dump can never change
the scratch server's own superuser (its password, its SUPERUSER).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from . import backups
from .backup_kinds import (
    CONNECT,
    DATABASE_STATEMENT,
    GZIP_MAGIC,
    KIND_SUPABASE_PLAIN,
    KIND_SUPABASE_TRIO,
    META_DROPPED,
    ROLE_STATEMENT,
    SKIPPED_DATABASES,
    TRIO_FILES,
    ScriptScan,
    connect_target,
    read_plain,
    scan_script,
)
from .db import connecting, localdb, scratch_servers
from .db.names import QualifiedName, split_identifier
from .db.pgbinaries import client_program
from .errors import BackupUnusable, PlaybookError
from .evidence import Evidence
from .progress import LoadProgress
from .restore_errors import (
    COPY_FROM_STDIN,
    Chosen,
    RestoreError,
    advice,
    judge,
    parse_psql_errors,
    statement_tables,
    statements_at,
)
from .script_reader import ScriptReader

# Roles a Supabase project's grants and owners name. Missing ones are created in the
# scratch server only, as NOLOGIN placeholders.
SUPABASE_ROLES = (
    "anon", "authenticated", "service_role", "authenticator", "dashboard_user",
    "supabase_admin", "supabase_auth_admin", "supabase_storage_admin",
    "supabase_functions_admin", "supabase_realtime_admin", "supabase_replication_admin",
    "supabase_read_only_user", "pgbouncer", "pgsodium_keyholder", "pgsodium_keyiduser",
    "pgsodium_keymaker",
)

@dataclass
class ScriptRestore:
    """What restoring a plain-SQL backup into the scratch database did."""

    backup: backups.Backup
    database: str
    seconds: float
    counts: dict[str, int]
    errors: list[RestoreError] = field(default_factory=list)
    roles_created: list[str] = field(default_factory=list)
    expected: dict[str, int] = field(default_factory=dict)  # rows the backup holds
    chosen: Chosen | None = None

    def counts_table(self) -> pd.DataFrame:
        """Per table with rows in the backup: rows it holds, rows restored, verdict (a
        partitioned table's rows are in its partitions, each counted once)."""
        rows = []
        for table in sorted(set(self.expected) | set(self.counts)):
            held, got = self.expected.get(table), self.counts.get(table)
            chosen = self.chosen is None or self.chosen.covers(table)
            verdict = "PASS" if held == got else ("FAIL" if chosen else "differs (not chosen)")
            rows.append({"table": table, "chosen": "yes" if chosen else "",
                         "rows in the backup": held, "rows restored": got, "result": verdict})
        return pd.DataFrame(rows, columns=["table", "chosen", "rows in the backup",
                                           "rows restored", "result"])

    def require_chosen_tables_whole(self) -> None:
        """BackupUnusable when a chosen table is missing or short of rows, or a statement
        creating, shaping or filling one failed: named with its line and statement."""
        chosen = self.chosen or Chosen()
        short = [t for t, n in sorted(self.expected.items())
                 if chosen.covers(t) and self.counts.get(t) != n]
        if not self.fatal and not short:
            return
        first = self.fatal[0] if self.fatal else next(
            (e for e in self.errors if any(t in statement_tables(e.statement) for t in short)),
            None)
        problems = [f"{t}: {self.expected[t]} rows in the backup, "
                    + (f"{self.counts[t]} restored" if t in self.counts else "table missing")
                    for t in short]
        where = (f" The first error that touches it: {first.file} line {first.line}: "
                 f"{first.message} (statement: {first.statement.strip()[:300]})"
                 if first else "")
        cause = (f"{len(self.fatal)} error(s) on the chosen tables ({chosen.describe()})"
                 if self.fatal else "the chosen tables did not restore whole")
        raise BackupUnusable(
            f"Restoring {self.backup.path.name} into the scratch database: {cause}. "
            + ("; ".join(problems) + "." if problems else "") + where
            + f" {len(self.harmless)} other error(s) cannot matter to the chosen tables. "
            "Production was not touched.",
            next_step=advice(first))

    @property
    def harmless(self) -> list[RestoreError]:
        return [e for e in self.errors if e.harmless]

    @property
    def fatal(self) -> list[RestoreError]:
        return [e for e in self.errors if not e.harmless]

    def errors_table(self) -> pd.DataFrame:
        """Harmless errors grouped by reason, with how many and the first line."""
        rows: dict[str, dict] = {}
        for error in self.errors:
            key = error.why if error.harmless else error.message
            entry = rows.setdefault(key, {"verdict": "harmless" if error.harmless else "FATAL",
                                          "reason": key, "count": 0,
                                          "first at": f"{error.file}:{error.line}",
                                          "example": error.message})
            entry["count"] += 1
        return pd.DataFrame(list(rows.values()),
                            columns=["verdict", "reason", "count", "first at", "example"])


# --- reading the files ----------------------------------------------------------------


# Let the backup listings of the full-restore notebook show Supabase downloads too.
backups.READERS.setdefault(KIND_SUPABASE_PLAIN, read_plain)


# --- the scratch database -------------------------------------------------------------


@dataclass
class Scratch:
    """A scratch database created for this run. Its URL is private, never shown."""

    server_url: str
    database: str
    server: scratch_servers.ScratchServer | None = None
    roles_created: list[str] = field(default_factory=list)
    prepared: list[str] = field(default_factory=list)  # extensions or stand-ins, base schemas

    @property
    def url(self) -> str:
        return localdb.database_url_for(self.server_url, self.database)

    def connect(self, *, purpose: str = "scratch", read_only: bool = False) -> psycopg.Connection:
        return connecting.connect(url=self.url, purpose=purpose, read_only=read_only)

    def drop(self) -> list[str]:
        """Drop the database, then the placeholder roles this run created; returns the
        roles that could not be removed (still used elsewhere)."""
        localdb.drop_database(self.server_url, self.database)
        left = scratch_servers.remove_placeholder_roles(self.server_url, self.roles_created)
        self.roles_created = left
        return left

    def describe(self) -> str:
        where = self.server.describe() if self.server else connecting.summary(self.server_url)
        return f"database {self.database!r} on {where}"


def create_scratch(scratch_url_env: str = "", name: str = "",
                   extensions: Sequence[str] = ()) -> Scratch:
    """A new, empty scratch database (from template0) on the scratch server chosen for a
    backup that creates ``extensions``."""
    server = scratch_servers.scratch_server(scratch_url_env, extensions)
    database = name or f"playbook_scratch_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
    localdb.create_database(server.url, database, template="template0")
    return Scratch(server.url, database, server)


def ensure_roles(conn: psycopg.Connection, roles: list[str] | tuple[str, ...]) -> list[str]:
    return scratch_servers.create_placeholder_roles(conn, roles)


# --- rewriting and running a script ---------------------------------------------------


def prepare_script(source: Path, target: Path, keep_database: str = "") -> int:
    """Copy ``source`` to ``target`` (plain text), line for line, so psql's line numbers
    are the original's: ``\\connect`` and role/database statements become comments, and
    the sections of databases other than ``keep_database`` become blank lines. Returns
    the number of lines rewritten."""
    rewritten = 0
    skipping = False
    with ScriptReader(source) as reader, open(target, "wb") as out:
        def blank_lines(data: bytes) -> None:
            out.write(b"\n" * data.count(b"\n"))

        for line in reader:
            connect = CONNECT.match(line)
            if connect:
                database = connect_target(connect.group("rest"))
                skipping = database in SKIPPED_DATABASES or (
                    bool(keep_database) and database != keep_database)
                out.write(b"-- playbook: \\connect removed (data goes to the scratch database)\n")
                rewritten += 1
                continue
            if skipping:
                out.write(b"\n")
                rewritten += 1
            elif META_DROPPED.match(line) or ROLE_STATEMENT.match(line) or \
                    DATABASE_STATEMENT.match(line):
                out.write(("-- playbook: not run on the scratch server: "
                           + line.strip()[:40].replace("PASSWORD", "...") + "\n"
                           if "PASSWORD" not in line.upper() else
                           "-- playbook: role statement not run (it sets a password)\n"
                           ).encode())
                rewritten += 1
            else:
                out.write(line.encode())
            if COPY_FROM_STDIN.match(line):  # its data, copied (or blanked) in bulk
                reader.copy_block(blank_lines if skipping else out.write)
    return rewritten


def _database_to_keep(scan: ScriptScan) -> str:
    kept = list(dict.fromkeys(d for d in scan.databases if d not in SKIPPED_DATABASES))
    if len(kept) > 1:
        if "postgres" in kept:  # Supabase's application database is "postgres"
            return "postgres"
        raise BackupUnusable(
            f"The cluster dump holds several databases ({', '.join(kept)}) and none is "
            "Supabase's 'postgres'. Nothing was changed.",
            next_step="restore from a dump of the one database to repair.")
    return kept[0] if kept else ""


def run_script(scratch: Scratch, script: Path, workdir: Path, scan: ScriptScan, *,
               data_only: bool = False, shown_name: str = "",
               show_progress: bool = False) -> list[RestoreError]:
    """Run one script with psql into the scratch database; returns every error with the
    statement that failed. ``data_only`` scripts (the CLI's data.sql) run with triggers
    and foreign keys off (``session_replication_role = replica``), as pg_restore's
    ``--disable-triggers`` would: a trigger must not rewrite the backup's rows."""
    workdir.mkdir(parents=True, exist_ok=True)
    psql = client_program("psql", scratch.server.major if scratch.server else 0)
    keep = _database_to_keep(scan)
    prepared = workdir / f"{uuid.uuid4().hex[:8]}-{script.name}.prepared.sql"
    shown = shown_name or script.name
    # A plain script with nothing to rewrite (a pg_dump archive written out as SQL) runs
    # as it is: the same lines, so the same line numbers, without a second copy.
    with open(script, "rb") as probe:
        as_is = scan.rewrites == 0 and probe.read(2) != GZIP_MAGIC
    try:
        if as_is:
            prepared = script
        else:
            prepare_script(script, prepared, keep)
        args = ["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0"]
        if data_only:
            args += ["-c", "SET session_replication_role = replica"]
        with LoadProgress(lambda: scratch.connect(purpose="scratch-progress"),
                          prepared.stat().st_size, f"restore {shown}", show_progress):
            result = backups.run_tool(psql, [*args, "-f", str(prepared)], url=scratch.url)
        errors = parse_psql_errors(result.stderr, {str(prepared): shown})
        texts = statements_at(prepared, {e.line for e in errors})
    finally:
        if not as_is:
            prepared.unlink(missing_ok=True)
    for error in errors:
        error.statement = texts.get(error.line, "")
    if result.returncode not in (0, 3):
        errors.append(RestoreError(shown, 0, _last(result.stderr), False,
                                   "psql could not run the script"))
    return errors


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# --- what the CLI's schema.sql leaves out ------------------------------------------------

BASE_SQL = Path(__file__).with_name("supabase_base.sql")


def create_what_data_needs(conn: psycopg.Connection, schema: ScriptScan,
                           data: ScriptScan) -> list[str]:
    """The CLI's schema.sql leaves out Supabase's own schemas (``auth``, ``storage``...)
    while its data.sql holds their rows. Before schema.sql runs: the minimal Supabase base
    the playbook ships (``auth.users`` and what policies call, ``storage`` buckets and
    objects), for the schemas schema.sql does not create. Returns what was created."""
    wanted = {split_identifier(t)[0] for t in data.rows} | {"auth"}
    missing = sorted(s for s in ("auth", "storage") if s in wanted
                     and s not in schema.created_schemas)
    if not missing:
        return []
    conn.execute(BASE_SQL.read_text())
    return [f"schema {s} from the playbook's minimal Supabase base (schema.sql leaves it out)"
            for s in missing]


def complete_tables_for_data(conn: psycopg.Connection, data: ScriptScan) -> list[str]:
    """After schema.sql: a table data.sql fills that does not exist gets created, and a
    column its INSERTs name that the base lacks gets added, as ``text`` (PostgreSQL
    casts every literal to text on assignment), so the rows have a home. Returns what
    was done."""
    done = []
    for table, columns in sorted(data.insert_columns.items()):
        schema, name = split_identifier(table)
        exists = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
        identifier = sql.Identifier(schema, name)
        if not exists:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(identifier, sql.SQL(", ").join(
                sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)))
            done.append(f"{table}: created with {len(columns)} text columns for data.sql's rows")
            continue
        present = {r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped", (identifier.as_string(conn),)).fetchall()}
        added = [c for c in columns if c not in present]
        for column in added:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} text").format(
                identifier, sql.Identifier(column)))
        if added:
            done.append(f"{table}: added {', '.join(added)} (text) for data.sql's rows")
    return done


# --- restoring a script backup ---------------------------------------------------------


def _scripts_of(backup: backups.Backup, workdir: Path, rows_of: Chosen | None = None
                ) -> list[Path]:
    if backup.kind == KIND_SUPABASE_TRIO:
        return [backup.path / name for name in TRIO_FILES]
    if backup.kind == backups.KIND_PG_DUMP_CUSTOM:
        return [archive_as_script(backup, workdir, rows_of)]
    return [backup.path]


def _data_entries_left_out(program: Path, backup: backups.Backup, rows_of: Chosen,
                           listing: Path) -> int:
    """Write into ``listing`` the archive's table of contents (``pg_restore -l``) with the
    rows (TABLE DATA) of every table ``rows_of`` does not cover commented out, for
    ``pg_restore -L``: definitions, sequences and the chosen tables' rows stay. Foreign
    keys and plain indexes are left out too: the scratch copy is only read, by primary
    key (a foreign key into a table whose rows are left out could not be created anyway).
    Returns how many tables' rows were left out; 0 (and no filtering) when the archive
    has partitions, whose rows belong to a parent the listing does not name, or a name
    the listing does not show unambiguously."""
    listed = backups.run_tool(program, ["--list", str(backup.path)])
    if listed.returncode != 0:
        return 0
    lines = listed.stdout.splitlines(keepends=True)
    if any(" TABLE ATTACH " in line for line in lines if not line.startswith(";")):
        return 0
    left_out = 0
    kept = []
    for line in lines:
        marker = " TABLE DATA "
        if not line.startswith(";") and (" FK CONSTRAINT " in line or " INDEX " in line):
            kept.append(";" + line)
            continue
        if not line.startswith(";") and marker in line:
            words = line.split(marker, 1)[1].split()
            if len(words) != 3:  # schema name owner; a name with a space: keep its rows
                return 0
            if not rows_of.covers(str(QualifiedName(words[0], words[1]))):
                kept.append(";" + line)
                left_out += 1
                continue
        kept.append(line)
    listing.write_text("".join(kept))
    return left_out


def archive_as_script(backup: backups.Backup, workdir: Path, rows_of: Chosen | None = None
                      ) -> Path:
    """A ``pg_dump -Fc`` archive written out as the plain script it holds (``pg_restore
    --file``), so it restores like the other kinds: every error kept with its statement.
    With ``rows_of`` naming tables or schemas, only those tables' rows are in it (every
    definition is): a surgical restore reads no other rows, so it restores no others."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"{uuid.uuid4().hex[:8]}-{backup.path.name}.sql"
    program = backups._client("pg_restore", None)
    listing = target.with_suffix(".list")
    selected = []
    if rows_of is not None and (rows_of.tables or rows_of.schemas) and \
            _data_entries_left_out(program, backup, rows_of, listing):
        selected = [f"--use-list={listing}"]
    try:
        result = backups.run_tool(program, ["--file", str(target), *selected,
                                            str(backup.path)])
    finally:
        listing.unlink(missing_ok=True)
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        raise BackupUnusable(
            f"pg_restore could not read {backup.path.name} to its end: "
            f"{backups._last_line(result.stderr)}. Nothing was changed.",
            next_step="the archive is damaged or cut short: choose another backup, or copy it "
            "again from where it is stored.")
    return target


def restore_scripts(backup: backups.Backup, scratch: Scratch, workdir: Path, chosen: Chosen,
                    scripts: list[Path], scans: list[ScriptScan], *,
                    show_progress: bool = False) -> ScriptRestore:
    """Restore a backup's scripts into ``scratch`` through psql, then compare the rows
    the backup holds with the rows restored. Refused (BackupUnusable, with the line and
    the statement) when a chosen table is missing, short of rows, or its statement
    failed; every other error is counted and shown with why it cannot matter."""
    started = time.perf_counter()
    with scratch.connect(purpose="scratch-restore") as conn:
        conn.autocommit = True
        roles = list(SUPABASE_ROLES) + [r for scan in scans for r in scan.roles]
        scratch.roles_created += ensure_roles(conn, roles)
        scratch.prepared += scratch_servers.prepare_database(conn)
        if backup.kind == KIND_SUPABASE_TRIO:
            scratch.prepared += create_what_data_needs(conn, scans[1], scans[2])
    errors: list[RestoreError] = []
    for script, scan in zip(scripts, scans, strict=True):
        data_only = backup.kind == KIND_SUPABASE_TRIO and script.name == "data.sql"
        if data_only:
            with scratch.connect(purpose="scratch-restore") as conn:
                conn.autocommit = True
                scratch.prepared += complete_tables_for_data(conn, scan)
        shown = backup.path.name if backup.kind == backups.KIND_PG_DUMP_CUSTOM else ""
        errors += run_script(scratch, script, workdir, scan, data_only=data_only,
                             shown_name=shown + (" (as SQL)" if shown else ""),
                             show_progress=show_progress)
    seconds = time.perf_counter() - started
    expected: dict[str, int] = {}
    for scan in scans:
        for table, rows in scan.rows.items():
            expected[table] = expected.get(table, 0) + rows
    for error in errors:
        judge(error, chosen)
    with scratch.connect(purpose="scratch-count", read_only=True) as conn:
        counts = restored_counts(conn, expected)
    restored = ScriptRestore(backup, scratch.database, seconds, counts, errors,
                             list(scratch.roles_created), expected=expected, chosen=chosen)
    restored.require_chosen_tables_whole()
    return restored


def restored_counts(conn: psycopg.Connection, tables) -> dict[str, int]:
    """Rows restored per table (``ONLY``: a partitioned parent's rows are its partitions',
    counted with each partition); a table that is not there is left out."""
    counts = {}
    for table in tables:
        schema, name = split_identifier(table)
        if not conn.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = "
                            "c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                            (schema, name)).fetchone():
            continue
        counts[table] = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(
            sql.Identifier(schema, name))).fetchone()[0]
    conn.rollback()
    return counts


# --- one entry point for every kind ---------------------------------------------------


@dataclass
class RestoredBackup:
    """A backup restored into a scratch database, whatever its kind."""

    backup: backups.Backup
    scratch: Scratch
    seconds: float
    counts: dict[str, int]
    script: ScriptRestore | None = None

    def evidence(self) -> Evidence:
        """Restored into scratch shows the backup tested."""
        return Evidence(True, f"{self.backup.path.name} restored into scratch "
                              f"({self.scratch.describe()}): {len(self.counts)} tables, "
                              f"{sum(self.counts.values()):,} rows")

    def table(self) -> pd.DataFrame:
        """Per table: rows the backup holds, rows restored, and whether it is chosen."""
        if self.script is None:
            return pd.DataFrame([{"table": t, "rows in the backup": n}
                                 for t, n in sorted(self.counts.items())],
                                columns=["table", "rows in the backup"])
        return self.script.counts_table()

    def summary(self) -> pd.DataFrame:
        errors = self.script.errors if self.script else []
        rows = [("backup", self.backup.path.name), ("kind", self.backup.kind),
                ("taken at (UTC)", backups.shown_time(self.backup.taken_at)),
                ("taken at: from", self.backup.taken_at_source),
                ("scratch server", self.scratch.server.describe() if self.scratch.server
                 else connecting.summary(self.scratch.server_url)),
                ("scratch database", self.scratch.database),
                ("prepared on the scratch database", "; ".join(self.scratch.prepared) or "-"),
                ("placeholder roles created (removed with the scratch database)",
                 ", ".join(self.scratch.roles_created) or "-"),
                ("seconds", round(self.seconds, 1)),
                ("tables", len(self.counts)), ("rows", sum(self.counts.values())),
                ("errors that cannot matter to the chosen tables (counted, shown below)",
                 sum(e.harmless for e in errors))]
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")

    def show(self):
        """The summary for the notebook, every value in full (no truncation)."""
        return self.summary().style.set_properties(**{"text-align": "left"})

    def errors(self) -> pd.DataFrame:
        if self.script is None:
            return pd.DataFrame(columns=["verdict", "reason", "count", "first at", "example"])
        return self.script.errors_table()


def _rows_left_out(scan: ScriptScan) -> bool:
    """Whether the script creates a table without restoring its rows (pg_dump writes a
    COPY for every table it dumps, empty ones included)."""
    return bool(scan.created_tables - set(scan.rows))


def _chosen_have_children(scratch: Scratch, chosen: Chosen) -> bool:
    """Whether a chosen table has inheritance children or partitions in the scratch copy
    (their rows are read through it, so they must be restored too)."""
    with scratch.connect(purpose="scratch-count", read_only=True) as conn:
        parents = conn.execute(
            "SELECT DISTINCT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c "
            "ON c.oid = i.inhparent JOIN pg_namespace n ON n.oid = c.relnamespace").fetchall()
    return any(chosen.covers(str(QualifiedName(s, t))) for s, t in parents)


def restore_to_scratch(backup: backups.Backup, scratch_url_env: str = "", *,
                       workdir: Path | None = None, tables=(), schemas=(),
                       rows_only_of_chosen: bool = True,
                       show_progress: bool = False) -> RestoredBackup:
    """Restore ``backup`` into a new scratch database (never the target), on the best
    scratch server for the extensions it creates (:mod:`scratch_servers`). Every kind goes
    through psql (a pg_dump archive as the script it holds), with a progress bar of the
    rows and MB loaded when ``show_progress``. The scratch database and its placeholder
    roles are dropped if the restore fails."""
    work = workdir or Path(os.environ.get("TMPDIR", "/tmp"))
    chosen = Chosen.of(tables, schemas)
    # Only the chosen tables' rows are restored from a pg_dump archive, unless a chosen
    # table turns out to have children (inheritance) whose rows are read through it.
    scripts = _scripts_of(backup, work, chosen if rows_only_of_chosen else None)
    try:
        scans = [scan_script(s) for s in scripts]
        wanted = sorted({e for scan in scans for e in scan.extensions})
        scratch = create_scratch(scratch_url_env, extensions=wanted)
        try:
            restored = restore_scripts(backup, scratch, work, chosen, scripts, scans,
                                       show_progress=show_progress)
            partial = rows_only_of_chosen and backup.kind == backups.KIND_PG_DUMP_CUSTOM \
                and _rows_left_out(scans[0])
            if partial and _chosen_have_children(scratch, chosen):
                scratch.drop()
                return restore_to_scratch(backup, scratch_url_env, workdir=workdir,
                                          tables=tables, schemas=schemas,
                                          rows_only_of_chosen=False,
                                          show_progress=show_progress)
        except (PlaybookError, subprocess.SubprocessError, psycopg.Error):
            scratch.drop()
            raise
        if partial:
            scratch.prepared.append("only the chosen tables' rows restored, without foreign "
                                    "keys and plain indexes: the diff reads no others")
        return RestoredBackup(backup, scratch, restored.seconds, restored.counts, restored)
    finally:
        if backup.kind == backups.KIND_PG_DUMP_CUSTOM:
            scripts[0].unlink(missing_ok=True)
