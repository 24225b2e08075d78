"""``playbook lab``: JupyterLab for the operator, reachable from this machine only.

The server listens on 127.0.0.1 behind a random token, runs notebooks with this
project's Python (a ``python3`` kernelspec pointing at this interpreter, first on
``JUPYTER_PATH``), and starts with ``DATABASE_URL`` naming the target: the server given
by ``DATABASE_URL``/``PG*`` if set, else the embedded default cluster (started if needed).

Its settings live in ``.playbook/lab/`` (git-ignored) and make three choices the
playbook relies on: widget state is saved into the notebook (so the record shows what
the operator answered at each gate), no news or update checks are fetched from the
internet, and every cell stays attached to the page (browser search and screenshots see
the whole notebook). The tests start JupyterLab through the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..db import connecting, localdb
from ..errors import ConfigurationError, LocalServerError

DEFAULT_PORT = 8888
KERNEL_NAME = "python3"

# Written into the lab's user settings on every start; other keys the operator set stay.
LAB_SETTINGS: dict[str, dict[str, object]] = {
    "@jupyter-widgets/jupyterlab-manager/plugin": {"saveState": True},
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker": {
        "windowingMode": "none",
        "autoStartDefaultKernel": True,  # the project's kernel, no "Select Kernel" dialog
    },
}


@dataclass(frozen=True)
class LabHome:
    """Where the lab keeps its settings, workspaces, kernelspec and runtime files."""

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "settings"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime"


@dataclass
class LabServer:
    """A running JupyterLab: its process, address and token."""

    process: subprocess.Popen
    port: int
    token: str
    root_dir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "lab") -> str:
        """The address to open, token included (the token is the lab's only key)."""
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def _merge_settings(path: Path, wanted: dict[str, object]) -> None:
    current: dict[str, object] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError:
            # Hand-edited JSON5 (comments): leave the operator's file alone.
            return
    current.update(wanted)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2) + "\n")


def prepare_lab_home(root: Path) -> LabHome:
    """Write the lab's settings and the project's kernelspec under ``root``."""
    home = LabHome(root)
    for plugin, wanted in LAB_SETTINGS.items():
        _merge_settings(home.settings / f"{plugin}.jupyterlab-settings", wanted)
    kernel_dir = home.data / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (rollback playbook)",
        "language": "python",
        "metadata": {"debugger": True},
    }, indent=2) + "\n")
    home.workspaces.mkdir(parents=True, exist_ok=True)
    home.runtime.mkdir(parents=True, exist_ok=True)
    home.runtime.chmod(0o700)
    return home


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` if free (0: any), else a free port the system picks."""
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lab_command(root_dir: Path, port: int, home: LabHome) -> list[str]:
    """The JupyterLab command line. The token is not on it (it travels in the
    environment, so ``ps`` does not show it)."""
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root_dir}",
        f"--LabApp.user_settings_dir={home.settings}",
        f"--LabApp.workspaces_dir={home.workspaces}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--ServerApp.open_browser=False",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return command


def lab_environment(token: str, home: LabHome, database_url: str | None,
                    base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's (and so every kernel's) environment: the token, the project's
    kernelspec first on JUPYTER_PATH, and DATABASE_URL when one is given."""
    env = dict(os.environ if base is None else base)
    env["JUPYTER_TOKEN"] = token
    env["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(home.data), env.get("JUPYTER_PATH", "")) if p
    )
    env["JUPYTER_RUNTIME_DIR"] = str(home.runtime)
    if database_url:
        env[connecting.DEFAULT_URL_ENV] = database_url
    return env


def wait_until_ready(server: LabServer, timeout: float = 60) -> None:
    """Block until the server answers its API, or raise LocalServerError."""
    deadline = time.monotonic() + timeout
    probe = f"{server.base_url}/api/status?token={server.token}"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise LocalServerError(
                f"JupyterLab exited with code {server.process.returncode} before it was ready.",
                next_step="read its messages above; `make install` if JupyterLab is missing.",
            )
        try:
            with urllib.request.urlopen(probe, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    server.stop()
    raise LocalServerError(
        f"JupyterLab did not answer on port {server.port} within {timeout:.0f}s; it was stopped.",
        next_step="try again with another --port.",
    )


def start_lab(root_dir: Path, *, home_dir: Path, port: int = DEFAULT_PORT,
              database_url: str | None = None, token: str | None = None,
              base_env: dict[str, str] | None = None, log=None,
              timeout: float = 60) -> LabServer:
    """Start JupyterLab serving ``root_dir`` and wait until it answers."""
    root_dir = Path(root_dir).resolve()
    if not root_dir.is_dir():
        raise ConfigurationError(f"{root_dir} is not a folder; JupyterLab was not started.")
    home = prepare_lab_home(Path(home_dir).resolve())
    token = token or secrets.token_urlsafe(24)
    port = choose_port(port)
    process = subprocess.Popen(
        lab_command(root_dir, port, home),
        env=lab_environment(token, home, database_url, base_env),
        cwd=root_dir, stdout=log, stderr=subprocess.STDOUT if log else None,
    )
    server = LabServer(process, port, token, root_dir)
    wait_until_ready(server, timeout)
    return server


# -- the command ---------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab", help="start JupyterLab on 127.0.0.1 with a token, the project's kernel and "
        "DATABASE_URL set (the embedded demo server unless DATABASE_URL/PG* are set)")
    lab.add_argument("--port", type=int, default=DEFAULT_PORT,
                     help=f"port to listen on (default {DEFAULT_PORT}; a free one if taken)")
    lab.add_argument("--root", type=Path, default=Path.cwd(),
                     help="folder JupyterLab serves (default: the current folder)")
    lab.set_defaults(func=lab_main)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def lab_main(args: argparse.Namespace) -> int:
    given = localdb.target_is_given()
    url = localdb.target_url()  # starts the embedded cluster when nothing is given
    where = connecting.summary(url)
    server = start_lab(args.root, home_dir=localdb.playbook_home() / "lab", port=args.port,
                       database_url=None if given else url)
    opening = "lab/tree/notebooks" if (server.root_dir / "notebooks").is_dir() else "lab"
    print("JupyterLab for the rollback playbook is running (Ctrl+C stops it).")
    print(f"  open:     {server.url(opening)}")
    print(f"  database: {where} "
          f"({'from your environment' if given else 'embedded; DATABASE_URL is set for kernels'})")
    print(f"  kernel:   {sys.executable}")
    sys.stdout.flush()
    # A SIGTERM (a supervisor, `timeout`) must not leave JupyterLab running on its own.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return server.process.wait() or 0
    except KeyboardInterrupt:
        server.stop()
        print("JupyterLab stopped.")
        return 0
