"""Throwaway local PostgreSQL clusters: the embedded default and scratch databases.

A cluster lives in a project folder (``.playbook/clusters/<name>``), listens on
127.0.0.1 only, and uses password authentication with a random password kept in the
cluster's own state file (mode 0600). PostgreSQL refuses to run as root, so when we are
root the server runs as an unprivileged system user (``postgres`` if it exists, else one
we create), the way the pgserver wheel does it. That user cannot enter a project cloned
into a private folder (``/root``, any 0700 folder): then the cluster's data and a mirror of
the server's programs go into ``/tmp/playbook-<uid>/``, a folder only we own (0711: the
server's user may pass through to what it is handed, nobody may list or add to it).

When ``DATABASE_URL`` (or libpq's PG* variables) points at a server, that server is used
and nothing here is started: see :func:`target_url`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import socket
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from ..errors import LocalServerError
from . import connecting
from .pgbinaries import Bindir, installed_copy, server_bindir

DEFAULT_CLUSTER = "demo"
DEFAULT_DATABASE = "playbook_demo"
SUPERUSER = "postgres"
RUN_AS_CANDIDATES = ("postgres", "playbook-pg")
# Where a server run by another user keeps what it cannot reach in a private project.
PRIVATE_PARENT = Path("/tmp")


def playbook_home() -> Path:
    """Where local clusters live: ``$PLAYBOOK_HOME`` or ``./.playbook``."""
    return Path(os.environ.get("PLAYBOOK_HOME") or Path.cwd() / ".playbook").resolve()


@dataclass
class ClusterState:
    name: str
    pgdata: str
    port: int
    password: str
    bindir: str
    major: int
    run_as: str | None

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:"
            f"{self.port}/{quote(database, safe='')}"
        )


# A cluster's port is chosen once, from its folder's name, below Linux's ephemeral range
# (32768-60999), so outgoing connections never take it between restarts and an exported
# DATABASE_URL stays right. Only when another program holds it does the port move.
STABLE_PORTS = range(20000, 30000)


def _stable_port(home: Path) -> int:
    first = int(hashlib.sha256(str(home).encode()).hexdigest(), 16) % len(STABLE_PORTS)
    for step in range(200):
        port = STABLE_PORTS[(first + step) % len(STABLE_PORTS)]
        if _port_is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_as_user() -> str | None:
    """None when we may run the server ourselves; else the unprivileged user to use."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS_CANDIDATES:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    name = RUN_AS_CANDIDATES[-1]
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LocalServerError(
            f"PostgreSQL does not run as root, and the unprivileged user '{name}' to run it "
            f"could not be created ({exc}). Nothing was started.",
            next_step=f"create a 'postgres' system user (useradd --system {name}), or run "
            "as an ordinary user, or set DATABASE_URL to a server you already have.",
        ) from None
    return name


def _others_can_traverse(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def private_runtime_folder() -> Path:
    """``/tmp/playbook-<uid>``: ours alone, mode 0711. Refused (one sentence, what to do)
    when something else sits at that name: a symlink, another owner, a folder others may
    write to."""
    folder = PRIVATE_PARENT / f"playbook-{os.geteuid()}"
    try:
        folder.mkdir(mode=0o711)
    except FileExistsError:
        pass
    info = folder.lstat()
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & 0o022):
        raise LocalServerError(
            f"{folder} exists but is not a private folder of this user (a symlink, another "
            "owner, or writable by others), so the local server's files are not put there. "
            "Nothing was started.",
            next_step=f"remove {folder}, or clone the project into a folder every user may "
            "pass through (e.g. /srv or /opt), then run again.")
    folder.chmod(0o711)
    return folder


def reachable_bindir(bindir: Bindir, run_as: str | None) -> Bindir:
    """``bindir``, or a mirror of its install the server's user ``run_as`` can reach."""
    if run_as is None or _others_can_traverse(bindir.path):
        return bindir
    folder = private_runtime_folder()
    try:
        return installed_copy(bindir, folder)
    except OSError as exc:  # a full /tmp, a read-only one
        raise LocalServerError(
            f"The server's user '{run_as}' cannot reach {bindir.path} (a private folder), "
            f"and its programs could not be mirrored into {folder} ({exc.strerror}). "
            "Nothing was started.",
            next_step="free space in /tmp, or clone the project into a folder every user may "
            "pass through (e.g. /srv or /opt), or set DATABASE_URL to a server you have.",
        ) from None


class LocalCluster:
    """One throwaway cluster: ``start``, ``stop``, ``status``, databases."""

    def __init__(self, name: str = DEFAULT_CLUSTER, home: Path | None = None,
                 major: int | None = None) -> None:
        self.name = name
        self.home = (home or playbook_home()) / "clusters" / name
        self.state_file = self.home / "state.json"
        self.major = major
        # Set by start() when the recorded port was taken and the cluster had to move.
        self.moved_from_port: int | None = None

    # -- state ---------------------------------------------------------------------

    def state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        return ClusterState(**json.loads(self.state_file.read_text()))

    def _write_state(self, state: ClusterState) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.touch(mode=0o600)
        self.state_file.chmod(0o600)
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    # -- running programs as the right user ------------------------------------------

    def _run(self, state: ClusterState, program: str, *args: str,
             check: bool = True) -> subprocess.CompletedProcess:
        exe = Path(state.bindir) / program
        kwargs: dict = {"capture_output": True, "text": True, "timeout": 120,
                        "cwd": state.pgdata.rsplit("/", 1)[0]}
        if state.run_as:
            kwargs["user"] = state.run_as
            kwargs["group"] = pwd.getpwnam(state.run_as).pw_gid
            kwargs["env"] = {**os.environ, "HOME": kwargs["cwd"]}
        try:
            result = subprocess.run([str(exe), *args], **kwargs)
        except OSError as exc:  # e.g. the server's user cannot reach the program
            raise LocalServerError(
                f"{program} could not be run for the local cluster '{self.name}' "
                f"({exc.strerror}: {exc.filename or exe}"
                f"{', as user ' + state.run_as if state.run_as else ''}). Nothing was started.",
                next_step="clone the project into a folder every user may pass through (e.g. "
                "/srv or /opt), or set DATABASE_URL to a server you already have.",
            ) from None
        if check and result.returncode != 0:
            raise LocalServerError(
                f"{program} {' '.join(args[:2])} failed for the local cluster '{self.name}': "
                f"{(result.stderr or result.stdout).strip()[-800:]}",
                next_step=f"read {state.pgdata}/../server.log, or `playbook db stop` and retry.",
            )
        return result

    # -- lifecycle -------------------------------------------------------------------

    def _data_root(self, run_as: str | None) -> Path:
        """Folder for PGDATA. The server's user must reach it; if the project folder is
        not traversable by others (e.g. under /root), use a private folder in /tmp."""
        if run_as is None or _others_can_traverse(self.home.parent):
            return self.home
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        return private_runtime_folder() / f"cluster-{self.name}-{digest}"

    def _initialise(self) -> ClusterState:
        run_as = _run_as_user()
        bindir: Bindir = reachable_bindir(server_bindir(self.major), run_as)
        root = self._data_root(run_as)
        root.mkdir(parents=True, exist_ok=True)
        if root.is_symlink() or not root.is_dir():
            raise LocalServerError(
                f"{root} is not a folder; the local cluster is not created there.",
                next_step=f"remove {root} and run again.")
        if run_as:
            root.chmod(0o700)
        pgdata = root / "data"
        password = secrets.token_urlsafe(18)
        state = ClusterState(self.name, str(pgdata), _stable_port(self.home), password,
                             str(bindir.path), bindir.major, run_as)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as:
            entry = pwd.getpwnam(run_as)
            for path in (root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        try:
            self._run(state, "initdb", "-D", str(pgdata), "-U", SUPERUSER,
                      "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                      "--locale=C", "--no-sync")
        except LocalServerError:
            if root != self.home:  # nothing of a cluster that never was stays in /tmp
                import shutil

                shutil.rmtree(root, ignore_errors=True)
            raise
        finally:
            pwfile.unlink(missing_ok=True)
        with open(pgdata / "postgresql.auto.conf", "a") as conf:
            # Throwaway cluster: durability traded for speed; never used for real data.
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = '256MB'\n"
                "max_wal_size = '2GB'\n"
            )
        self._write_state(state)
        return state

    def is_running(self) -> bool:
        state = self.state()
        if state is None or not Path(state.pgdata).exists():
            return False
        return self._run(state, "pg_ctl", "status", "-D", state.pgdata, check=False).returncode == 0

    def start(self) -> ClusterState:
        """Start (initialising on first use) and return the cluster's state; idempotent."""
        state = self.state()
        if state is None or not (Path(state.pgdata) / "PG_VERSION").exists():
            state = self._initialise()
        elif not (Path(state.bindir) / "pg_ctl").exists():
            # A mirror of the programs in /tmp was cleaned away (a reboot): make it again.
            state.bindir = str(reachable_bindir(server_bindir(state.major), state.run_as).path)
            self._write_state(state)
        if not self.is_running():
            # The port may have been taken since the last start: then, and only then, move.
            if not _port_is_free(state.port):
                self.moved_from_port = state.port
                state.port = _stable_port(self.home)
                self._write_state(state)
            log = Path(state.pgdata).parent / "server.log"
            self._run(state, "pg_ctl", "start", "-w", "-t", "60", "-D", state.pgdata,
                      "-l", str(log), "-o", f"-p {state.port}")
        self._ensure_database(state, DEFAULT_DATABASE)
        return state

    def stop(self) -> bool:
        """Stop the cluster; False if it was not running."""
        state = self.state()
        if state is None or not self.is_running():
            return False
        self._run(state, "pg_ctl", "stop", "-w", "-m", "fast", "-D", state.pgdata)
        return True

    def destroy(self) -> None:
        """Stop and delete the cluster's files."""
        import shutil

        state = self.state()
        self.stop()
        if state:
            shutil.rmtree(Path(state.pgdata).parent, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    def status(self) -> dict[str, str]:
        state = self.state()
        if state is None:
            return {"cluster": self.name, "status": "not initialised"}
        return {
            "cluster": self.name,
            "status": "running" if self.is_running() else "stopped",
            "postgresql": str(state.major),
            "pgdata": state.pgdata,
            "port": str(state.port),
            "runs_as": state.run_as or pwd.getpwuid(os.geteuid()).pw_name,
            "url": connecting.redact(state.url(), state.url()),
        }

    # -- databases -------------------------------------------------------------------

    def _ensure_database(self, state: ClusterState, name: str) -> None:
        with _admin_connection(state.url("postgres")) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _port_is_free(port: int) -> bool:
    """Free for a server to listen on: PostgreSQL binds with SO_REUSEADDR, so connections
    of the last run lingering in TIME_WAIT do not count; another listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _admin_connection(url: str, attempts: int = 20) -> psycopg.Connection:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=5,
                                   application_name="playbook:localdb")
        except psycopg.OperationalError as exc:  # just started: may still be recovering
            last = exc
            time.sleep(0.25)
    raise LocalServerError(
        f"The local cluster does not accept connections: {connecting.redact(str(last), url)}",
        next_step="`playbook db status`, then `playbook db stop && playbook db start`.",
    )


def database_url_for(url: str, database: str) -> str:
    """``url`` pointed at another database on the same server."""
    params = connecting.parse(url)
    params["dbname"] = database
    return psycopg.conninfo.make_conninfo("", **params)


def create_database(url: str, name: str, *, template: str | None = None,
                    replace: bool = False) -> str:
    """Create database ``name`` on ``url``'s server (from ``template``); return its URL."""
    with _admin_connection(database_url_for(url, "postgres")) as conn:
        if replace:
            drop_database_on(conn, name)
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)
    return database_url_for(url, name)


def drop_database(url: str, name: str) -> None:
    with _admin_connection(database_url_for(url, "postgres")) as conn:
        drop_database_on(conn, name)


def drop_database_on(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def target_is_given(env_name: str = connecting.DEFAULT_URL_ENV) -> bool:
    """True when ``env_name`` or libpq's PG* variables name a server to use."""
    return bool(os.environ.get(env_name)) or any(
        os.environ.get(v) for v in connecting.LIBPQ_TARGET_VARIABLES
    )


def target_url(env_name: str = connecting.DEFAULT_URL_ENV, *, start: bool = True) -> str:
    """The target: the server named by ``env_name``/PG* variables if any (nothing is
    started), else the embedded default cluster (started if needed)."""
    if target_is_given(env_name):
        return connecting.database_url(env_name)
    cluster = LocalCluster()
    state = cluster.start() if start else cluster.state()
    if state is None:
        raise LocalServerError(
            "No DATABASE_URL is set and the embedded cluster has not been started.",
            next_step="`playbook db start`, or export DATABASE_URL.",
        )
    return state.url()
