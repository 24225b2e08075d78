"""Browser fixtures: the operator's path through JupyterLab, in a real Chromium.

One JupyterLab (started by the same code as ``playbook lab``) and one headless Chromium
serve every test of this folder; each test gets its own browser context and its own copy
of the notebooks, so a notebook saved by one test is never seen by another. The lab's
kernels reach a demo database of their own through ``DATABASE_URL``.

Chromium is Debian's package (``make browser-deps`` installs it); nothing is downloaded
at test time. Without it the tests FAIL saying how to install it, unless
``PLAYBOOK_SKIP_BROWSER=1`` is set explicitly.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from lab_driver import LabPage

from playbook import demo_app
from playbook.cli.lab import LabServer, start_lab
from playbook.db import connecting, localdb

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "browser"
CHROMIUM = Path(os.environ.get("PLAYBOOK_CHROMIUM", "/usr/bin/chromium"))
# Flags that let Debian's chromium run headless as root in a container, offline.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage",
]
HOW_TO_INSTALL = (
    "run `make browser-deps` (as root it runs `apt-get install -y chromium` and installs the "
    "playwright package into .venv), or `sudo apt-get install chromium`; "
    "PLAYBOOK_CHROMIUM=/path/to/chromium names another binary. Set PLAYBOOK_SKIP_BROWSER=1 "
    "only to skip these tests knowingly."
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="package")
def chromium_executable() -> Path:
    if os.environ.get("PLAYBOOK_SKIP_BROWSER") == "1":
        pytest.skip("PLAYBOOK_SKIP_BROWSER=1: the JupyterLab browser tests were skipped on request")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"The browser tests need Chromium at {CHROMIUM}, which is missing: "
                    f"{HOW_TO_INSTALL}", pytrace=False)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail(f"The browser tests need the playwright package in this venv: "
                    f"{HOW_TO_INSTALL}", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="package")
def lab_database(_clusters) -> Iterator[str]:
    """A demo application database for the lab's kernels (review mode only reads it)."""
    cluster = _clusters.get(16)
    admin_url = cluster.state().url("postgres")
    name = f"lab_{uuid.uuid4().hex[:10]}"
    url = localdb.create_database(admin_url, name)
    with psycopg.connect(url) as conn:
        demo_app.create_application(conn)
        demo_app.apply_coaching_migration(conn)
        demo_app.load_sample_data(conn, rows=200)
    yield url
    localdb.drop_database(admin_url, name)


@pytest.fixture(scope="package")
def lab_server(chromium_executable: Path, lab_database: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """One JupyterLab for the package, serving a scratch folder; its log is kept beside
    the screenshots."""
    workspace = tmp_path_factory.mktemp("jupyterlab")
    root_dir = workspace / "root"
    root_dir.mkdir()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("DATABASE_URL", "PGPASSWORD", *connecting.LIBPQ_TARGET_VARIABLES)}
    # Exports and records of the notebooks run here stay in the scratch folder.
    base_env["PLAYBOOK_INCIDENTS"] = str(workspace / "incidents")
    with open(OUTPUT / "jupyterlab.log", "w") as log:
        server = start_lab(root_dir, home_dir=workspace / "home", port=0,
                           database_url=lab_database, base_env=base_env, log=log, timeout=90)
        yield server
        server.stop()


@pytest.fixture(scope="package")
def browser(chromium_executable: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(chromium_executable), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _folder_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::")[-1])[:80]


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    """test-output/browser/<test>/: where this test's screenshots go (git-ignored)."""
    folder = OUTPUT / _folder_name(request.node.nodeid)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def lab_folder(lab_server: LabServer, request: pytest.FixtureRequest) -> Path:
    """This test's own folder inside the lab's root (relative paths start here)."""
    folder = lab_server.root_dir / _folder_name(request.node.nodeid)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


@pytest.fixture
def lab(browser, lab_server: LabServer, lab_folder: Path, screenshots: Path,
        request: pytest.FixtureRequest) -> Iterator[LabPage]:
    """A fresh browser context on the lab, as an operator who just opened the URL."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    driver = LabPage(page, lab_server, lab_folder, screenshots)
    yield driver
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        driver.screenshot("failure")
    driver.shutdown_kernels()
    context.close()
