"""The team is told: an execute-mode `playbook run` notifies a real local webhook receiver
(HTTP on 127.0.0.1, started by the test) and a real local SMTP server (aiosmtpd) when it
starts, when a gate stops it, when the change COMMITs and when it ends; a target that is
down never stops the rollback and the failure is recorded; the `team_notified` gate
question shows the notification as its evidence."""

from __future__ import annotations

import email
import json
import os
from pathlib import Path

import nbformat
import psycopg
import pytest

from helpers import ROOT, run_cli
from playbook import notify
from playbook.records import read_records
from receivers import free_port, smtp_receiver, webhook_receiver

STEM = "10_rollback_sequence"
SECRET = "hook-s3cret-token"


@pytest.fixture
def webhook():
    with webhook_receiver() as server:
        yield server


@pytest.fixture
def mailbox():
    with smtp_receiver() as box:
        yield box


def _environment(db, tmp_path: Path, notify_urls: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DATABASE_URL": db.url, "PLAYBOOK_INCIDENTS": str(tmp_path / "incidents"),
                "PLAYBOOK_HOME": str(tmp_path / ".playbook"), "PLAYBOOK_OPERATOR": "alice",
                notify.NOTIFY_ENV: notify_urls})
    return env


def _run_sequence(db, env: dict, answer: str) -> object:
    return run_cli("run", STEM, "--incident", "INC-17", "-f", str(ROOT / f"parameters/{STEM}.yaml"),
                   "-p", "mode", "execute", "-p", "confirm_database", db.name,
                   "-p", "answers", f"{{issue_confirmed: {answer}, team_notified: {answer}}}",
                   env=env)


def _password(db) -> str:
    return psycopg.conninfo.conninfo_to_dict(db.url)["password"]


def _files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _fields(body: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)


@pytest.mark.both_versions
def test_an_execute_run_tells_the_team_by_webhook_and_email_at_each_moment(
        demo_db, project_env, tmp_path, webhook, mailbox):
    hook = f"json://oncall:{SECRET}@127.0.0.1:{webhook.server_address[1]}/hooks/{SECRET}"
    mail = (f"mailto://127.0.0.1:{mailbox.port}?to=oncall@example.com"
            "&from=playbook@example.com")
    env = _environment(demo_db, tmp_path, f"{hook} {mail}")
    broke = run_cli("demo", "break", "sequence-behind", env=dict(project_env, **env))
    assert broke.returncode == 0, broke.stderr

    stopped = _run_sequence(demo_db, env, "no")  # a gate stops it: nothing changes
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    done = _run_sequence(demo_db, env, "yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "team notified (ended)" in done.stderr

    folder = next((tmp_path / "incidents").glob("*-INC-17"))
    first, second = read_records(folder)
    expected = [("started", first), ("stopped at a gate", first), ("ended", first),
                ("started", second), ("committed", second), ("ended", second)]
    webhook_messages = [(m["title"], m["message"]) for m in webhook.received]
    mails = [(email.message_from_bytes(m.content), m.rcpt_tos) for m in mailbox.messages]
    assert len(webhook_messages) == len(mails) == len(expected)
    for (title, body), (mail, recipients), (event, record) in zip(
            webhook_messages, mails, expected, strict=True):
        fields = _fields(body)
        assert title == f"[rollback playbook] INC-17: {STEM} {event}"
        assert fields["event"] == event and fields["notebook"] == STEM
        assert fields["incident"] == "INC-17" and fields["operator"] == "alice"
        assert demo_db.name in fields["database"]
        assert fields["record"] == record.files["notebook"]
        assert mail["Subject"] == title and recipients == ["oncall@example.com"]
        mail_text = mail.get_payload(decode=True).decode()
        assert _fields(mail_text) == fields
        assert _password(demo_db) not in body + mail_text
    outcomes = [_fields(b)["outcome"] for _t, b in webhook_messages]
    assert "issue_confirmed: answered NO" in outcomes[1]
    assert outcomes[2].startswith("01-10_rollback_sequence: stopped at a gate")
    assert outcomes[4].startswith("the sequence reset COMMITTED: public.sponsor_connections")
    assert outcomes[5] == "02-10_rollback_sequence: succeeded"

    # Each notification is in the record, its target described without its secrets.
    sent = [n for r in (first, second) for n in r.notifications]
    assert [n["about"] for n in sent] == [e for e, _r in expected]
    assert all(n["delivered"] for n in sent)
    assert {tuple(n["targets"]) for n in sent} == {
        (f"json://127.0.0.1:{webhook.server_address[1]}", f"mailto://127.0.0.1:{mailbox.port}")}
    assert _files_holding(folder, SECRET) == []
    assert _files_holding(folder, _password(demo_db)) == []

    # The gate's "Has the team been notified?" shows the notification as its evidence.
    executed = nbformat.read(second.files["notebook"], as_version=4)
    gate_table = next(o["data"]["text/plain"] for c in executed.cells
                      if c.source.strip() == "gate.check()" for o in c.outputs
                      if "text/plain" in o.get("data", {}))
    assert "the playbook notified the team at" in gate_table


def test_a_notification_target_that_is_down_never_stops_the_rollback(
        demo_db, project_env, tmp_path):
    down = free_port()  # nothing listens there
    env = _environment(demo_db, tmp_path, f"json://127.0.0.1:{down}/hook")
    broke = run_cli("demo", "break", "sequence-behind", env=dict(project_env, **env))
    assert broke.returncode == 0, broke.stderr
    done = _run_sequence(demo_db, env, "yes")
    assert done.returncode == 0, done.stdout + done.stderr  # the rollback completed
    assert "NOTIFICATION FAILED (ended)" in done.stderr
    with demo_db.connect() as conn:  # and it really repaired the sequence
        conn.execute("INSERT INTO public.sponsor_connections (practitioner_user_id, "
                     "sponsor_user_id, status) VALUES (md5('user-2')::uuid, "
                     "md5('user-5')::uuid, 'active')")
        conn.rollback()

    folder = next((tmp_path / "incidents").glob("*-INC-17"))
    (record,) = read_records(folder)
    assert [n["about"] for n in record.notifications] == ["started", "committed", "ended"]
    for note in record.notifications:
        assert note["delivered"] is False
        (reason,) = note["failures"].values()
        assert reason  # apprise's reason, e.g. a connection error
    executed = nbformat.read(record.files["notebook"], as_version=4)
    shown = json.dumps([c.get("outputs") for c in executed.cells])
    assert "NOTIFICATION FAILED (started)" in shown and "NOTIFICATION FAILED (committed)" in shown
    # The gate stayed open on the operator's YES; the failure is shown beside it.
    assert "the playbook's notification FAILED" in shown

    timeline = run_cli("timeline", "INC-17", env=env)
    assert timeline.returncode == 0, timeline.stderr
    markdown = (folder / "timeline.md").read_text()
    assert "NOTIFICATION FAILED (ended)" in markdown and "Tell the team yourself" in markdown


def test_a_notification_target_is_recorded_without_its_secrets():
    assert notify.describe_target("json://u:pw@hooks.example.com:8443/x/TOKEN") == \
        "json://hooks.example.com:8443"
    assert notify.describe_target("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7") == \
        "slack://…"
    assert notify.describe_target("mailtos://user:pw@smtp.example.com?to=a@b.c") == \
        "mailtos://smtp.example.com"


def test_a_careless_step_printing_the_notification_url_leaves_no_token_in_the_record(
        monkeypatch):
    from playbook.scrubbing import live_secrets, scrub

    token = "T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7"
    monkeypatch.setenv(notify.NOTIFY_ENV, f"slack://{token} json://u:pa55word@h.example/x")
    printed = f"PLAYBOOK_NOTIFY=slack://{token} json://u:pa55word@h.example/x"
    cleaned = str(scrub(printed, live_secrets([])))
    assert "TIiajkdnlazkcOXrIdevi7" not in cleaned and "pa55word" not in cleaned
