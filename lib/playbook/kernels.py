"""How the playbook starts notebook kernels.

The kernel and papermill talk over Unix domain sockets instead of TCP ports on
localhost: cell code and outputs (which may show data from production) never cross a
network socket another local user could connect to, and ipykernel has no reason to warn
about unencrypted TCP on every run.

Each kernel gets its own private socket folder (``mkdtemp``, mode 0700) outside the
project: jupyter_client's default, ``kernel-ipc-N`` in the working directory with N the
lowest free number, made parallel runs from one folder steal each other's sockets and
left files in the repository when a run was killed."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

SOCKET_FOLDER_PREFIX = "playbook-kernel-"


class LocalSocketKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels use the ``ipc`` transport (Unix domain sockets),
    in a socket folder of their own that is removed when the kernel is shut down."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("transport", "ipc")
        if "ip" not in kwargs:
            folder = tempfile.mkdtemp(prefix=SOCKET_FOLDER_PREFIX)  # 0700, unique
            kwargs["ip"] = str(Path(folder) / "kernel")
            self._socket_folder: str | None = folder
            # A manager dropped without a shutdown still removes its folder at exit.
            weakref.finalize(self, shutil.rmtree, folder, True)
        else:
            self._socket_folder = None
        super().__init__(**kwargs)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self._socket_folder:
            shutil.rmtree(self._socket_folder, ignore_errors=True)
