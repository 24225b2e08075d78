"""Errors met while restoring a backup into a scratch database, and which of them matter.

psql reports each error with the line its statement ended on. :func:`statements_at` finds
that statement again, and :func:`judge` decides from it, against the tables the operator
chose, whether the error can change those tables' rows: only a statement that creates,
shapes or fills a chosen table can. Everything else (extensions, event triggers,
ownership, privileges, comments, policies, other tables) is counted and shown with why it
cannot matter. Messages known to be harmless whatever the statement are in
:data:`HARMLESS_ERRORS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .db.names import QualifiedName, parse_table_name, split_identifier
from .errors import PlaybookError

# Schemas Supabase manages itself; tables there are not the application's data.
SUPABASE_SCHEMAS = (
    "auth_internal", "extensions", "graphql", "graphql_public", "net", "pgbouncer",
    "pgsodium", "pgsodium_masks", "realtime", "storage", "supabase_functions",
    "supabase_migrations", "vault", "_realtime", "_analytics",
)

# psql's error lines: "psql:/path/file.sql:123: ERROR:  message".
_PSQL_ERROR = re.compile(r"^psql:(?P<file>.+?):(?P<line>\d+): ERROR:\s+(?P<message>.*)$")
COPY_FROM_STDIN = re.compile(r"^COPY\s.+\sFROM\s+stdin;\s*$", re.I)
# One name part as a dump writes it: "quoted" (with "" inside) or unquoted.
IDENTIFIER = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'


def table_key(text: str) -> str:
    """``schema.table`` as the playbook writes it, from a name as a dump writes it
    (quoted or not, ``public`` when unqualified)."""
    parts = split_identifier(text.strip())
    return str(QualifiedName(parts[0], parts[1]) if len(parts) == 2
               else QualifiedName("public", parts[0]))


def key_or_none(text: str) -> str | None:
    try:
        return table_key(text)
    except PlaybookError:
        return None


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
    (re.compile(r'^extension ".+" does not exist'),
     "a comment or change on an extension this scratch server lacks"),
    (re.compile(r"^permission denied to change owner of event trigger"),
     "an event trigger owned by Supabase's superuser (supabase_admin): ownership only"),
    (re.compile(r'^unrecognized privilege type "maintain"'),
     "PostgreSQL 17's MAINTAIN privilege, unknown to this older scratch server: grants only"),
)


@dataclass
class RestoreError:
    """One error psql reported while running a script."""

    file: str
    line: int
    message: str
    harmless: bool
    why: str
    statement: str = ""  # the statement that failed (first 2,000 characters)


def advice(error: RestoreError | None) -> str:
    """A next step that fits what failed (never "download it again" for a file that
    reads to its end: the read was already proven)."""
    message = error.message if error else ""
    if "does not exist" in message and ("function" in message or "type" in message):
        return ("the chosen table uses a function or type this scratch server lacks (an "
                "extension): point scratch_url_env at a server with that extension (e.g. "
                "Debian's postgresql-15 with contrib, or a Supabase local stack), or choose "
                "other tables.")
    if "does not exist" in message:
        return ("the backup does not create what this statement needs: check that the chosen "
                "tables are in this backup, or restore a fuller backup (pg_dump -Fc of the "
                "whole database).")
    if "invalid command" in message or "COPY" in message.upper():
        return ("a COPY of a chosen table failed (see its line): read that line of the backup; "
                "if the file is damaged there, use another backup.")
    return ("read the statement above; if the scratch server cannot hold it, point "
            "scratch_url_env at one that can (same major version as production), or choose "
            "other tables.")


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


# --- which tables the operator chose, and what an error touches ------------------------


@dataclass(frozen=True)
class Chosen:
    """The tables the operator compares: ``tables``, else every table of ``schemas``;
    neither: every table (a full proof of the backup)."""

    tables: frozenset[str] = frozenset()
    schemas: frozenset[str] = frozenset()

    @classmethod
    def of(cls, tables=(), schemas=()) -> Chosen:
        return cls(frozenset(str(parse_table_name(t)) for t in tables or ()),
                   frozenset(schemas or ()) if not tables else frozenset())

    def covers(self, table: str) -> bool:
        if self.tables:
            return table in self.tables
        if self.schemas:
            return split_identifier(table)[0] in self.schemas
        return True

    def describe(self) -> str:
        if self.tables:
            return ", ".join(sorted(self.tables))
        if self.schemas:
            return "every table of " + ", ".join(sorted(self.schemas))
        return "every table"


# Statements whose failure cannot change the rows of a table: (pattern, why).
_NO_ROWS = (
    (r"^(GRANT|REVOKE)\b|^ALTER DEFAULT PRIVILEGES\b",
     "privileges (who may read or write), not the rows"),
    (r"^ALTER\s.+\sOWNER TO\b", "ownership, not the rows (a placeholder role cannot own it)"),
    (r"^COMMENT ON\b|^SECURITY LABEL\b", "a comment or label"),
    (r"^(CREATE|ALTER|DROP) EXTENSION\b",
     "an extension this scratch server lacks (stand-ins cover what table definitions use)"),
    (r"^(CREATE|ALTER) EVENT TRIGGER\b", "an event trigger (fires on DDL, never on rows)"),
    (r"^(CREATE|ALTER|DROP) POLICY\b|\bROW LEVEL SECURITY\b",
     "row level security (filters who sees rows; the scratch copy is read as superuser)"),
    (r"^(CREATE|ALTER|DROP) PUBLICATION\b|^(CREATE|ALTER) SUBSCRIPTION\b",
     "Supabase's realtime publication"),
    (r"^(CREATE|ALTER) (ROLE|USER)\b", "a role"),
    (r"^SET\b|^RESET\b|^SELECT pg_catalog\.set_config\b", "a session setting"),
    (r"^SELECT pg_catalog\.setval\b", "a sequence position (the repair moves live's sequences)"),
    (r"^(CREATE|ALTER) (OR REPLACE )?(TRIGGER|RULE|CONSTRAINT TRIGGER)\b",
     "a trigger (the backup's rows are already written)"),
    (r"^ALTER TABLE\s.+\sADD CONSTRAINT\s.+\s(FOREIGN KEY|CHECK)\b",
     "a foreign key or check (the rows are loaded, only not re-checked)"),
    (r"^ALTER TABLE\s.+\s(ENABLE|DISABLE|FORCE|NO FORCE)\b|^ALTER TABLE\s.+\sREPLICA IDENTITY",
     "a table setting, not the rows"),
    (r"^ALTER TABLE\s.+\sATTACH PARTITION\b", "a partition attach (the partition's rows are "
     "counted on their own)"),
    (r"^ALTER TABLE\s.+\sALTER COLUMN\s.+\s(SET DEFAULT|ADD GENERATED)",
     "a column default (only new rows use it)"),
    (r"^ALTER TABLE\s.+\sALTER COLUMN\s.+\s(SET|RESET)\s*\(",
     "a column's options (planner statistics, or a newer pg_dump's attribute options such "
     "as pg_attver that an older scratch server does not know): not the rows"),
    (r"^ALTER TABLE\s.+\sALTER COLUMN\s.+\sSET (STATISTICS|STORAGE|COMPRESSION)\b",
     "how a column is stored or sampled, not its rows"),
    (r"^\\", "a psql meta-command"),
    (r"^CREATE (UNIQUE )?INDEX\b|^ALTER INDEX\b", "an index (the rows are loaded without it)"),
    (r"^(CREATE|ALTER) (OR REPLACE )?((MATERIALIZED )?VIEW|FUNCTION|PROCEDURE|AGGREGATE|TYPE|"
     r"DOMAIN|SEQUENCE|OPERATOR|COLLATION|TEXT SEARCH|CAST|SCHEMA|SERVER|FOREIGN DATA WRAPPER)\b",
     "an object that holds no rows (a chosen table needing it fails on its own statement)"),
)
_NO_ROWS_RE = [(re.compile(p, re.I | re.S), why) for p, why in _NO_ROWS]
# Statements about one table, named first: only that table is touched by their failure.
_ONE_TABLE = re.compile(r"^(COPY|INSERT INTO|CREATE (UNLOGGED )?TABLE|ALTER TABLE)\b", re.I)


def statement_tables(statement: str) -> list[str]:
    """The ``schema.table`` names a statement mentions (qualified names only, as pg_dump
    writes them)."""
    found = []
    for match in re.finditer(rf"(?<![\w\"$.])({IDENTIFIER}\.{IDENTIFIER})(?![\w\"$.(])", statement):
        key = key_or_none(match.group(1))
        if key and key not in found:
            found.append(key)
    return found


def judge(error: RestoreError, chosen: Chosen) -> None:
    """Decide, from the failing statement, whether an error can matter to the chosen
    tables: fatal only when a statement that creates, shapes or fills a chosen table
    failed; everything else is counted and shown with why it cannot matter."""
    if error.harmless or not error.statement:
        return
    statement = error.statement.strip()
    for pattern, why in _NO_ROWS_RE:
        if pattern.search(statement):
            error.harmless, error.why = True, why
            return
    tables = statement_tables(statement)
    if _ONE_TABLE.match(statement):
        tables = tables[:1]
    touched = [t for t in tables if chosen.covers(t)]
    if tables and not touched:
        error.harmless = True
        error.why = f"touches only tables you did not choose ({', '.join(tables[:3])})"
    elif touched:
        error.why = f"it creates, shapes or fills the chosen table {touched[0]}"


_DOLLAR = re.compile(r"\$[A-Za-z_]*\$")


def statements_at(path: Path, lines: set[int]) -> dict[int, str]:
    """The statement (up to 2,000 characters) that ends on each of ``lines`` of a
    prepared script: psql reports an error with the line its statement ended on."""
    found: dict[int, str] = {}
    if not lines:
        return found
    buffer: list[str] = []
    in_copy = False
    in_dollar = False
    copy_header = ""
    with open(path, encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if in_copy:
                if line.rstrip("\r\n") == "\\.":
                    in_copy = False
                if number in lines:  # a failed COPY's rows read as commands
                    found[number] = copy_header
                continue
            if not buffer and (not line.strip() or line.startswith("--")):
                if number in lines:
                    found[number] = line.strip()
                continue
            if sum(map(len, buffer)) < 2000:
                buffer.append(line)
            if len(_DOLLAR.findall(line)) % 2:
                in_dollar = not in_dollar
            ended = not in_dollar and line.rstrip().endswith(";") or line.startswith("\\")
            if COPY_FROM_STDIN.match(line):
                in_copy, ended, copy_header = True, True, line
            if number in lines:
                found[number] = "".join(buffer)[:2000]
            if ended:
                buffer = []
            if len(found) == len(lines):
                break
    return found


