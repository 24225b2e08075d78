"""The Supabase dashboard restore (Project -> Database -> Backups -> Restore) as a guided
checklist: one checkbox per step of the procedure document, the time each was ticked
recorded, so the incident record shows who did what when on the platform's side."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from .errors import PreconditionFailed

DASHBOARD_RESTORE_STEPS = (
    ("open_backups", "Log into the Supabase Dashboard: Project -> Database -> Backups"),
    ("backup_before_migration", "Find the backup from BEFORE the migration; note its timestamp"),
    ("click_restore", "Click \"Restore\" on that backup"),
    ("confirm_restore", "Confirm the restoration"),
    ("restore_completed", "Wait until the dashboard says the restore completed"),
)


@dataclass
class Checklist:
    """Steps done on another system, ticked by the operator; each tick's time is kept."""

    title: str
    steps: tuple[tuple[str, str], ...] = DASHBOARD_RESTORE_STEPS
    done_at: dict[str, datetime] = field(default_factory=dict)

    def tick(self, step_id: str, when: datetime | None = None) -> None:
        if step_id not in dict(self.steps):
            raise KeyError(step_id)
        self.done_at[step_id] = when or datetime.now(UTC)

    def untick(self, step_id: str) -> None:
        self.done_at.pop(step_id, None)

    def show(self) -> None:
        """Checkboxes in JupyterLab; ticking one records the time."""
        import ipywidgets as widgets
        from IPython.display import display

        rows = [widgets.HTML(f"<b>{self.title}</b>: tick each step as you do it.")]
        for step_id, text in self.steps:
            box = widgets.Checkbox(value=step_id in self.done_at, description=text,
                                   indent=False, layout=widgets.Layout(width="auto"))
            box.add_class(f"checklist-{step_id}")

            def changed(change, step_id=step_id):
                (self.tick if change["new"] else self.untick)(step_id)

            box.observe(changed, names="value")
            rows.append(box)
        display(widgets.VBox(rows))

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"step": text, "done": "yes" if sid in self.done_at else "no",
              "at (UTC)": self.done_at[sid].strftime("%Y-%m-%d %H:%M:%S")
              if sid in self.done_at else ""} for sid, text in self.steps],
            columns=["step", "done", "at (UTC)"])

    def require_done(self) -> pd.DataFrame:
        missing = [text for sid, text in self.steps if sid not in self.done_at]
        if missing:
            raise PreconditionFailed(
                f"{self.title}: not done yet: {'; '.join(missing)}. Nothing was verified.",
                next_step="finish the dashboard steps and tick them, then run this cell again.")
        return self.table()


def dashboard_restore_checklist() -> Checklist:
    return Checklist("Supabase dashboard restore")


RESTART_STEPS = (
    ("env_points_right", "Ensure .env.production's DATABASE_URL points at the restored database"),
    ("application_restarted", "Restart the application (deployment-specific commands)"),
    ("login_works", "Test: login"),
    ("virtues_visible", "Test: view virtues"),
    ("journal_entry_created", "Test: create a journal entry"),
    ("no_errors_in_logs", "Check the application's logs for errors"),
)


def restart_checklist() -> Checklist:
    """The document's "Step 5: Restart Application", ticked as it is done."""
    return Checklist("Restart application", steps=RESTART_STEPS)
