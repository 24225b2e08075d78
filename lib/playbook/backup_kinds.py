"""Reading a backup file, whatever Supabase wrote: which kind it is, what its script holds
(tables, rows, extensions, schemas), and when it was taken.

Three kinds: ``pg_dump`` custom archives; the dashboard download, one plain SQL script in
``pg_dumpall`` style, often gzipped (``*.backup``, ``*.backup.gz``); the trio ``supabase db
dump`` writes, ``roles.sql``, ``schema.sql``, ``data.sql``. Restoring one into a scratch
database is :mod:`playbook.supabase_dumps`."""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import backups
from .db.names import split_identifier
from .errors import BackupUnusable, ConfigurationError
from .restore_errors import COPY_FROM_STDIN, IDENTIFIER, key_or_none
from .script_reader import GZIP_MAGIC, ScriptReader

SKIPPED_DATABASES = ("template0", "template1")

META_DROPPED = re.compile(r"^\\(?:restrict|unrestrict)\b")
ROLE_STATEMENT = re.compile(r"^(?:CREATE|ALTER)\s+ROLE\s+(?P<name>\"(?:[^\"]|\"\")+\"|[^\s;]+)",
                             re.I)
DATABASE_STATEMENT = re.compile(r"^(?:CREATE|DROP|ALTER)\s+DATABASE\b", re.I)



KIND_PG_DUMP = "pg_dump"


KIND_SUPABASE_PLAIN = "supabase_plain"


KIND_SUPABASE_TRIO = "supabase_trio"


KINDS = (KIND_PG_DUMP, KIND_SUPABASE_PLAIN, KIND_SUPABASE_TRIO)


TRIO_FILES = ("roles.sql", "schema.sql", "data.sql")




def _open_text(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="strict", newline="")
    return open(path, encoding="utf-8", errors="strict", newline="")


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
    rows: dict[str, int] = field(default_factory=dict)  # rows per table (COPY or INSERT)
    created_tables: set[str] = field(default_factory=set)
    created_schemas: set[str] = field(default_factory=set)
    insert_columns: dict[str, list[str]] = field(default_factory=dict)
    started_at: datetime | None = None
    ends_with_reset_all: bool = False
    extensions: set[str] = field(default_factory=set)  # what CREATE EXTENSION names
    # Lines prepare_script would rewrite (\connect, \restrict, role and database
    # statements): none, and the script runs as it is, without a rewritten copy.
    rewrites: int = 0


_COMPLETE = re.compile(r"^-- PostgreSQL database (cluster )?dump complete")


_TABLE_NAME = rf"({IDENTIFIER}(?:\.{IDENTIFIER})?)"


_INSERT = re.compile(
    rf"^INSERT INTO {_TABLE_NAME}\s*(?:\((.*?)\)\s*)?(?:VALUES|SELECT|OVERRIDING)", re.I)


_CREATE_TABLE = re.compile(
    rf"^CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?{_TABLE_NAME}\s*(?:\(|PARTITION|$)", re.I)


_CREATE_EXTENSION = re.compile(rf"^CREATE EXTENSION (?:IF NOT EXISTS )?({IDENTIFIER})", re.I)


_CREATE_SCHEMA = re.compile(rf"^CREATE SCHEMA (?:IF NOT EXISTS )?({IDENTIFIER})", re.I)


_STARTED = re.compile(r"^-- (?:Started|Completed) on (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\s*(\S*)")


def scan_script(path: Path) -> ScriptScan:
    """Read the whole script: roles it creates, databases it connects to, rows per table,
    tables and schemas it creates, and whether it ends as pg_dump ends a script ("dump
    complete") or as ``supabase db dump`` does (``RESET ALL;``, comments stripped). COPY
    data is counted in bulk (:mod:`script_reader`), never split into lines here."""
    scan = ScriptScan([], [], False, "", "")
    complete = False
    in_copy: str | None = None
    last_statement = ""
    with ScriptReader(path) as reader:
        for line in reader:
            if COPY_FROM_STDIN.match(line):
                target = backups.copy_target(line)
                rows, ended = reader.copy_block()
                scan.rows[target] = scan.rows.get(target, 0) + rows
                in_copy = None if ended else target
                last_statement = "COPY"
                complete = False
                continue
            complete, last_statement = _scan_line(scan, line, complete, last_statement)
    scan.ends_with_reset_all = last_statement.upper() == "RESET ALL;" and in_copy is None
    scan.complete = (complete or scan.ends_with_reset_all) and in_copy is None
    return scan


def _scan_line(scan: ScriptScan, line: str, complete: bool, last_statement: str
               ) -> tuple[bool, str]:
    """What one line outside COPY data tells :func:`scan_script`; returns the new
    (complete, last statement)."""
    if line.startswith("--"):
        if _COMPLETE.match(line):
            complete = True
        elif line.startswith("-- Dumped from database version") and not scan.server_version:
            scan.server_version = line.split("version", 1)[1].strip()
        elif line.startswith("-- Dumped by pg_dump") and not scan.tool_version:
            scan.tool_version = line.split("version", 1)[1].strip()
        elif scan.started_at is None and (started := _STARTED.match(line)):
            try:
                scan.started_at = backups._archive_time(
                    f"{started.group(1)} {started.group(2)}")
            except ValueError:
                pass
        return complete, last_statement
    stripped = line.strip()
    if line[:1] == "\\" or line[:1] in "CcDdAa" and (
            ROLE_STATEMENT.match(line) or DATABASE_STATEMENT.match(line)):
        scan.rewrites += bool(META_DROPPED.match(line) or CONNECT.match(line)
                              or ROLE_STATEMENT.match(line)
                              or DATABASE_STATEMENT.match(line))
    if stripped and not META_DROPPED.match(line):
        complete = False
        last_statement = stripped
    if (insert := _INSERT.match(line)):
        name = key_or_none(insert.group(1))
        if name:
            scan.rows[name] = scan.rows.get(name, 0) + 1
            if name not in scan.insert_columns and insert.group(2):
                scan.insert_columns[name] = [
                    split_identifier(c)[0] for c in _split_columns(insert.group(2))]
    elif (table := _CREATE_TABLE.match(line)):
        if name := key_or_none(table.group(1)):
            scan.created_tables.add(name)
    elif (schema := _CREATE_SCHEMA.match(line)):
        scan.created_schemas.add(split_identifier(schema.group(1))[0])
    elif (extension := _CREATE_EXTENSION.match(line)):
        scan.extensions.add(split_identifier(extension.group(1))[0])
    role = ROLE_STATEMENT.match(line)
    if role and line[:6].upper() == "CREATE":
        scan.roles.append(_unquote(role.group("name")))
    connect = CONNECT.match(line)
    if connect:
        scan.databases.append(connect_target(connect.group("rest")))
    return complete, last_statement


def _split_columns(text: str) -> list[str]:
    return [c.strip() for c in re.findall(r'"(?:[^"]|"")+"|[^,\s]+', text)]


def _unquote(name: str) -> str:
    name = name.rstrip(";")
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()


CONNECT = re.compile(r"^\\(?:connect|c)\s+(?P<rest>.*)$")


def connect_target(rest: str) -> str:
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


_DASHBOARD_NAME = re.compile(r"(\d{2})-(\d{2})-(\d{4})@(\d{2})-(\d{2})-(\d{2})")


def taken_at(path: Path, scan: ScriptScan) -> tuple[datetime, str]:
    """When a plain dump was taken, and where that came from: the dump's own
    ``-- Started on`` line (``pg_dump --verbose``), else the time in a dashboard
    download's name (``db_cluster-DD-MM-YYYY@HH-MM-SS``, UTC), else, only as a last
    resort, the file's modification time (which a copy changes: the gate asks)."""
    if scan.started_at is not None:
        return scan.started_at, "written inside the dump"
    named = _DASHBOARD_NAME.search(path.name)
    if named:
        day, month, year, hour, minute, second = map(int, named.groups())
        try:
            return (datetime(year, month, day, hour, minute, second, tzinfo=UTC),
                    "the dashboard's file name")
        except ValueError:
            pass
    return (datetime.fromtimestamp(path.stat().st_mtime, UTC),
            "the file's modification time (the dump holds no time): check it")


def read_plain(path: Path) -> backups.Backup:
    """A plain SQL dump as a :class:`backups.Backup`; ``problem`` set when truncated."""
    path = Path(path)
    scan = scan_script(path)
    problem = "" if scan.complete else (
        "the script ends neither with pg_dump's 'dump complete' line nor with the "
        "Supabase CLI's 'RESET ALL;': the file is truncated, cut short by an interrupted "
        "download or copy")
    kept = [d for d in scan.databases if d not in SKIPPED_DATABASES]
    moment, source = taken_at(path, scan)
    return backups.Backup(
        KIND_SUPABASE_PLAIN, path, moment, path.stat().st_size,
        database=kept[-1] if kept else "", server_version=scan.server_version,
        tool_version=scan.tool_version, problem=problem, taken_at_source=source)


def read_trio(folder: Path) -> backups.Backup:
    """The ``roles.sql``/``schema.sql``/``data.sql`` trio as one backup."""
    folder = Path(folder)
    problems, server, tool = [], "", ""
    scans = {}
    for name in TRIO_FILES:
        scan = scans[name] = scan_script(folder / name)
        server, tool = server or scan.server_version, tool or scan.tool_version
        if not scan.complete and name != "roles.sql":
            problems.append(f"{name} ends neither with 'RESET ALL;' (as supabase db dump "
                            "writes it) nor with pg_dump's 'dump complete' line: it is "
                            "truncated (cut short)")
    moment, source = taken_at(folder / "data.sql", scans["data.sql"])
    return backups.Backup(
        KIND_SUPABASE_TRIO, folder, moment,
        sum((folder / n).stat().st_size for n in TRIO_FILES), server_version=server,
        tool_version=tool, problem="; ".join(problems), taken_at_source=source)


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
                                        backup.tool_version, proof.in_words())
    elif found == KIND_SUPABASE_PLAIN:
        backup = read_plain(path)
    else:
        backup = read_trio(path)
    if not backup.usable:
        raise BackupUnusable(
            f"The backup {path.name} cannot be used: {backup.problem}. Nothing was changed.",
            next_step=("download or copy the backup again (the file on disk is cut short), "
                       "or choose another one." if "truncated" in backup.problem else
                       "choose another backup; this one's header cannot be read by this "
                       "playbook's pg_restore."))
    return backup
