"""The embedded throwaway PostgreSQL: an on-call engineer's first command."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
from pathlib import Path

import psycopg
import pytest

from helpers import run_cli
from playbook.db import localdb, pgbinaries
from playbook.errors import LocalServerError


@pytest.mark.parametrize("major", [16, 15])
def test_db_start_status_stop_on_both_supported_versions(tmp_path, project_env, major):
    started = run_cli("db", "start", "--cluster", "lifecycle", "--pg-major", str(major),
                      env=project_env)
    assert started.returncode == 0, started.stderr
    url = run_cli("db", "url", "--cluster", "lifecycle", env=project_env).stdout.strip()
    assert url.startswith("postgresql://postgres:")
    password = psycopg.conninfo.conninfo_to_dict(url)["password"]
    assert password not in started.stdout + started.stderr, "start must never print it"
    assert "postgresql://postgres:***@127.0.0.1:" in started.stdout
    assert 'export DATABASE_URL="$(playbook db url --cluster lifecycle)"' in started.stdout
    try:
        with psycopg.connect(url) as conn:
            assert conn.info.server_version // 10000 == major
            assert conn.execute("SELECT current_database()").fetchone()[0] == "playbook_demo"

        status = run_cli("db", "status", "--cluster", "lifecycle", env=project_env)
        assert "running" in status.stdout
        assert password not in status.stdout, "status must never print the password"

        again = run_cli("db", "start", "--cluster", "lifecycle", env=project_env)
        assert again.stdout == started.stdout, "a second start reuses the running cluster"

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


def _port_of(url: str) -> int:
    return int(psycopg.conninfo.conninfo_to_dict(url)["port"])


@pytest.mark.parametrize("major", [16, 15])
def test_a_restarted_cluster_keeps_its_port_and_says_loudly_when_it_cannot(project_env,
                                                                          major):
    """An operator exported DATABASE_URL, then the cluster was restarted: the URL must
    still be right; if another program took the port meanwhile, start says the exported
    URL is stale, naming both ports."""
    cli = ("--cluster", "restarts")
    try:
        assert run_cli("db", "start", *cli, "--pg-major", str(major),
                       env=project_env).returncode == 0
        exported = run_cli("db", "url", *cli, env=project_env).stdout.strip()
        port = _port_of(exported)
        assert port < 32768, "outside the ephemeral range outgoing connections draw from"
        for _ in range(2):
            run_cli("db", "stop", *cli, env=project_env)
            restarted = run_cli("db", "start", *cli, env=project_env)
            assert restarted.returncode == 0, restarted.stderr
            assert "STALE" not in restarted.stderr
            assert run_cli("db", "url", *cli, env=project_env).stdout.strip() == exported
            with psycopg.connect(exported) as conn:
                assert conn.info.server_version // 10000 == major

        run_cli("db", "stop", *cli, env=project_env)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            moved = run_cli("db", "start", *cli, env=project_env)
        assert moved.returncode == 0, moved.stderr
        new_url = run_cli("db", "url", *cli, env=project_env).stdout.strip()
        assert _port_of(new_url) != port
        warning = moved.stderr
        assert "WARNING" in warning and "STALE" in warning, warning
        assert str(port) in warning and str(_port_of(new_url)) in warning
        with psycopg.connect(new_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        run_cli("db", "destroy", *cli, env=project_env)


@pytest.mark.parametrize("major", [16, 15])
def test_db_start_works_when_the_project_sits_in_a_private_0700_folder(tmp_path, project_env,
                                                                      major):
    """`git clone` into /root (mode 0700) and `make demo` as root: the server runs as an
    unprivileged user who cannot enter the clone, neither its `.venv` (where the pgserver
    wheel's programs are) nor its `.playbook/` (where the data would go)."""
    private = tmp_path / "private-home"
    private.mkdir()
    private.chmod(0o700)
    clone = private / "playbook"
    clone.mkdir()
    env = dict(project_env, PLAYBOOK_HOME=str(clone / ".playbook"))
    if major == 16:
        # The wheel's install as `make install` leaves it in a clone there: inside the
        # private folder, readable only through it.
        wheel = pgbinaries.server_bindir(16)
        installed = pgbinaries.installed_copy(wheel, clone)
        assert str(installed.path).startswith(str(private))
        env["PG_BINDIR"] = str(installed.path)
    cli = ("--cluster", "private")
    try:
        started = run_cli("db", "start", *cli, "--pg-major", str(major), env=env)
        assert started.returncode == 0, started.stderr
        assert "Traceback" not in started.stderr
        url = run_cli("db", "url", *cli, env=env).stdout.strip()
        with psycopg.connect(url) as conn:
            assert conn.info.server_version // 10000 == major
            conn.execute("CREATE TABLE still_here (id int)")
            conn.commit()
        status = dict(line.strip().split(": ", 1) for line in
                      run_cli("db", "status", *cli, env=env).stdout.splitlines())
        pgdata = Path(status["pgdata"])
        data = pgdata.stat()
        assert pwd.getpwuid(data.st_uid).pw_name == status["runs_as"]
        assert stat.S_IMODE(data.st_mode) == 0o700
        if os.geteuid() == 0:  # the server ran as another user: nothing it uses is private
            assert status["runs_as"] != "root"
            assert not str(pgdata).startswith(str(private))
            parent = pgdata.parent.parent
            assert parent.stat().st_uid == 0 and stat.S_IMODE(parent.stat().st_mode) == 0o711
        # A restart finds everything again.
        assert run_cli("db", "stop", *cli, env=env).returncode == 0
        assert run_cli("db", "start", *cli, env=env).returncode == 0
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM still_here").fetchone() == (0,)
    finally:
        state = clone / ".playbook" / "clusters" / "private" / "state.json"
        bindir = Path(json.loads(state.read_text())["bindir"]) if state.exists() else None
        run_cli("db", "destroy", *cli, env=env)
        # This test's own mirror of the wheel's programs, and nothing else: Debian's
        # /usr/lib/postgresql (the 15 case) is the machine's, never the test's to remove.
        mirrors = localdb.PRIVATE_PARENT / f"playbook-{os.geteuid()}"
        if bindir and bindir.is_relative_to(mirrors) and bindir != mirrors:
            shutil.rmtree(mirrors / bindir.relative_to(mirrors).parts[0], ignore_errors=True)


@pytest.mark.parametrize("squatter", ["symlink", "other-writable"])
def test_a_planted_private_folder_is_refused_never_followed(tmp_path, monkeypatch, squatter):
    """Another local user plants /tmp/playbook-<uid> before root's first start: a symlink
    (chown through it would give away whatever it points at) or a folder others may write
    to. The start refuses in one sentence, and nothing is created or changed through it."""
    monkeypatch.setattr(localdb, "PRIVATE_PARENT", tmp_path)
    planted = tmp_path / f"playbook-{os.geteuid()}"
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    if squatter == "symlink":
        planted.symlink_to(victim)
    else:
        planted.mkdir()
        planted.chmod(0o777)
    with pytest.raises(LocalServerError) as refused:
        localdb.private_runtime_folder()
    assert str(planted) in str(refused.value) and "\n" not in str(refused.value)
    assert "Nothing was started" in str(refused.value)
    assert not list(victim.iterdir()) and stat.S_IMODE(victim.stat().st_mode) == 0o755
