"""Telling the team: notifications through apprise, configured once in ``$PLAYBOOK_NOTIFY``.

``PLAYBOOK_NOTIFY`` holds one or more apprise URLs (Slack, Microsoft Teams, e-mail,
Discord, a generic webhook: ``slack://...``, ``msteams://...``, ``mailto://...``,
``json://host/path``), separated by spaces or commas. They are read from the environment
only: never a notebook parameter, never written into a record. A target is recorded as
its scheme, host and port (``json://hooks.example.com:443``), nothing else of its URL.

An execute-mode run notifies when it starts, when a gate stops it, when a change COMMITs,
and when it ends or dies: which notebook, which database (never its password), the
operator, the outcome and where the record is. A notification that fails is shown and
recorded with the reason, and never stops the rollback: :func:`send` does not raise.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from . import journal
from .db import connecting

NOTIFY_ENV = "PLAYBOOK_NOTIFY"
STARTED, GATE_STOPPED, COMMITTED, ENDED, DIED = (
    "started", "stopped at a gate", "committed", "ended", "died")


@dataclass
class Notice:
    """What the team is told about one moment of one run."""

    event: str
    incident: str
    notebook: str
    database: str
    operator: str
    outcome: str
    record: str

    @property
    def title(self) -> str:
        incident = self.incident or "(no incident)"
        return f"[rollback playbook] {incident}: {self.notebook} {self.event}"

    @property
    def body(self) -> str:
        return "\n".join([
            f"event: {self.event}",
            f"incident: {self.incident or '(none given)'}",
            f"notebook: {self.notebook}",
            f"database: {self.database}",
            f"operator: {self.operator or '(none given)'}",
            f"outcome: {self.outcome}",
            f"record: {self.record}",
        ])


def configured_urls() -> list[str]:
    """The apprise URLs of ``$PLAYBOOK_NOTIFY`` (empty when unset)."""
    value = os.environ.get(NOTIFY_ENV, "").strip()
    return [u for u in re.split(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.-]*://)|\s+", value) if u]


def describe_target(url: str) -> str:
    """A target as it may be recorded: scheme, host and port, no user, password, token
    or path (a Slack or Teams URL carries its secret there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable URL)"
    if parts.scheme in ("json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos"):
        return f"{parts.scheme}://{host}{port}"
    return f"{parts.scheme}://…"


def url_secrets() -> list[str]:
    """What of ``$PLAYBOOK_NOTIFY`` must never be written anywhere: each URL whole, its
    password, and its long path segments and query values (Slack, Teams and Discord
    carry their tokens there)."""
    found = []
    for url in configured_urls():
        found.append(url)
        parts = urlsplit(url)
        found += [parts.password or ""]
        found += [p for p in re.split(r"[/&=]", f"{parts.path}&{parts.query}") if len(p) >= 16]
    return [s for s in found if len(s) >= 4]


def _scrub(text: str, urls: Iterable[str]) -> str:
    """``text`` with every configured URL (and its parts that could be secret) replaced by
    its description, then any connection-string password redacted."""
    for url in sorted(urls, key=len, reverse=True):
        text = text.replace(url, describe_target(url))
        parts = urlsplit(url)
        for secret in (parts.password, parts.username, parts.path.strip("/"), parts.query):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
    return connecting.redact(text)


def send(notice: Notice, secrets: Iterable[str] = ()) -> dict | None:
    """Send ``notice`` to every configured target, one at a time. None when nothing is
    configured; else what happened, fit to record: ``delivered`` (all targets),
    ``targets`` (described), ``failures`` (target: reason). Never raises."""
    urls = configured_urls()
    if not urls:
        return None
    secrets = [s for s in secrets if s]
    title, body = notice.title, notice.body
    for secret in secrets:
        title, body = title.replace(secret, "***"), body.replace(secret, "***")
    result = {"about": notice.event, "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
              "title": title, "targets": [describe_target(u) for u in urls], "failures": {}}
    for url in urls:
        reason = _send_one(url, title, body)
        if reason:
            result["failures"][describe_target(url)] = _scrub(reason, urls)
    result["delivered"] = not result["failures"]
    return result


def _send_one(url: str, title: str, body: str) -> str:
    """'' when apprise delivered to ``url``, else why not."""
    try:
        import apprise

        service = apprise.Apprise()
        if not service.add(url):
            return "apprise does not understand this URL"
        with apprise.LogCapture(level=logging.WARNING) as logs:
            delivered = service.notify(body=body, title=title,
                                       body_format=apprise.NotifyFormat.TEXT)
        if delivered:
            return ""
        lines = [line.strip() for line in logs.getvalue().splitlines() if line.strip()]
        return lines[-1] if lines else "apprise reported a failure without a reason"
    except Exception as exc:  # a notification must never stop the rollback
        return f"{type(exc).__name__}: {exc}"


def summary(result: dict | None) -> str:
    """One line for the notebook, the terminal and the timeline."""
    if result is None:
        return f"no notification sent ({NOTIFY_ENV} is not set)"
    targets = ", ".join(result["targets"])
    if result["delivered"]:
        return f"team notified ({result['about']}) via {targets} at {result['at']}"
    reasons = "; ".join(f"{t}: {r}" for t, r in result["failures"].items())
    return f"NOTIFICATION FAILED ({result['about']}): {reasons}. The run goes on."


def notify_run(run, event: str, outcome: str) -> dict | None:
    """From inside a notebook: notify about ``run`` (execute mode only), show the result
    and journal it (so the record and the ``team_notified`` gate see it)."""
    if not getattr(run, "executing", False):
        return None
    record = journal.record_path()
    notice = Notice(event, run.incident_id, run.notebook, run.target, run.operator, outcome,
                    str(record) if record else "(this notebook, when saved)")
    result = send(notice, _live_secrets(run))
    if result is not None:
        journal.moment(journal.NOTIFICATION, summary(result), show=True, **result)
    return result


def _live_secrets(run) -> list[str]:
    from .scrubbing import live_secrets  # here: scrubbing asks notify for its URL secrets

    return live_secrets([getattr(run, "database_url_env", connecting.DEFAULT_URL_ENV)])


# --- the team_notified gate question ----------------------------------------------------

TEAM_NOTIFIED = "team_notified"


def notifications_for_incident(incident_id: str) -> list[dict]:
    """Every notification recorded for the incident: this process's, and those in the
    journals of its folder (other runs of the same incident)."""
    from .incidents import find_incident

    # This process's own (a JupyterLab kernel has no journal), of this incident only.
    entries = [e for e in journal.kept() if e.get("incident", "") == incident_id]
    here = journal.journal_path()
    folders = {here.parent} if here else set()
    if incident_id:
        try:
            found = find_incident(incident_id)
        except Exception:  # a bad id was refused elsewhere; evidence is best effort
            found = None
        if found is not None:
            folders.add(found)
    for folder in folders:
        for path in sorted(folder.glob(f"*{journal.SUFFIX}")):
            entries += journal.read(path)
    return [e for e in journal.merged(entries) if e.get("event") == journal.NOTIFICATION]


def team_notified_evidence(incident_id: str) -> tuple[bool, str]:
    """(delivered?, evidence) for the gate question "Has the team been notified?"."""
    sent = notifications_for_incident(incident_id)
    delivered = [e for e in sent if e.get("delivered")]
    if delivered:
        last = delivered[-1]
        return True, (f"the playbook notified the team at {last.get('at')} "
                      f"({last.get('notebook', '')} {last.get('about', '')}) "
                      f"via {', '.join(last.get('targets', []))}")
    if sent:
        return False, f"the playbook's notification FAILED: {sent[-1].get('text', '')}"
    if not configured_urls():
        return False, (f"no notification from the playbook ({NOTIFY_ENV} is not set): "
                       "your answer is the only evidence")
    return False, "no notification sent for this incident yet"
