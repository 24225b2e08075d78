"""The start of every notebook: check the common parameters, find the target, say where
we are. Nothing here writes to the database.

Every notebook's first code cell after the parameters is::

    run = begin_run("20_rollback_coaching_tables", database_url_env=database_url_env,
                    mode=mode, confirm_database=confirm_database, answers=answers,
                    incident_id=incident_id, operator=operator)

which refuses, before any change, an unknown mode, a missing connection, a wrong
``confirm_database`` in execute mode, and a transaction pooler for execute mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
import psycopg

from . import journal, notify
from .db import connecting
from .evidence import Evidence
from .gates import (
    Gate,
    confirm_target,
    require_answer_mapping,
    require_mode,
    require_open_gates,
)


@dataclass
class Run:
    """What a notebook run knows about itself. The connection string stays private:
    it is read from the environment and never shown or stored."""

    notebook: str
    mode: str
    database_url_env: str
    database: str
    server_version: str
    target: str
    answers: Mapping[str, object]
    incident_id: str
    operator: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The gates asked in this run (:meth:`add_gate`). Steps that change the database ask
    # them again (require_open_gates): in JupyterLab, "Run All" can still start a cell
    # queued behind a failed gate.check() when the kernel receives it late, so a closed
    # gate must stop the change itself, not only the cell order.
    gates: list[Gate] = field(default_factory=list, repr=False)

    def evidence(self) -> Evidence:
        """The run's own record documents the results."""
        return Evidence(True, f"this executed notebook ({self.notebook}, started "
                              f"{self.started_at:%Y-%m-%d %H:%M:%S} UTC) is the record")

    def add_gate(self, gate: Gate) -> Gate:
        """Keep ``gate`` for this run, replacing one of the same name (its cell re-run)."""
        self.gates[:] = [g for g in self.gates if g.name != gate.name]
        self.gates.append(gate)
        return gate

    def require_open_gates(self) -> None:
        """Every gate of this run must be open now; called by each step that changes the
        database (see gates.require_open_gates)."""
        require_open_gates(self.gates)

    @property
    def executing(self) -> bool:
        return self.mode == "execute"

    def connect(self, *, read_only: bool | None = None, purpose: str | None = None,
                **kwargs: object) -> psycopg.Connection:
        """A session to the target; read-only unless executing (or told otherwise)."""
        return connecting.connect(
            self.database_url_env,
            purpose=purpose or self.notebook,
            read_only=(not self.executing) if read_only is None else read_only,
            **kwargs,  # type: ignore[arg-type]
        )

    def url(self) -> str:
        """The connection string, for tools that need it (pg_dump). Never display it."""
        return connecting.database_url(self.database_url_env)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                ("notebook", self.notebook),
                ("mode", self.mode),
                ("target", self.target),
                ("database", self.database),
                ("server", self.server_version),
                ("incident", self.incident_id or "(none given)"),
                ("operator", self.operator or "(none given)"),
                ("started (UTC)", self.started_at.strftime("%Y-%m-%d %H:%M:%S")),
            ],
            columns=["", "value"],
        ).set_index("")


def begin_run(
    notebook: str,
    *,
    database_url_env: str = connecting.DEFAULT_URL_ENV,
    mode: str = "review",
    confirm_database: str = "",
    answers: Mapping[str, object] | None = None,
    incident_id: str = "",
    operator: str = "",
) -> Run:
    """Validate the common parameters and connect once, read-only, to identify the target."""
    require_mode(mode)
    answers = require_answer_mapping(answers)
    url = connecting.database_url(database_url_env)
    if mode == "execute":
        connecting.require_session_connection(url)
    with connecting.session(database_url_env, purpose=notebook, read_only=True) as conn:
        database = connecting.current_database(conn)
        version = conn.execute("SHOW server_version").fetchone()[0]
    confirm_target(database, mode, confirm_database)
    run = Run(
        notebook=notebook,
        mode=mode,
        database_url_env=database_url_env,
        database=database,
        server_version=version,
        target=connecting.summary(url),
        answers=dict(answers),
        incident_id=incident_id,
        operator=operator,
    )
    journal.begin(run)
    notify.notify_run(run, notify.STARTED, "the run started in execute mode")
    return run
