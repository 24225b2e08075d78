"""The main job (`make demo`): the whole playbook rehearsed headlessly, leaving records."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from helpers import run_cli


def test_demo_run_rehearses_every_notebook_and_leaves_a_complete_incident(empty_db,
                                                                          project_env, tmp_path):
    incidents = tmp_path / "incidents"
    env = dict(project_env, DATABASE_URL=empty_db.url, PLAYBOOK_INCIDENTS=str(incidents))
    result = run_cli("demo", "run", "--rows", "400", "--incident", "rehearsal-1", env=env,
                     timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout

    folder = next(incidents.glob("*-rehearsal-1"))
    outcomes = {json.loads(p.read_text())["notebook"]: json.loads(p.read_text())["outcome"]
                for p in folder.glob("*.json")}
    assert set(outcomes) == {"00_triage", "10_rollback_sequence", "20_rollback_coaching_tables",
                             "21_recover_coaching_tables", "30_full_restore",
                             "31_restore_tables"}
    assert set(outcomes.values()) == {"succeeded"}
    assert (folder / "timeline.md").exists() and (folder / "timeline.png").exists()
    _timeline_shows_one_bar_per_run_and_every_commit(folder)

    # Every export sits beside the records of the run that wrote it.
    manifests = sorted(p.relative_to(incidents) for p in incidents.rglob("manifest.json"))
    assert manifests and all(p.parts[:2] == (folder.name, "exports") for p in manifests)
    kinds = {p.parts[2].split("-")[0] for p in manifests}
    assert kinds == {"coaching_tables", "30_full_restore", "31_restore_tables"}, manifests

    # The database ends healthy: the sequence repaired, coaching data back, damage repaired.
    with psycopg.connect(empty_db.url) as conn:
        assert conn.execute("SELECT count(*) FROM public.sponsor_chat_messages").fetchone()[0] \
            == 400
        assert conn.execute(
            "SELECT count(*) FROM public.virtues WHERE description = 'CORRUPTED'"
        ).fetchone()[0] == 0
        conn.execute(
            "INSERT INTO public.sponsor_connections (practitioner_user_id, sponsor_user_id, "
            "status) VALUES (md5('user-2')::uuid, md5('user-5')::uuid, 'active')")
        conn.rollback()

    password = psycopg.conninfo.conninfo_to_dict(empty_db.url)["password"]
    leaked = [p for p in folder.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert leaked == []
    assert password not in result.stdout + result.stderr


def test_demo_run_refuses_a_database_that_is_not_empty(demo_db, project_env, tmp_path):
    before = demo_db.fingerprint()
    env = dict(project_env, PLAYBOOK_INCIDENTS=str(tmp_path / "incidents"))
    result = run_cli("demo", "run", env=env)
    assert result.returncode == 2
    assert "only runs on an empty database" in result.stderr
    assert demo_db.fingerprint() == before
    assert not Path(tmp_path / "incidents").exists()


def _timeline_shows_one_bar_per_run_and_every_commit(folder: Path) -> None:
    """The PNG draws one bar per run (read from the figure's own data, kept in the PNG)
    and fits one screen; the summary lists each COMMIT the demo's execute runs made."""
    from PIL import Image

    records = sorted((json.loads(p.read_text()) for p in folder.glob("[0-9]*-*.json")),
                     key=lambda r: r["number"])
    with Image.open(folder / "timeline.png") as picture:
        width, height = picture.size
        drawn = json.loads(picture.text["Description"])["playbook:bars"]
    assert sorted(bar["run"] for bar in drawn) == [f"{r['number']:02d}" for r in records]
    assert len({bar["y"] for bar in drawn}) == len(records)  # one row each
    assert width <= 1920 and height <= 1080

    summary = (folder / "timeline.md").read_text().split("## Runs")[0]
    changed = summary.split("### What changed in the database")[1].split("###")[0]
    rows = [line for line in changed.splitlines() if line.startswith("| 20")]
    executed = [r for r in records if r["mode"] == "execute"]
    assert {r["notebook"] for r in executed} == {"10_rollback_sequence",
                                                 "20_rollback_coaching_tables",
                                                 "21_recover_coaching_tables",
                                                 "31_restore_tables"}
    for record in executed:
        label = f"{record['number']:02d}-{record['notebook']}"
        assert any(f"| {label} |" in row for row in rows), (label, changed)
    (drop,) = [row for row in rows if "the drop" in row]
    for table, count in (("public.sponsor_chat_messages", 400),):
        assert table in drop and f"{table}: {count:,}" in drop
    (recovery,) = [row for row in rows if "the recovery" in row]
    assert "public.sponsor_chat_messages: 400" in recovery
    assert "### Exports and backups" in summary and "matches its manifest" in summary
    assert "### Open follow-ups" in summary
