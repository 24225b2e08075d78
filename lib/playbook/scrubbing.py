"""Secrets out of records: the live passwords and tokens a run could leak, and
scrubbing every string of a record of them before it is written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from . import notify
from .db import connecting
from .errors import RecordRefused


def live_secrets(env_names: Iterable[str]) -> list[str]:
    """Passwords the run could leak: those of the named variables' connection strings and
    PGPASSWORD, raw and URL-encoded, and the notification targets' passwords and tokens."""
    found: set[str] = set()
    for name in {*env_names, connecting.DEFAULT_URL_ENV}:
        url = os.environ.get(name, "") if isinstance(name, str) else ""
        for secret in connecting.secrets_of(url):
            found.update({secret, quote(secret, safe="")})
    for secret in notify.url_secrets():
        found.update({secret, quote(secret, safe="")})
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def scrub(value: object, secrets: Iterable[str]) -> object:
    """``value`` (a notebook's JSON tree) with every secret and URL password replaced."""
    secrets = list(secrets)
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return connecting.redact(value)
    if isinstance(value, Mapping):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    return value


def write_scrubbed(path: Path, text: str, secrets: Iterable[str]) -> None:
    """Write ``text`` unless it still holds a secret (then refuse, writing nothing). The
    text goes to a temporary file renamed into place: a full disk leaves the previous
    file (or none), never one cut off."""
    leaked = [s for s in secrets if s and s in text]
    if leaked:
        raise RecordRefused(
            f"The record {path.name} would contain the live database password, so it was not "
            "written.",
            next_step="the run itself happened; read its outcome in the other files of the "
            "incident, and report this as a bug in the playbook.",
        )
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
