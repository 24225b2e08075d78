"""Backups downloaded from Supabase, restored into a scratch database (never production).

Two shapes besides ``pg_dump`` custom archives (which :mod:`backups` reads):

- the dashboard download: one plain SQL script in ``pg_dumpall`` style, often gzipped
  (``*.backup``, ``*.backup.gz``): roles, ``\\connect``, grants to Supabase's roles and
  ``COPY ... FROM stdin`` blocks;
- the trio ``supabase db dump`` writes: ``roles.sql``, ``schema.sql``, ``data.sql``.

Such a script is restored with ``psql`` and ``ON_ERROR_STOP`` off, because restoring
Supabase's files into plain PostgreSQL always raises some errors: every error is captured
with its line and classified. Harmless ones (a role that already exists or is missing,
a Supabase-only extension, ``grant options cannot be granted back to your own grantor``)
are counted and shown; any other stops the step with its line. ``invalid command \\N``
is never harmless: it follows a COPY that failed, and that table's rows were lost.

The script is rewritten on the way, line for line (line numbers stay those of the
original): ``\\connect`` is removed so the data lands in the scratch database, other
databases' sections of a cluster dump are blanked, and ``CREATE ROLE``/``ALTER ROLE`` are
never run. The roles the dump names are created as NOLOGIN placeholders instead, so a
dump can never change the scratch server's own superuser (its password, its SUPERUSER).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from . import backups, connecting, localdb
from .errors import BackupUnusable, ConfigurationError, PlaybookError

KIND_PG_DUMP = "pg_dump"
KIND_SUPABASE_PLAIN = "supabase_plain"
KIND_SUPABASE_TRIO = "supabase_trio"
KINDS = (KIND_PG_DUMP, KIND_SUPABASE_PLAIN, KIND_SUPABASE_TRIO)
TRIO_FILES = ("roles.sql", "schema.sql", "data.sql")
GZIP_MAGIC = b"\x1f\x8b"

# Roles a Supabase project's grants and owners name. Missing ones are created in the
# scratch server only, as NOLOGIN placeholders.
SUPABASE_ROLES = (
    "anon", "authenticated", "service_role", "authenticator", "dashboard_user",
    "supabase_admin", "supabase_auth_admin", "supabase_storage_admin",
    "supabase_functions_admin", "supabase_realtime_admin", "supabase_replication_admin",
    "supabase_read_only_user", "pgbouncer", "pgsodium_keyholder", "pgsodium_keyiduser",
    "pgsodium_keymaker",
)
# Schemas Supabase manages itself; tables there are not the application's data.
SUPABASE_SCHEMAS = (
    "auth_internal", "extensions", "graphql", "graphql_public", "net", "pgbouncer",
    "pgsodium", "pgsodium_masks", "realtime", "storage", "supabase_functions",
    "supabase_migrations", "vault", "_realtime", "_analytics",
)
SKIPPED_DATABASES = ("template0", "template1")

# psql's error lines: "psql:/path/file.sql:123: ERROR:  message".
_PSQL_ERROR = re.compile(r"^psql:(?P<file>.+?):(?P<line>\d+): ERROR:\s+(?P<message>.*)$")
_CONNECT = re.compile(r"^\\(?:connect|c)\s+(?P<rest>.*)$")
_META_DROPPED = re.compile(r"^\\(?:restrict|unrestrict)\b")
_ROLE_STATEMENT = re.compile(r"^(?:CREATE|ALTER)\s+ROLE\s+(?P<name>\"(?:[^\"]|\"\")+\"|[^\s;]+)",
                             re.I)
_DATABASE_STATEMENT = re.compile(r"^(?:CREATE|DROP|ALTER)\s+DATABASE\b", re.I)
_COPY_FROM_STDIN = re.compile(r"^COPY\s.+\sFROM\s+stdin;\s*$", re.I)

# (pattern, why it is harmless). Anything not matched here is fatal.
HARMLESS_ERRORS = (
    (re.compile(r'^role ".+" already exists'), "role already exists on the scratch server"),
    (re.compile(r'^role ".+" does not exist'),
     "a role the dump names is not on the scratch server: only owners/grants are affected"),
    (re.compile(r"^grant options cannot be granted back to your own grantor"),
     "Supabase's grant chain; the data is unaffected"),
    (re.compile(r'^extension ".+" is not available|^could not open extension control file'),
     "a Supabase-only extension that plain PostgreSQL lacks"),
    (re.compile(r'^(schema|extension|publication|event trigger|type|function|policy|'
                r'trigger|relation|constraint|index) .*already exists'),
     "the object already exists in the scratch database"),
    (re.compile(r'^unrecognized configuration parameter "(transaction_timeout|'
                r'idle_session_timeout)"'),
     "a setting of a newer server; irrelevant to the data"),
    (re.compile(r"^permission denied to (set|change) (role|parameter)|^must be (superuser|owner)"
                r"|^permission denied to grant role|^must have admin option on role"),
     "a privilege only Supabase's own admin has; owners/grants only"),
    (re.compile(r'^publication ".+" does not exist'), "Supabase's realtime publication"),
    (re.compile(r'^schema "(' + "|".join(SUPABASE_SCHEMAS) + r')" does not exist'),
     "a schema only Supabase's platform creates"),
)


@dataclass
class RestoreError:
    """One error psql reported while running a script."""

    file: str
    line: int
    message: str
    harmless: bool
    why: str


@dataclass
class ScriptRestore:
    """What restoring a plain-SQL backup into the scratch database did."""

    backup: backups.Backup
    database: str
    seconds: float
    counts: dict[str, int]
    errors: list[RestoreError] = field(default_factory=list)
    roles_created: list[str] = field(default_factory=list)

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


def classify(message: str) -> tuple[bool, str]:
    """(harmless, why) for one psql ERROR message."""
    if message.startswith("invalid command \\"):
        return False, ("a COPY failed before this line, so its rows were read as commands: "
                       "that table's data was lost")
    for pattern, why in HARMLESS_ERRORS:
        if pattern.search(message):
            return True, why
    return False, "not a known harmless restore error"


def parse_psql_errors(stderr: str, shown_names: dict[str, str] | None = None
                      ) -> list[RestoreError]:
    """Every ``psql:<file>:<line>: ERROR:`` line of ``stderr``, classified."""
    found = []
    for raw in stderr.splitlines():
        match = _PSQL_ERROR.match(raw)
        if not match:
            continue
        message = match.group("message").strip()
        harmless, why = classify(message)
        file = (shown_names or {}).get(match.group("file"), Path(match.group("file")).name)
        found.append(RestoreError(file, int(match.group("line")), message, harmless, why))
    return found


# --- reading the files ----------------------------------------------------------------


def _open_text(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="strict", newline="")
    return open(path, encoding="utf-8", errors="strict", newline="")


def _lines(path: Path) -> Iterator[str]:
    """The script's lines (newline kept); BackupUnusable if it cannot be read to the end."""
    try:
        with _open_text(path) as handle:
            yield from handle
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as exc:
        raise BackupUnusable(
            f"The backup {path.name} cannot be read to the end ({type(exc).__name__}: {exc}): "
            "it is truncated or damaged. Nothing was changed.",
            next_step="download the backup again from the Supabase dashboard, or choose "
            "another one.",
        ) from None


def _looks_like_sql_dump(path: Path) -> bool:
    try:
        with _open_text(path) as handle:
            head = handle.read(4096)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError):
        return path.name.endswith((".backup", ".backup.gz", ".sql", ".sql.gz"))
    return "PostgreSQL database" in head or head.lstrip().startswith(("--", "SET ", "\\"))


def detect_kind(path: Path | str) -> str:
    """``pg_dump`` | ``supabase_plain`` | ``supabase_trio`` for a file or trio folder."""
    path = Path(path)
    if path.is_dir():
        missing = [name for name in TRIO_FILES if not (path / name).is_file()]
        if missing:
            raise BackupUnusable(
                f"The folder {path} is not a `supabase db dump` trio: {', '.join(missing)} "
                "missing. Nothing was changed.",
                next_step="point backup_file at the folder holding roles.sql, schema.sql and "
                "data.sql, or at one backup file.",
            )
        return KIND_SUPABASE_TRIO
    if not path.is_file():
        raise BackupUnusable(
            f"The backup {path} does not exist. Nothing was changed.",
            next_step="check backup_file (a pg_dump archive, a Supabase .backup/.backup.gz, "
            "or the folder of roles.sql/schema.sql/data.sql).",
        )
    if backups.detect_kind(path) == backups.KIND_PG_DUMP_CUSTOM:
        return KIND_PG_DUMP
    if _looks_like_sql_dump(path):
        return KIND_SUPABASE_PLAIN
    raise BackupUnusable(
        f"{path.name} is neither a pg_dump archive nor a plain SQL dump. Nothing was changed.",
        next_step="choose the file downloaded from Supabase (Database -> Backups), or a "
        "pg_dump -Fc archive.",
    )


@dataclass
class ScriptScan:
    """What a pre-scan of a plain script found (it is read to the end once)."""

    roles: list[str]
    databases: list[str]
    complete: bool
    server_version: str
    tool_version: str


_COMPLETE = re.compile(r"^-- PostgreSQL database (cluster )?dump complete")


def scan_script(path: Path) -> ScriptScan:
    """Read the whole script: roles it creates, databases it connects to, whether it ends
    with pg_dump's "dump complete" line (a cut download does not)."""
    roles: list[str] = []
    databases: list[str] = []
    complete = False
    server = tool = ""
    in_copy = False
    for line in _lines(path):
        if in_copy:
            if line.rstrip("\r\n") == "\\.":
                in_copy = False
            continue
        if _COPY_FROM_STDIN.match(line):
            in_copy = True
            continue
        if line.startswith("--"):
            if _COMPLETE.match(line):
                complete = True
            elif line.startswith("-- Dumped from database version") and not server:
                server = line.split("version", 1)[1].strip()
            elif line.startswith("-- Dumped by pg_dump") and not tool:
                tool = line.split("version", 1)[1].strip()
            continue
        if not _META_DROPPED.match(line):
            complete = complete and not line.strip()
        role = _ROLE_STATEMENT.match(line)
        if role and line[:6].upper() == "CREATE":
            roles.append(_unquote(role.group("name")))
        connect = _CONNECT.match(line)
        if connect:
            databases.append(_connect_target(connect.group("rest")))
    return ScriptScan(roles, databases, complete and not in_copy, server, tool)


def _unquote(name: str) -> str:
    name = name.rstrip(";")
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()


def _connect_target(rest: str) -> str:
    rest = rest.strip()
    if rest.startswith("-reuse-previous=on "):
        rest = rest.split(" ", 1)[1]
    match = re.match(r'"((?:[^"]|"")*)"|(\S+)', rest)
    if not match:
        return ""
    if match.group(1) is not None:
        return match.group(1).replace('""', '"')
    text = match.group(2)
    if "dbname=" in text:  # "\connect -reuse-previous=on "dbname='x'"" in newer pg_dumpall
        inner = re.search(r"dbname='?((?:[^'\\]|\\.)*)'?", rest)
        return inner.group(1) if inner else text
    return text.strip("'")


def read_plain(path: Path) -> backups.Backup:
    """A plain SQL dump as a :class:`backups.Backup`; ``problem`` set when truncated.
    Plain dumps carry no creation time: the file's modification time stands in, and
    the operator confirms it at the gate."""
    path = Path(path)
    scan = scan_script(path)
    problem = "" if scan.complete else (
        "the script does not end with pg_dump's 'dump complete' line: the file is truncated")
    kept = [d for d in scan.databases if d not in SKIPPED_DATABASES]
    return backups.Backup(
        KIND_SUPABASE_PLAIN, path, datetime.fromtimestamp(path.stat().st_mtime, UTC),
        path.stat().st_size, database=kept[-1] if kept else "", server_version=scan.server_version,
        tool_version=scan.tool_version, problem=problem)


def read_trio(folder: Path) -> backups.Backup:
    """The ``roles.sql``/``schema.sql``/``data.sql`` trio as one backup."""
    folder = Path(folder)
    problems, server, tool = [], "", ""
    for name in TRIO_FILES:
        scan = scan_script(folder / name)
        server, tool = server or scan.server_version, tool or scan.tool_version
        if not scan.complete and name != "roles.sql":
            problems.append(f"{name} does not end with pg_dump's 'dump complete' line "
                            "(truncated)")
    data = folder / "data.sql"
    return backups.Backup(
        KIND_SUPABASE_TRIO, folder, datetime.fromtimestamp(data.stat().st_mtime, UTC),
        sum((folder / n).stat().st_size for n in TRIO_FILES), server_version=server,
        tool_version=tool, problem="; ".join(problems))


def read_any_backup(path: Path | str, kind: str = "auto") -> backups.Backup:
    """Any backup this playbook reads, refused (BackupUnusable) when it cannot be used."""
    path = Path(path)
    if kind not in ("auto", *KINDS):
        raise ConfigurationError(
            f"backup_kind must be auto, {', '.join(KINDS)}; got {kind!r}. Nothing was changed.",
            next_step="use backup_kind='auto' unless detection picks the wrong kind.")
    found = detect_kind(path)
    if kind != "auto" and kind != found:
        raise BackupUnusable(
            f"{path.name} looks like a {found} backup, not {kind}. Nothing was changed.",
            next_step="use backup_kind='auto' or point backup_file at the right file.")
    if found == KIND_PG_DUMP:
        backup = backups.read_backup(path)
        if backup.usable:
            proof = backups.prove_readable(backup)
            if not proof.passed:
                backup = backups.Backup(backup.kind, backup.path, backup.taken_at, backup.size,
                                        backup.database, backup.server_version,
                                        backup.tool_version, proof.evidence())
    elif found == KIND_SUPABASE_PLAIN:
        backup = read_plain(path)
    else:
        backup = read_trio(path)
    if not backup.usable:
        raise BackupUnusable(
            f"The backup {path.name} cannot be used: {backup.problem}. Nothing was changed.",
            next_step="download or take the backup again, or choose another one.")
    return backup


# Let the backup listings of the full-restore notebook show Supabase downloads too.
backups.READERS.setdefault(KIND_SUPABASE_PLAIN, read_plain)


# --- the scratch database -------------------------------------------------------------


@dataclass
class Scratch:
    """A scratch database created for this run. Its URL is private, never shown."""

    server_url: str
    database: str

    @property
    def url(self) -> str:
        return localdb.database_url_for(self.server_url, self.database)

    def connect(self, *, purpose: str = "scratch", read_only: bool = False) -> psycopg.Connection:
        return connecting.connect(url=self.url, purpose=purpose, read_only=read_only)

    def drop(self) -> None:
        localdb.drop_database(self.server_url, self.database)

    def describe(self) -> str:
        return f"database {self.database!r} on {connecting.summary(self.server_url)}"


def scratch_server(scratch_url_env: str = "") -> str:
    """The server for scratch databases: the one ``scratch_url_env`` names, else the
    embedded local cluster (started if needed). Never DATABASE_URL's server by default."""
    if scratch_url_env:
        return connecting.database_url(scratch_url_env)
    state = localdb.LocalCluster().start()
    return state.url("postgres")


def create_scratch(scratch_url_env: str = "", name: str = "") -> Scratch:
    """A new, empty scratch database (from template0)."""
    server = scratch_server(scratch_url_env)
    database = name or f"playbook_scratch_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
    localdb.create_database(server, database, template="template0")
    return Scratch(server, database)


def ensure_roles(conn: psycopg.Connection, roles: list[str] | tuple[str, ...]) -> list[str]:
    """Create each missing role as NOLOGIN (cluster-wide, on the scratch server only);
    a concurrent creation is tolerated. Returns the roles created."""
    created = []
    for role in dict.fromkeys(roles):
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            created.append(role)
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass
    return created


# --- rewriting and running a script ---------------------------------------------------


def prepare_script(source: Path, target: Path, keep_database: str = "") -> int:
    """Copy ``source`` to ``target`` (plain text), line for line, so psql's line numbers
    are the original's: ``\\connect`` and role/database statements become comments, and
    the sections of databases other than ``keep_database`` become blank lines. Returns
    the number of lines rewritten."""
    rewritten = 0
    in_copy = False
    skipping = False
    with open(target, "w", encoding="utf-8", newline="") as out:
        for line in _lines(source):
            if in_copy:
                if line.rstrip("\r\n") == "\\.":
                    in_copy = False
                out.write("\n" if skipping else line)
                continue
            connect = _CONNECT.match(line)
            if connect:
                database = _connect_target(connect.group("rest"))
                skipping = database in SKIPPED_DATABASES or (
                    bool(keep_database) and database != keep_database)
                out.write("-- playbook: \\connect removed (data goes to the scratch database)\n")
                rewritten += 1
                continue
            if _COPY_FROM_STDIN.match(line):
                in_copy = True
            if skipping:
                out.write("\n")
                rewritten += 1
            elif _META_DROPPED.match(line) or _ROLE_STATEMENT.match(line) or \
                    _DATABASE_STATEMENT.match(line):
                out.write("-- playbook: not run on the scratch server: "
                          + line.strip()[:40].replace("PASSWORD", "...") + "\n"
                          if "PASSWORD" not in line.upper() else
                          "-- playbook: role statement not run (it sets a password)\n")
                rewritten += 1
            else:
                out.write(line)
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


def run_script(scratch: Scratch, scripts: list[Path], workdir: Path,
               keep_database: str = "") -> tuple[list[RestoreError], list[str]]:
    """Run the scripts, in order, with psql into the scratch database; returns every
    error (classified) and the roles created."""
    workdir.mkdir(parents=True, exist_ok=True)
    with scratch.connect(purpose="scratch-restore") as conn:
        major = connecting.server_version(conn)
        conn.autocommit = True
        roles = list(SUPABASE_ROLES)
        for script in scripts:
            roles += scan_script(script).roles
        created = ensure_roles(conn, roles)
    from .pgbinaries import client_program

    psql = client_program("psql", major)
    errors: list[RestoreError] = []
    for script in scripts:
        keep = keep_database or _database_to_keep(scan_script(script))
        prepared = workdir / f"{script.name}.prepared.sql"
        prepare_script(script, prepared, keep)
        try:
            result = backups.run_tool(psql, ["-X", "-q", "--no-password", "-v",
                                             "ON_ERROR_STOP=0", "-f", str(prepared)],
                                      url=scratch.url)
        finally:
            shown = {str(prepared): script.name}
        prepared.unlink(missing_ok=True)
        if result.returncode not in (0, 3):
            errors.append(RestoreError(script.name, 0, _last(result.stderr), False,
                                       "psql could not run the script"))
        errors += parse_psql_errors(result.stderr, shown)
    return errors, created


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def restore_script_backup(backup: backups.Backup, scratch: Scratch, workdir: Path
                          ) -> ScriptRestore:
    """Restore a Supabase plain dump or trio into ``scratch``; refused (BackupUnusable,
    with the line) on any error that is not known to be harmless."""
    scripts = ([backup.path / name for name in TRIO_FILES] if backup.kind == KIND_SUPABASE_TRIO
               else [backup.path])
    started = time.perf_counter()
    errors, created = run_script(scratch, scripts, workdir)
    seconds = time.perf_counter() - started
    with scratch.connect(purpose="scratch-count", read_only=True) as conn:
        counts = backups.user_table_counts(conn)
    restored = ScriptRestore(backup, scratch.database, seconds, counts, errors, created)
    if restored.fatal:
        first = restored.fatal[0]
        raise BackupUnusable(
            f"Restoring {backup.path.name} into the scratch database stopped on an error that "
            f"is not harmless, at {first.file} line {first.line}: {first.message} ({first.why}); "
            f"{len(restored.fatal)} such error(s), {len(restored.harmless)} harmless. "
            "Production was not touched.",
            next_step="read that line of the backup; if it is cut or damaged, download it again.",
        )
    return restored


# --- one entry point for every kind ---------------------------------------------------


@dataclass
class RestoredBackup:
    """A backup restored into a scratch database, whatever its kind."""

    backup: backups.Backup
    scratch: Scratch
    seconds: float
    counts: dict[str, int]
    script: ScriptRestore | None = None

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"table": t, "rows in the backup": n}
                             for t, n in sorted(self.counts.items())],
                            columns=["table", "rows in the backup"])

    def summary(self) -> pd.DataFrame:
        errors = self.script.errors if self.script else []
        rows = [("backup", self.backup.path.name), ("kind", self.backup.kind),
                ("taken at (UTC)", backups._shown(self.backup.taken_at)),
                ("scratch", self.scratch.describe()), ("seconds", round(self.seconds, 1)),
                ("tables", len(self.counts)), ("rows", sum(self.counts.values())),
                ("harmless errors", sum(e.harmless for e in errors))]
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def restore_to_scratch(backup: backups.Backup, scratch_url_env: str = "", *,
                       workdir: Path | None = None) -> RestoredBackup:
    """Restore ``backup`` into a new scratch database (never the target). pg_dump archives
    go through :func:`backups.test_restore` (the full-restore notebook's own proof), the
    Supabase kinds through psql. The scratch database is dropped if the restore fails."""
    scratch = create_scratch(scratch_url_env)
    try:
        if backup.kind in (KIND_SUPABASE_PLAIN, KIND_SUPABASE_TRIO):
            work = workdir or Path(os.environ.get("TMPDIR", "/tmp"))
            restored = restore_script_backup(backup, scratch, work)
            return RestoredBackup(backup, scratch, restored.seconds, restored.counts, restored)
        with psycopg.connect(scratch.server_url, autocommit=True) as conn:
            ensure_roles(conn, SUPABASE_ROLES)
        localdb.drop_database(scratch.server_url, scratch.database)
        proof = backups.test_restore(backup, scratch.server_url, keep=True,
                                     name=scratch.database)
        if not proof.passed:
            raise BackupUnusable(
                f"The scratch restore of {backup.path.name} does not match the archive: "
                f"{proof.evidence()}. Production was not touched.",
                next_step="choose another backup.")
        return RestoredBackup(backup, scratch, proof.seconds, proof.counts)
    except (PlaybookError, subprocess.SubprocessError):
        scratch.drop()
        raise
