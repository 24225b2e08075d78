"""Verify the application (the procedure document's "Step 4: Verify Application"):
login data readable, virtues, journal, as queries; plus an optional health-check URL."""

from __future__ import annotations

import urllib.error
import urllib.request

import psycopg

from ..verification import (
    Check,
    application_checks,
    checks_table,
    project_tables_readable,
    require_all_pass,
)

HEALTH_TIMEOUT_SECONDS = 5.0


def health_check(url: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> Check:
    """GET ``url``; passes on an HTTP 2xx answer within ``timeout`` seconds. An empty URL
    gives a passing check that says it was skipped."""
    if not url:
        return Check("application health-check URL", True,
                     "skipped: no health_check_url given", "HTTP 2xx")
    if not url.startswith(("http://", "https://")):
        return Check("application health-check URL", False, "not an http(s) URL", "HTTP 2xx")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http only)
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("application health-check URL", False, f"no answer ({reason})",
                     "HTTP 2xx")
    return Check("application health-check URL", 200 <= status < 300, f"HTTP {status}",
                 "HTTP 2xx")


def verify_application(conn: psycopg.Connection, health_check_url: str = "",
                       expected_counts: dict[str, int] | None = None) -> list[Check]:
    """The document's critical checks as queries, then the health-check URL."""
    return [*application_checks(conn, expected_counts), health_check(health_check_url)]


def change_set_checks(conn: psycopg.Connection, migration: object) -> list[Check]:
    """The checks ``migration`` carries (its change set's ``checks:``); a migration that
    carries none is checked by reading every table of the project, never by another
    application's tables."""
    named = getattr(migration, "checks", None) or []
    if named:
        return [check.run(conn) for check in named]
    return project_tables_readable(conn)


def check_application(run, health_check_url: str = "", migration: object = None):
    """Step 4 as a notebook step: the checks as a table (shown), then VerificationFailed
    if any failed. Read-only. With ``migration``, its own checks (see
    :func:`change_set_checks`); without, the demo application's document checks."""
    from IPython.display import display  # only where a notebook shows it

    with run.connect(read_only=True, purpose=f"{run.notebook}:verify") as conn:
        if migration is None:
            checks = verify_application(conn, health_check_url)
        else:
            checks = [*change_set_checks(conn, migration), health_check(health_check_url)]
    frame = checks_table(checks)
    if not all(c.passed for c in checks):
        display(frame)
        require_all_pass(checks, "Application verification failed")
    return frame
