"""Finding PostgreSQL's programs: the server for local clusters, and the client tools
(pg_dump, pg_restore, psql) that must be at least as new as the server they talk to.

Search order: ``PG_BINDIR``; the ``pgserver`` wheel (PostgreSQL 16, works as root);
Debian's ``/usr/lib/postgresql/<major>/bin``; ``pg_config --bindir`` on PATH.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError, PostgresNotFound, ToolTooOld
from . import connecting

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


# What a relocatable install (the pgserver wheel) needs beside ``bin`` to run a server.
_INSTALL_PARTS = ("bin", "lib", "share")


def installed_copy(bindir: Bindir, folder: Path) -> Bindir:
    """``bindir``'s install (``bin``, ``lib``, ``share``) mirrored under ``folder``, for a
    server user who cannot reach the original (the project's ``.venv`` under a 0700 home).

    Files are hard-linked where the filesystem allows, else copied; the mirror is built
    under a temporary name and renamed into place, so a half-built one is never used. It
    is keyed by the original's path and its ``postgres`` binary, so an upgrade of the
    wheel gets a fresh mirror."""
    install = bindir.path.parent
    postgres = (bindir.path / "postgres").stat()
    key = f"{install}:{postgres.st_size}:{postgres.st_mtime_ns}"
    target = folder / f"pg{bindir.major}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    # A wheel's programs find their shared libraries in auditwheel's ``<package>.libs``
    # through a relative RPATH ($ORIGIN/../../../pgserver.libs): keep that layout.
    package = install.parent
    wheel_libs = package.parent / f"{package.name}.libs"
    inside = Path(package.name, install.name) if wheel_libs.is_dir() else Path()
    if not (target / inside / "bin" / "postgres").exists():
        building = Path(f"{target}.building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o755)
        copies = [(install / part, building / inside / part) for part in _INSTALL_PARTS]
        if wheel_libs.is_dir():
            copies.append((wheel_libs, building / wheel_libs.name))
        for source, destination in copies:
            if source.is_dir():
                shutil.copytree(source, destination, symlinks=True,
                                copy_function=_link_or_copy)
        for inner, _dirs, _files in os.walk(building):
            os.chmod(inner, 0o755)
        try:
            building.rename(target)
        except OSError:  # another start built it meanwhile
            shutil.rmtree(building, ignore_errors=True)
    return Bindir(target / inside / "bin", bindir.major)


def _link_or_copy(source: str, destination: str) -> None:
    """Hard link when the file is already readable by everyone (a link shares its mode);
    else a copy made readable (and executable, if it was) by the server's user."""
    mode = os.stat(source).st_mode
    if mode & 0o004:
        try:
            os.link(source, destination)
            return
        except OSError:
            pass
    shutil.copy2(source, destination)
    os.chmod(destination, mode | 0o444 | (0o111 if mode & 0o100 else 0))


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


_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
    "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE",
    "service": "PGSERVICE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "channel_binding": "PGCHANNELBINDING", "gssencmode": "PGGSSENCMODE",
}


def client_environment(url: str) -> dict[str, str]:
    """os.environ plus the PG* variables that describe ``url``: how a pg_dump/psql child
    process is told where to connect, so the password never appears in its argv."""
    params = connecting.parse(url)
    env = dict(os.environ)
    for keyword, value in params.items():
        if keyword not in _LIBPQ_ENV:
            raise ConfigurationError(
                f"The connection string uses the libpq option {keyword!r}, which the playbook "
                "cannot pass to pg_dump through the environment. Nothing was changed.",
                next_step="put that option in a service file (PGSERVICE) instead.",
            )
        env[_LIBPQ_ENV[keyword]] = value
    return env
