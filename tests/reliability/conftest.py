"""Fixtures shared by the reliability suite: the coaching change set, a verified export
of the demo's coaching data (taken once per server version: every demo copy holds the
same rows), and where incident records go."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbook import drops
from playbook.exports import require_sound_export
from playbook.migrations import Migration, load_migration
from playbook.runs import begin_run

_EXPORTS: dict[int, Path] = {}


@pytest.fixture
def coaching() -> Migration:
    return load_migration("coaching_tables")


@pytest.fixture
def incidents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "incidents"
    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(folder))
    return folder


@pytest.fixture
def coaching_export(demo_db, coaching, tmp_path_factory) -> Path:
    """A sound export (CSV + manifest + pg_dump archive) of the demo's coaching tables,
    matching every fresh demo database of this server version. Treat it as read-only."""
    if demo_db.major not in _EXPORTS:
        folder = tmp_path_factory.mktemp(f"coaching-export-pg{demo_db.major}")
        drops.export_migration_data(begin_run("20_rollback_coaching_tables"), coaching,
                                    folder, show_progress=False)
        _EXPORTS[demo_db.major] = folder
    require_sound_export(_EXPORTS[demo_db.major])
    return _EXPORTS[demo_db.major]


def coaching_tables_present(db) -> set[str]:
    with db.connect() as conn:
        return {r[0] for r in conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables "
            "WHERE tablename LIKE 'sponsor_%'")}
