"""Backups: take them, list them, choose the right one, prove it can be restored.

The procedure document's prerequisites "backup exists", "backup is recent" (older than
the migration) and "backup has been tested" become checks here. A :class:`Backup` says
what a file is (``kind``), when it was taken (read from the archive itself, never from
the file's mtime, which a copy changes), its size, the database and server version it
came from. Today one kind is read: ``pg_dump`` custom-format archives (what
``playbook backup take`` writes). Supabase's dashboard downloads (plain SQL, often
gzipped) and the ``roles.sql``/``schema.sql``/``data.sql`` trio are further kinds: a
reader for them registers in :data:`READERS` and everything else (listing, choosing,
proving, test restores) works unchanged.

Passwords reach ``pg_dump``/``pg_restore`` only through their environment
(:func:`tool_environment`), never on the command line, where ``ps`` would show them.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from .db import connecting
from .db.connecting import redact
from .db.names import QualifiedName, split_identifier
from .db.pgbinaries import candidate_bindirs, client_environment, client_program
from .errors import BackupUnusable, ConfigurationError, ExportMismatch
from .evidence import NOT_DONE, Evidence
from .exports import file_sha256, writing_into

KIND_PG_DUMP_CUSTOM = "pg_dump custom archive"
CUSTOM_MAGIC = b"PGDMP"
BACKUP_SUFFIX = ".dump"
PARTIAL_SUFFIX = ".partial"

@dataclass(frozen=True)
class Backup:
    """One backup file and what it holds. ``problem`` is set when it cannot be read."""

    kind: str
    path: Path
    taken_at: datetime | None
    size: int
    database: str = ""
    server_version: str = ""
    tool_version: str = ""
    problem: str = ""
    taken_at_source: str = "written inside the archive"

    def evidence(self) -> Evidence:
        """A backup read to its end shows the backup verified."""
        if not self.usable:
            return NOT_DONE
        return Evidence(True, f"{self.path.name}, taken {self.taken_at:%Y-%m-%d %H:%M:%S} UTC, "
                              "read to its end")

    @property
    def usable(self) -> bool:
        return not self.problem and self.taken_at is not None

    def as_row(self) -> dict[str, object]:
        return {
            "file": self.path.name,
            "kind": self.kind,
            "taken at (UTC)": shown_time(self.taken_at),
            "size (MB)": round(self.size / 1e6, 2),
            "database": self.database,
            "server": self.server_version,
            "problem": self.problem,
        }

    def table(self) -> pd.DataFrame:
        row = self.as_row()
        row["folder"] = str(self.path.parent)
        row["taken at: from"] = self.taken_at_source
        return pd.DataFrame(list(row.items()), columns=["", "value"]).set_index("")


def shown_time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "(unknown)"


def backups_table(backups: Iterable[Backup]) -> pd.DataFrame:
    return pd.DataFrame([b.as_row() for b in backups],
                        columns=list(Backup(KIND_PG_DUMP_CUSTOM, Path("x"), None, 0).as_row()))


# --- running pg_dump / pg_restore safely --------------------------------------------


def tool_environment(url: str) -> dict[str, str]:
    """The process environment for a libpq tool that should reach ``url``: the whole
    connection (password included) as PG* variables (pgbinaries.client_environment), so
    nothing secret is on the command line; archive headers written in UTC."""
    env = client_environment(url)
    env["TZ"] = "UTC"
    return env


def server_major_of(url: str) -> int:
    """Major version of the server at ``url`` (for choosing a new-enough client tool)."""
    with connecting.connect(url=url, purpose="backup", read_only=True) as conn:
        return connecting.server_version(conn)


def run_tool(program: Path, args: list[str], *, url: str | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a PostgreSQL client tool; the connection (if any) only through the environment.
    Output that could echo a secret is redacted before anyone sees it."""
    env = tool_environment(url) if url is not None else {**os.environ, "TZ": "UTC"}
    result = subprocess.run([str(program), *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if url is not None:
        result.stderr = connecting.redact(result.stderr, url)
    return result


def _client(name: str, server_major: int | None) -> Path:
    if server_major is not None:
        return client_program(name, server_major)
    # Reading an archive needs no server: the newest tool reads every older archive.
    newest = max((b for b in candidate_bindirs() if (b.path / name).exists()),
                 key=lambda b: b.major, default=None)
    if newest is None:
        return client_program(name, 0)  # raises PostgresNotFound with the advice
    return newest.path / name


# --- taking a backup ----------------------------------------------------------------


def backup_file_name(database: str, moment: datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", database).strip("_") or "database"
    return f"{safe}-{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}{BACKUP_SUFFIX}"


def take_backup(url: str, folder: Path | str, *, extra_args: list[str] | tuple[str, ...] = ()
                ) -> Backup:
    """``pg_dump -Fc`` of the database at ``url`` into ``folder``, named after the
    database and the UTC time. Written to a ``.partial`` file first and renamed only
    when pg_dump succeeded, so a failed dump never looks like a backup. ``extra_args``
    go to pg_dump (e.g. ``--exclude-table-data``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    major = server_major_of(url)
    pg_dump = _client("pg_dump", major)
    database = connecting.parse(url).get("dbname") or os.environ.get("PGDATABASE", "database")
    moment = datetime.now(UTC)
    final = folder / backup_file_name(database, moment)
    while final.exists():  # two backups in one second: keep both
        moment += timedelta(seconds=1)
        final = folder / backup_file_name(database, moment)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    result = run_tool(pg_dump, ["--format=custom", "--no-password", f"--file={partial}",
                                *extra_args], url=url)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupUnusable(
            f"pg_dump of {connecting.summary(url)} failed: {result.stderr.strip()[-600:]}. "
            "No backup was written; the database was not changed.",
            next_step="check the connection and that the user may read every table.",
        )
    partial.rename(final)
    return read_backup(final)


# --- reading backups ----------------------------------------------------------------


def _archive_time(text: str) -> datetime:
    """The 'Archive created at' of a pg_restore --list header, as an aware datetime."""
    match = re.match(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\s*(\S*)", text.strip())
    if not match:
        raise ValueError(text)
    naive = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    zone = match.group(2)
    if zone in ("", "UTC", "GMT", "Z", "UCT"):
        return naive.replace(tzinfo=UTC)
    if re.fullmatch(r"[+-]\d{2}(:?\d{2})?", zone):
        hours, minutes = int(zone[1:3]), int(zone[-2:]) if len(zone) > 3 else 0
        sign = -1 if zone[0] == "-" else 1
        return naive.replace(tzinfo=UTC) - sign * timedelta(hours=hours, minutes=minutes)
    try:
        return naive.replace(tzinfo=ZoneInfo(zone))
    except (KeyError, ValueError, OSError):
        pass
    if zone in time.tzname:  # the abbreviation of this machine's zone
        return naive.astimezone()
    raise ValueError(f"unknown time zone {zone!r}")


def read_pg_dump_custom(path: Path) -> Backup:
    """A custom-format archive's header, read with ``pg_restore --list``."""
    size = path.stat().st_size
    result = run_tool(_client("pg_restore", None), ["--list", str(path)])
    if result.returncode != 0:
        return Backup(KIND_PG_DUMP_CUSTOM, path, None, size,
                      problem=f"unreadable: {_last_line(result.stderr)}")
    header = dict(re.findall(r"^;\s+([A-Za-z_ ]+?):\s*(.*)$", result.stdout, re.MULTILINE))
    created = re.search(r"^; Archive created at (.+)$", result.stdout, re.MULTILINE)
    try:
        taken_at = _archive_time(created.group(1)) if created else None
        problem = "" if created else "the archive header has no creation time"
    except ValueError as exc:
        taken_at, problem = None, f"cannot read the archive's creation time ({exc})"
    return Backup(
        KIND_PG_DUMP_CUSTOM, path, taken_at, size,
        database=header.get("dbname", ""),
        server_version=header.get("Dumped from database version", ""),
        tool_version=header.get("Dumped by pg_dump version", ""),
        problem=problem,
    )


def restore_error(stderr: str) -> str:
    """pg_restore's real error: the ERROR line, the object it was restoring and the
    statement, not only its last line (which is often just "Command was: ...")."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    picked = [line.removeprefix("pg_restore: ") for line in lines
              if "ERROR:" in line or line.startswith(("pg_restore: from TOC entry",
                                                      "Command was:"))]
    return " | ".join(picked[:3])[:800] if picked else _last_line(stderr)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("pg_restore: error: ") if lines else "no output"


def detect_kind(path: Path) -> str | None:
    """The kind of backup ``path`` holds, from its first bytes; None if not a backup we
    know."""
    with open(path, "rb") as handle:
        start = handle.read(len(CUSTOM_MAGIC))
    if start == CUSTOM_MAGIC:
        return KIND_PG_DUMP_CUSTOM
    return None


# kind -> reader. Supabase's plain-SQL downloads and the roles/schema/data trio add theirs.
READERS: dict[str, Callable[[Path], Backup]] = {KIND_PG_DUMP_CUSTOM: read_pg_dump_custom}


def read_backup(path: Path | str) -> Backup:
    """What ``path`` holds; BackupUnusable when it is missing. A file that exists but
    cannot be read comes back with ``problem`` set (listings show it)."""
    path = Path(path)
    if not path.is_file():
        raise BackupUnusable(
            f"The backup {path} does not exist. Nothing was changed.",
            next_step="check backup_dir/backup_file, or take one with `playbook backup take`.",
        )
    kind = detect_kind(path)
    if kind is None:
        return Backup("unknown", path, None, path.stat().st_size,
                      problem="not a backup this playbook can read (no pg_dump archive header)")
    return READERS[kind](path)


def list_backups(folder: Path | str) -> list[Backup]:
    """Every backup file in ``folder``, oldest first (by the archive's own time);
    unreadable ones last, with their problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BackupUnusable(
            f"The backup folder {folder} does not exist. Nothing was changed.",
            next_step="set backup_dir to the folder that holds the backups, or take one with "
            "`playbook backup take --folder <dir>`.",
        )
    found = [read_backup(p) for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.endswith(PARTIAL_SUFFIX)
             and not p.name.startswith(".")]
    usable = sorted((b for b in found if b.usable), key=lambda b: b.taken_at)
    return usable + [b for b in found if not b.usable and b.kind != "unknown"] + [
        b for b in found if b.kind == "unknown" and b.path.suffix == BACKUP_SUFFIX]


def parse_moment(text: str | datetime | None) -> datetime | None:
    """An ISO time (``2025-01-20T12:00:00Z``; no zone means UTC) as an aware datetime."""
    if text is None or text == "":
        return None
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is not an ISO date and time. Nothing was changed.",
            next_step="write it like 2025-01-26T14:30:00Z (UTC) or with an offset, +01:00.",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def choose_backup(folder: Path | str, *, before: str | datetime | None = None,
                  backup_file: str = "") -> Backup:
    """The backup to restore: ``backup_file`` if named (relative to ``folder`` or
    absolute), else the newest usable one taken before ``before`` (the migration's
    time). Refused (BackupUnusable) when none qualifies or the named one is newer than
    the migration."""
    folder = Path(folder)
    limit = parse_moment(before)
    if backup_file:
        path = Path(backup_file)
        chosen = read_backup(path if path.is_absolute() else folder / path)
        if not chosen.usable:
            raise BackupUnusable(
                f"The backup {chosen.path.name} cannot be used: {chosen.problem}. Nothing was "
                "changed.",
                next_step="choose another backup (backup_file) or take a fresh one.",
            )
    else:
        candidates = [b for b in list_backups(folder) if b.usable]
        if limit is not None:
            older = [b for b in candidates if b.taken_at < limit]
        else:
            older = candidates
        if not older:
            newest = f" (the newest is {shown_time(candidates[-1].taken_at)})" if candidates else ""
            when = f" taken before {shown_time(limit)}" if limit else ""
            raise BackupUnusable(
                f"No usable backup{when} in {folder}{newest}. Nothing was changed.",
                next_step="find an older backup (Supabase dashboard, another folder), or stop: "
                "a backup taken after the migration restores the broken state.",
            )
        chosen = older[-1]
    if limit is not None and chosen.taken_at >= limit:
        raise BackupUnusable(
            f"The backup {chosen.path.name} was taken at {shown_time(chosen.taken_at)} UTC, not "
            f"before the migration ({shown_time(limit)} UTC): restoring it would bring back the "
            "broken state. Nothing was changed.",
            next_step="choose a backup taken before migration_applied_at.",
        )
    return chosen


# --- proving a backup usable --------------------------------------------------------


@dataclass
class Proof:
    """What was checked about a backup and what was found."""

    backup: Backup
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def in_words(self) -> str:
        return "; ".join(f"{name}: {detail}" for name, _, detail in self.checks)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"check": n, "result": "PASS" if ok else "FAIL", "evidence": d}
             for n, ok, d in self.checks], columns=["check", "result", "evidence"])

    def require(self) -> Proof:
        failed = [f"{n} ({d})" for n, ok, d in self.checks if not ok]
        if failed:
            raise BackupUnusable(
                f"The backup {self.backup.path.name} is not usable: {'; '.join(failed)}. "
                "Nothing was changed.",
                next_step="choose another backup (backup_file) or take a fresh one.",
            )
        return self


def prove_readable(backup: Backup) -> Proof:
    """Read the whole archive with ``pg_restore`` (table of contents, then every data
    block into /dev/null): a truncated or damaged file fails here, not half-way through
    a restore."""
    proof = Proof(backup)
    if backup.problem:
        proof.checks.append(("header readable", False, backup.problem))
        return proof
    proof.checks.append(("header readable", True,
                         f"{backup.kind} of {backup.database!r}, PostgreSQL "
                         f"{backup.server_version}, taken {shown_time(backup.taken_at)} UTC"))
    started = time.perf_counter()
    result = run_tool(_client("pg_restore", None), ["--file=/dev/null", str(backup.path)])
    if result.returncode != 0:
        proof.checks.append(("every data block readable", False,
                             f"pg_restore stopped: {_last_line(result.stderr)} (truncated or "
                             "damaged file)"))
    else:
        proof.checks.append(("every data block readable", True,
                             f"{backup.size:,} bytes read in {time.perf_counter() - started:.1f}s"))
    return proof


def require_tools_for(backup: Backup, server_major: int) -> Path:
    """pg_restore new enough for the server and for the archive; ToolTooOld otherwise."""
    return _client("pg_restore", max(server_major, _major(backup.tool_version) or 0))


def _major(version: str) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


# --- what the archive holds -----------------------------------------------------------


def archive_counts(backup: Backup) -> dict[str, int]:
    """Rows per table in the archive's data, counted by streaming ``pg_restore
    --data-only`` (COPY text: one line per row, ``\\.`` ends a table). Every table of the
    archive appears, empty ones with 0."""
    program = _client("pg_restore", None)
    counts: dict[str, int] = {}
    env = {**os.environ, "TZ": "UTC"}
    with subprocess.Popen([str(program), "--data-only", "--file=-", str(backup.path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        current: str | None = None
        rows = 0
        for line in proc.stdout:
            if current is None:
                if line.startswith(b"COPY "):
                    current, rows = copy_target(line.decode()), 0
            elif line == b"\\.\n":
                counts[current] = rows
                current = None
            else:
                rows += 1
        error = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise BackupUnusable(
            f"The backup {backup.path.name} could not be read to the end: {_last_line(error)}. "
            "Nothing was changed.",
            next_step="choose another backup.",
        )
    return counts


def copy_target(line: str) -> str:
    """``schema.table`` of a ``COPY schema.table (cols) FROM stdin;`` line."""
    text = line[len("COPY "):]
    i, in_quote = 0, False
    while i < len(text):
        char = text[i]
        if char == '"':
            in_quote = not in_quote
        elif not in_quote and char in " (":
            break
        i += 1
    parts = split_identifier(text[:i])
    name = QualifiedName(parts[0], parts[1]) if len(parts) == 2 else QualifiedName("public",
                                                                                     parts[0])
    return str(name)


# --- test restore into a scratch database -------------------------------------------




def dump_archive(url: str, tables: Sequence[QualifiedName], path: Path,
                 *, server_major: int, pg_dump: Path | None = None,
                 snapshot: str | None = None,
                 meanwhile: Callable[[], None] | None = None) -> dict[str, object]:
    """A pg_dump custom-format archive (-Fc) of ``tables`` (definitions, data, owned
    sequences) at ``path``; returns its size and SHA-256 for the manifest. The connection
    reaches pg_dump through its environment only. ``pg_dump``: the program, when the
    caller already chose it (see :func:`pgbinaries.client_program`). ``snapshot``: an
    exported snapshot to dump (``pg_dump --snapshot``; its transaction must stay open
    until this returns). ``meanwhile()`` runs while pg_dump works; if it fails, pg_dump
    is stopped and the failure raised."""
    pg_dump = pg_dump or client_program("pg_dump", server_major)
    args = [str(pg_dump), "--format=custom", "--no-password", f"--file={path}"]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    for table in tables:
        # Double quotes make every character of the name literal in a pg_dump pattern.
        quoted = ".".join('"' + part.replace('"', '""') + '"'
                          for part in (table.schema, table.name))
        args.append(f"--table={quoted}")
    with writing_into(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    # pg_dump's messages go to a file: a pipe nobody reads while meanwhile() runs could fill.
    with tempfile.TemporaryFile("w+") as messages:
        with subprocess.Popen(args, env=client_environment(url), stdout=subprocess.DEVNULL,
                              stderr=messages, text=True) as process:
            try:
                if meanwhile is not None:
                    meanwhile()
                process.wait(timeout=3600)
            except BaseException:
                # SIGTERM: pg_dump cancels its query on the server before it exits (a
                # killed one would leave its session waiting there, e.g. for a lock).
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                raise
        messages.seek(0)
        stderr = messages.read()
    if process.returncode != 0:
        raise ExportMismatch(
            f"pg_dump could not write the archive {path.name}: "
            f"{redact(stderr.strip()[-600:], url)}. Nothing was changed.",
            next_step="check pg_dump's message; the CSV export is unaffected.",
        )
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path),
            "tool": str(pg_dump)}
