"""How the playbook starts notebook kernels.

The kernel and papermill talk over Unix domain sockets instead of TCP ports on
localhost: cell code and outputs (which may show data from production) never cross a
network socket another local user could connect to, and ipykernel has no reason to warn
about unencrypted TCP on every run."""

from __future__ import annotations

from jupyter_client.manager import AsyncKernelManager


class LocalSocketKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels use the ``ipc`` transport (Unix domain sockets)."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("transport", "ipc")
        super().__init__(**kwargs)
