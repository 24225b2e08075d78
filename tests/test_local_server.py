"""The embedded throwaway PostgreSQL: an on-call engineer's first command."""

from __future__ import annotations

import psycopg
import pytest

from helpers import run_cli


@pytest.mark.parametrize("major", [16, 15])
def test_db_start_status_stop_on_both_supported_versions(tmp_path, project_env, major):
    started = run_cli("db", "start", "--cluster", "lifecycle", "--pg-major", str(major),
                      env=project_env)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1]
    assert url.startswith("postgresql://postgres:")
    try:
        with psycopg.connect(url) as conn:
            assert conn.info.server_version // 10000 == major
            assert conn.execute("SELECT current_database()").fetchone()[0] == "playbook_demo"

        status = run_cli("db", "status", "--cluster", "lifecycle", env=project_env)
        assert "running" in status.stdout
        password = psycopg.conninfo.conninfo_to_dict(url)["password"]
        assert password not in status.stdout, "status must never print the password"

        again = run_cli("db", "start", "--cluster", "lifecycle", env=project_env)
        assert again.stdout.strip() == url, "a second start reuses the running cluster"

        stopped = run_cli("db", "stop", "--cluster", "lifecycle", env=project_env)
        assert stopped.stdout.strip() == "stopped"
        assert "stopped" in run_cli("db", "status", "--cluster", "lifecycle",
                                    env=project_env).stdout
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=3)
    finally:
        run_cli("db", "destroy", "--cluster", "lifecycle", env=project_env)


def test_missing_postgresql_is_one_sentence_and_exit_2(project_env, tmp_path):
    env = dict(project_env, PG_BINDIR=str(tmp_path / "nowhere"))
    # Hide every real server: an empty PATH for pg_config and a bindir that does not exist.
    result = run_cli("db", "start", "--cluster", "none", "--pg-major", "9", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "No PostgreSQL 9 server binaries found" in result.stderr
