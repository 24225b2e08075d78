"""Fixtures shared by the reliability suite: the coaching change set, a verified export
of the demo's coaching data (taken once per server version: every demo copy holds the
same rows), and where incident records go."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from playbook.changesets.migration import Migration, load_migration
from playbook.exports import require_sound_export
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20

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
        steps20.export_data(begin_run("20_rollback_coaching_tables"), coaching,
                                    folder, show_progress=False)
        _EXPORTS[demo_db.major] = folder
    require_sound_export(_EXPORTS[demo_db.major])
    return _EXPORTS[demo_db.major]


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real small disk at ``folder`` (a tmpfs of ``size``, e.g. "16k"; needs root),
    unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr}"
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def coaching_tables_present(db) -> set[str]:
    with db.connect() as conn:
        return {r[0] for r in conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables "
            "WHERE tablename LIKE 'sponsor_%'")}


class _Forwarder:
    """A TCP forwarder on 127.0.0.1:6543 to the local server: the port Supabase's
    transaction-mode pooler listens on, in front of a real PostgreSQL."""

    def __init__(self, target_port: int, port: int = 6543) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket
        import threading

        while self.running:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.running = False
        self.server.close()
        self.thread.join(2)


@pytest.fixture
def pooler_url(demo_db):
    """The demo database reached through port 6543 (a forwarder to the real server)."""
    from psycopg import conninfo

    params = conninfo.conninfo_to_dict(demo_db.url)
    forwarder = _Forwarder(int(params["port"]))
    try:
        yield conninfo.make_conninfo(demo_db.url, port="6543")
    finally:
        forwarder.close()


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process, as at a terminal, even when the
    suite was started with SIGINT ignored (a background job of a script inherits that, and
    Python then never raises KeyboardInterrupt)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ctrl_c_reaches_the_child() -> None:
    """For ``preexec_fn``: the child takes SIGINT as a terminal's Ctrl-C (default action,
    so Python raises KeyboardInterrupt), whatever this process inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
