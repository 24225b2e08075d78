"""Shared fixtures: real local PostgreSQL servers the suite starts itself.

- ``pg_cluster``: a throwaway cluster for the session (PostgreSQL 16 from the pgserver
  wheel). Tests marked ``both_versions`` run twice, on 16 and on Debian's 15 (the
  version Supabase runs). A missing server is an error, never a skip.
- ``demo_db``: a fresh copy (``CREATE DATABASE ... TEMPLATE``) of the demo application
  with its coaching migration and sample data, with ``DATABASE_URL`` pointing at it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from corpus_projects import new_database
from playbook import demo_app
from playbook.db import localdb
from playbook.db.fingerprint import database_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED_MAJORS = (16, 15)
TEMPLATE = "demo_template"
DEMO_ROWS = 200


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_cluster" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_versions"
    ):
        metafunc.parametrize(
            "pg_cluster", SUPPORTED_MAJORS, indirect=True, ids=[f"pg{m}" for m in SUPPORTED_MAJORS]
        )


@pytest.fixture(autouse=True)
def _no_inherited_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own DATABASE_URL/PG* must never point a test at a real server."""
    for name in ("DATABASE_URL", *localdb.connecting.LIBPQ_TARGET_VARIABLES, "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)


class _Clusters:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.started: dict[int, localdb.LocalCluster] = {}
        self.templates: set[int] = set()

    def get(self, major: int) -> localdb.LocalCluster:
        if major not in self.started:
            cluster = localdb.LocalCluster(f"test-pg{major}", home=self.home, major=major)
            cluster.start()
            self.started[major] = cluster
        return self.started[major]

    def stop_all(self) -> None:
        for cluster in self.started.values():
            cluster.destroy()


@pytest.fixture(scope="session")
def _clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Clusters]:
    clusters = _Clusters(tmp_path_factory.mktemp("clusters"))
    yield clusters
    clusters.stop_all()


@dataclass
class Cluster:
    major: int
    cluster: localdb.LocalCluster
    holder: _Clusters

    @property
    def admin_url(self) -> str:
        return self.cluster.state().url("postgres")

    def url(self, database: str) -> str:
        return self.cluster.state().url(database)

    def ensure_demo_template(self) -> None:
        if self.major in self.holder.templates:
            return
        url = localdb.create_database(self.admin_url, TEMPLATE, replace=True)
        with psycopg.connect(url) as conn:
            demo_app.create_application(conn)
            demo_app.apply_coaching_migration(conn)
            demo_app.load_sample_data(conn, rows=DEMO_ROWS)
        self.holder.templates.add(self.major)


@pytest.fixture
def pg_cluster(request: pytest.FixtureRequest, _clusters: _Clusters) -> Cluster:
    major = getattr(request, "param", SUPPORTED_MAJORS[0])
    return Cluster(major, _clusters.get(major), _clusters)


@dataclass
class Database:
    """One test's own database and how to reach it."""

    name: str
    url: str = field(repr=False)  # carries the cluster's password: never in test output
    major: int

    def connect(self, **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(self.url, **kwargs)

    def fingerprint(self) -> dict[str, object]:
        with self.connect() as conn:
            return database_fingerprint(conn)

    def scalar(self, query: str, params: tuple = ()) -> object:
        with self.connect() as conn:
            return conn.execute(query, params).fetchone()[0]


def _fresh_database(cluster: Cluster, template: str | None) -> Database:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = localdb.create_database(cluster.admin_url, name, template=template)
    return Database(name, url, cluster.major)


@pytest.fixture
def demo_db(pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """A fresh demo application database; DATABASE_URL points at it."""
    pg_cluster.ensure_demo_template()
    database = _fresh_database(pg_cluster, TEMPLATE)
    monkeypatch.setenv("DATABASE_URL", database.url)
    yield database
    localdb.drop_database(pg_cluster.admin_url, database.name)


@pytest.fixture
def backup_copy(demo_db, pg_cluster):
    """A copy of the demo taken before the damage, standing in for a restored backup."""
    name = demo_db.name + "_bk"
    url = localdb.create_database(pg_cluster.admin_url, name, template=demo_db.name)
    yield url
    localdb.drop_database(pg_cluster.admin_url, name)


@pytest.fixture
def empty_db(pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """A fresh empty database; DATABASE_URL points at it."""
    database = _fresh_database(pg_cluster, None)
    monkeypatch.setenv("DATABASE_URL", database.url)
    yield database
    localdb.drop_database(pg_cluster.admin_url, database.name)


def _destroy_embedded_clusters(home: Path) -> None:
    """Stop and delete every embedded cluster started anywhere under ``home`` (e.g. the
    scratch server notebook 31 starts on demand), so no server outlives the suite."""
    for state in sorted(home.rglob("clusters/*/state.json")):
        localdb.LocalCluster(state.parent.name, home=state.parent.parent.parent).destroy()


@pytest.fixture(scope="session", autouse=True)
def _embedded_home_for_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Embedded clusters started in-process (kernels inherit this) live in a scratch
    folder, never in the checkout's own .playbook/, and are destroyed at the end."""
    home = tmp_path_factory.mktemp("playbook-home")
    previous = os.environ.get("PLAYBOOK_HOME")
    os.environ["PLAYBOOK_HOME"] = str(home)
    yield home
    # Every test's scratch folder too: a notebook run may have started one on demand.
    _destroy_embedded_clusters(tmp_path_factory.getbasetemp())
    if previous is None:
        os.environ.pop("PLAYBOOK_HOME", None)
    else:
        os.environ["PLAYBOOK_HOME"] = previous


@pytest.fixture
def project_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for running the CLI or papermill as a subprocess in a scratch folder;
    any embedded cluster started there is destroyed after the test."""
    env = {k: v for k, v in os.environ.items()}
    home = tmp_path / ".playbook"
    env["PLAYBOOK_HOME"] = str(home)
    yield env
    _destroy_embedded_clusters(home)


@pytest.fixture
def databases(pg_cluster):
    """``databases(migrations)``: a new database on the test's server with a corpus
    project's ``migrations`` applied (tests/corpus_projects.py); all dropped afterwards."""
    made: list[tuple[str, psycopg.Connection]] = []

    def make(migrations) -> psycopg.Connection:
        made.append(new_database(pg_cluster, migrations))
        return made[-1][1]

    yield make
    for name, conn in made:
        conn.close()
        localdb.drop_database(pg_cluster.admin_url, name)
