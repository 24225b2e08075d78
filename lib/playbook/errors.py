"""One exception hierarchy for the playbook.

Every message is written for the on-call operator: what happened, what was left
unchanged, and what to do next. The CLI prints the message (never a traceback)
and exits with ``PlaybookError.exit_code``; a notebook cell lets it propagate so
papermill stops the run with the reason in the record.
"""

from __future__ import annotations


class PlaybookError(Exception):
    """Base class: something the operator must act on. Nothing was changed unless the
    message says so."""

    exit_code = 2

    def __init__(self, message: str, *, next_step: str | None = None) -> None:
        # One sentence on one line: driver messages sometimes carry newlines.
        self.message = " ".join(message.split())
        self.next_step = next_step
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.next_step:
            return f"{self.message} Next: {self.next_step}"
        return self.message


# --- configuration and connection -------------------------------------------------


class ConfigurationError(PlaybookError):
    """A parameter or setting is missing or malformed (checked before anything runs)."""


class ConnectionFailed(PlaybookError):
    """The database could not be reached or refused us; nothing was changed."""


class WrongDatabase(PlaybookError):
    """`confirm_database` does not name the database we are connected to."""


class UnsafeConnection(PlaybookError):
    """The connection cannot give the guarantees destructive work needs (e.g. a
    transaction-mode pooler, where advisory locks and session settings do not hold)."""


# --- local servers and tools -------------------------------------------------------


class PostgresNotFound(PlaybookError):
    """No usable PostgreSQL binaries (server or client tools) were found."""


class LocalServerError(PlaybookError):
    """The embedded local PostgreSQL could not be started, stopped or inspected."""


class ToolTooOld(PlaybookError):
    """pg_dump/pg_restore found are older than the server they would talk to."""


# --- the procedure's own stops ----------------------------------------------------


class GateClosed(PlaybookError):
    """A gating question was answered NO or left unanswered: nothing was changed."""

    def __init__(self, failing: dict[str, str], *, gate: str = "") -> None:
        self.failing = failing
        lines = "; ".join(f"{qid}: {why}" for qid, why in failing.items())
        title = f"Gate '{gate}' is closed" if gate else "Gate is closed"
        super().__init__(
            f"{title}: {lines}. Nothing was changed.",
            next_step=(
                "answer every question YES knowingly (in the widgets, or under `answers` in the "
                "parameters file), or stop here and escalate."
            ),
        )


class ObjectNotFound(PlaybookError):
    """A table, column, sequence or file named by a parameter does not exist."""


class PreconditionFailed(PlaybookError):
    """The database is not in the state this step needs; nothing was changed."""


class DependentObjectsExist(PlaybookError):
    """Objects outside the migration depend on objects it would drop."""


class ExportMismatch(PlaybookError):
    """An export is missing, incomplete or does not match its manifest or the live data."""


class ExportFailed(ExportMismatch):
    """Writing an export failed (disk full, export folder gone, no permission): the
    database was only read, and what was written is not an export any step accepts."""


class LockBusy(PlaybookError):
    """Another operator holds the playbook's lock, or a table lock could not be taken in
    time."""


class VerificationFailed(PlaybookError):
    """A verification check failed; the message says whether the change was rolled back."""


class BackupUnusable(PlaybookError):
    """A backup is missing, unreadable, truncated or taken at the wrong time."""


# --- incident records ---------------------------------------------------------------


class RecordRefused(PlaybookError):
    """An incident record would have contained a secret, so it was not written. The run
    itself happened: read the message for what it did."""

    exit_code = 1
