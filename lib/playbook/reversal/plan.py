"""The reverse plan of one migration, and its proof before COMMIT.

From a project's migrations folder the playbook rebuilds two shadow databases on a scratch
server: the state right **before** the target migration and the state right **after** it.
Then:

- the **reverse plan** is what turns *after* into *before* (:func:`schema_diff.schema_plan`):
  the migration's own changes undone, with the old definitions of whatever it replaced or
  dropped, and nothing else;
- the **drift** is what turns live into *after*: whatever live holds that the migrations do
  not explain (changes made by hand, platform differences). It is shown, never touched;
- **newer migrations** of the folder whose objects exist on live are a chain: rolling back
  an older migration under them is refused, naming their objects (roll back the newest
  first);
- the **proof**, inside the transaction that ran the plan, is that live now differs from
  *before* by exactly the drift it had from *after*: the migration is gone, nothing else
  moved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import psycopg
from psycopg import sql

from ..changesets.objects import object_oid, parse_created_objects
from ..db import localdb
from ..db.scratch_servers import remove_placeholder_roles
from ..errors import DependentObjectsExist, PreconditionFailed, VerificationFailed
from .schema_diff import schema_plan
from .shadow import MigrationFile, MigrationsFolder, build_shadow, first_failure

SUPABASE_HISTORY = "supabase_migrations.schema_migrations"


def history_removal(version: str) -> sql.Composed:
    """The statement that takes the migration out of Supabase's history."""
    return sql.SQL("DELETE FROM supabase_migrations.schema_migrations WHERE version = {}"
                   ).format(sql.Literal(version))


def repair_command(version: str, status: str) -> str:
    """The Supabase CLI command that records the same change in its own history."""
    return f"supabase migration repair --status {status} {version}"


@dataclass
class ShadowStates:
    """The two shadow databases of one migration, open for reading."""

    before: psycopg.Connection
    after: psycopg.Connection
    source: str


@contextmanager
def shadow_states(scratch_admin_url: str, folder: MigrationsFolder,
                  target: MigrationFile) -> Iterator[ShadowStates]:
    """Build the states before and after ``target`` as two new databases on the scratch
    server (``scratch_admin_url`` reaches its maintenance database); dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    names = {"before": f"playbook_shadow_before_{tag}", "after": f"playbook_shadow_after_{tag}"}
    opened: list[psycopg.Connection] = []
    roles: list[str] = []
    try:
        conns = {}
        for state, migrations in (("before", folder.before(target.version)),
                                  ("after", folder.up_to(target.version))):
            url = localdb.create_database(scratch_admin_url, names[state])
            conn = psycopg.connect(url)
            opened.append(conn)
            roles += build_shadow(conn, migrations)
            conns[state] = conn
        yield ShadowStates(conns["before"], conns["after"],
                           source=f"migrations folder {folder.path} (shadow databases built "
                           f"from {len(folder.before(target.version))} earlier migrations)")
    finally:
        for conn in opened:
            conn.close()
        for name in names.values():
            localdb.drop_database(scratch_admin_url, name)
        remove_placeholder_roles(scratch_admin_url, roles)


@dataclass
class ReversePlan:
    """What reverses ``migration`` on live, and what review found around it."""

    migration: MigrationFile
    source: str
    statements: list[str]
    drift: list[str] = field(default_factory=list)
    newer_applied: dict[str, list[str]] = field(default_factory=dict)
    history_versions: list[str] = field(default_factory=list)

    def sql(self) -> str:
        return "\n\n".join(self.statements)

    def frame(self) -> pd.DataFrame:
        """Every statement the rollback runs, in order: the reverse plan, then the
        removal of the migration's row from Supabase's history (when it has one)."""
        rows = [(n, s) for n, s in enumerate(self.statements, start=1)]
        if self.history_versions:
            version = self.migration.version
            rows.append((len(rows) + 1, history_removal(version).as_string(None)
                         + f";  -- the same as `{repair_command(version, 'reverted')}`"))
        return pd.DataFrame(rows, columns=["#", "statement"]).set_index("#")

    def table(self):
        """The statements for the notebook, each in full (a pandas Styler: a plain
        DataFrame would cut long statements short)."""
        return self.frame().style.set_properties(**{"text-align": "left",
                                                    "white-space": "pre-wrap"})

    def summary(self) -> pd.DataFrame:
        rows = [
            ("migration", self.migration.label),
            ("state before it, from", self.source),
            ("reverse plan", f"{len(self.statements)} statements"),
            ("drift (live vs. right after it; shown, never touched)",
             f"{len(self.drift)} statements" if self.drift else "none"),
            ("newer migrations applied on live",
             ", ".join(self.newer_applied) or "none"),
        ]
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")

    def require_newest(self) -> None:
        """Refuse to reverse a migration that newer applied migrations build on."""
        if self.newer_applied:
            named = "; ".join(f"{label}: {', '.join(objs)}"
                              for label, objs in self.newer_applied.items())
            raise DependentObjectsExist(
                f"Newer migrations are applied on top of {self.migration.label}: {named}. "
                "Reversing it under them is refused. Nothing was changed.",
                next_step="roll back the newest migration first, then this one.",
            )


def newer_applied(live: psycopg.Connection, after: psycopg.Connection,
                  folder: MigrationsFolder, target: MigrationFile) -> dict[str, list[str]]:
    """Newer migrations of the folder whose new objects (absent from the state right after
    ``target``) exist on live, with those objects."""
    found: dict[str, list[str]] = {}
    history = set(applied_versions(live))
    for item in folder.after(target.version):
        present = [obj.display for obj in parse_created_objects(item.sql())
                   if object_oid(live, obj) is not None and object_oid(after, obj) is None]
        if present:
            found[item.label] = present
        elif item.version in history:
            found[item.label] = [f"version {item.version} in {SUPABASE_HISTORY}"]
    return found


def applied_versions(conn: psycopg.Connection) -> list[str]:
    """Versions recorded in Supabase's migration history, when the database has one."""
    if conn.execute("SELECT to_regclass(%s)", (SUPABASE_HISTORY,)).fetchone()[0] is None:
        return []
    return [r[0] for r in conn.execute(
        "SELECT version FROM supabase_migrations.schema_migrations ORDER BY version")]


def plan_reversal(live: psycopg.Connection, states: ShadowStates,
                  folder: MigrationsFolder | None, target: MigrationFile) -> ReversePlan:
    """Review: the reverse plan, the drift and the chain, read without writing."""
    reverse = schema_plan(states.after, states.before)
    if not reverse.statements:
        raise PreconditionFailed(
            f"{target.label} changes nothing the playbook compares (schema, grants, "
            "publications): there is no schema change to reverse. Nothing was changed.",
            next_step="if it only changed rows, restore them with 31_restore_tables.",
        )
    return ReversePlan(
        migration=target,
        source=states.source,
        statements=reverse.statements,
        drift=schema_plan(live, states.after).statements,
        newer_applied=newer_applied(live, states.after, folder, target) if folder else {},
        history_versions=[v for v in applied_versions(live) if v == target.version],
    )


def perform_reversal(live: psycopg.Connection, plan: ReversePlan,
                     states: ShadowStates) -> list[str]:
    """Run the plan in the caller's open transaction and prove, before the caller
    commits, that live now differs from the state before the migration by exactly the drift
    it had from the state after it. Returns the statements run. Raises (the caller rolls
    back) when the proof fails."""
    plan.require_newest()
    failure = first_failure(live, plan.statements)
    if failure:
        number, statement, first = failure
        raise VerificationFailed(
            f"Statement {number} of the reverse plan failed: {first} ({statement[:160]!r}). "
            "The transaction is rolled back: nothing was changed.",
            next_step="read the drift shown in review: an object outside the migration may "
            "depend on what it made; resolve it, then review again.")
    residual = schema_plan(live, states.before).statements
    if residual != plan.drift:
        extra = [s for s in residual if s not in plan.drift]
        missing = [s for s in plan.drift if s not in residual]
        raise VerificationFailed(
            "After the reverse plan, live does not differ from the state before the "
            f"migration by just its drift: {len(extra)} difference(s) remain "
            f"({'; '.join(extra[:3])[:300]}), {len(missing)} drift item(s) changed. The "
            "transaction is rolled back: nothing was changed.",
            next_step="keep this record and reverse the remaining differences by hand, or "
            "restore the affected tables from a backup.",
        )
    return list(plan.statements)
