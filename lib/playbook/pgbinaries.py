"""Finding PostgreSQL's programs: the server for local clusters, and the client tools
(pg_dump, pg_restore, psql) that must be at least as new as the server they talk to.

Search order: ``PG_BINDIR``; the ``pgserver`` wheel (PostgreSQL 16, works as root);
Debian's ``/usr/lib/postgresql/<major>/bin``; ``pg_config --bindir`` on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import PostgresNotFound, ToolTooOld

DEBIAN_ROOT = Path("/usr/lib/postgresql")


@dataclass(frozen=True)
class Bindir:
    path: Path
    major: int

    def program(self, name: str) -> Path:
        found = self.path / name
        if not found.exists():
            raise PostgresNotFound(
                f"{name} is not in {self.path} (PostgreSQL {self.major}).",
                next_step="install the PostgreSQL client/server package of that version, or "
                "point PG_BINDIR at a bin folder that has it.",
            )
        return found


def _major_of(bindir: Path) -> int | None:
    for program in ("postgres", "pg_dump", "psql"):
        exe = bindir / program
        if exe.exists():
            try:
                out = subprocess.run(
                    [str(exe), "--version"], capture_output=True, text=True, timeout=20
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
            if match:
                return int(match.group(1))
    return None


def _pgserver_bindir() -> Path | None:
    # Located without importing pgserver (its import starts machinery we do not use).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if path.exists() else None


def candidate_bindirs() -> list[Bindir]:
    """Every bin folder found, in search order, without duplicates."""
    paths: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        paths.append(Path(os.environ["PG_BINDIR"]))
    bundled = _pgserver_bindir()
    if bundled:
        paths.append(bundled)
    if DEBIAN_ROOT.exists():
        for child in sorted(DEBIAN_ROOT.iterdir(), reverse=True):
            paths.append(child / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout
        if out.strip():
            paths.append(Path(out.strip()))
    found: list[Bindir] = []
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen or not resolved.is_dir():
            continue
        seen.add(resolved)
        major = _major_of(resolved)
        if major is not None:
            found.append(Bindir(resolved, major))
    return found


def server_bindir(major: int | None = None) -> Bindir:
    """A bin folder with ``initdb``/``postgres`` (of ``major`` when given)."""
    for bindir in candidate_bindirs():
        if (bindir.path / "initdb").exists() and (major is None or bindir.major == major):
            return bindir
    wanted = f"PostgreSQL {major}" if major else "PostgreSQL"
    raise PostgresNotFound(
        f"No {wanted} server binaries found (looked at PG_BINDIR, the pgserver wheel, "
        f"{DEBIAN_ROOT}/*/bin and pg_config).",
        next_step="run `make install` (installs the pgserver wheel), or set PG_BINDIR to a "
        "folder holding initdb and postgres, or set DATABASE_URL to an existing server.",
    )


def available_server_majors() -> list[int]:
    return sorted(
        {b.major for b in candidate_bindirs() if (b.path / "initdb").exists()}, reverse=True
    )


def client_program(name: str, server_major: int) -> Path:
    """``pg_dump``/``pg_restore``/``psql`` new enough for a server of ``server_major``.

    pg_dump refuses to dump a newer server, so the newest bin folder wins; if even the
    newest is older than the server, say so clearly before anything runs.
    """
    candidates = [b for b in candidate_bindirs() if (b.path / name).exists()]
    if not candidates:
        raise PostgresNotFound(
            f"{name} was not found.",
            next_step="install the PostgreSQL client tools or `make install`.",
        )
    newest = max(candidates, key=lambda b: b.major)
    if newest.major < server_major:
        raise ToolTooOld(
            f"The newest {name} found ({newest.path / name}) is PostgreSQL {newest.major}, older "
            f"than the server ({server_major}); it cannot read or write that server's data "
            "safely. Nothing was changed.",
            next_step=f"install PostgreSQL {server_major} client tools and set PG_BINDIR.",
        )
    return newest.path / name
