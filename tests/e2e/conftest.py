"""One app server and one Chromium for every browser test of the session.

Starting ``streamlit run`` (and loading the model in it on the first page) costs tens of seconds,
so the browser modules share one server instead of one per module. A test that fails may leave a
run going on the server (a page cut off by a timeout keeps computing and holds the model), and
the next test's run would then wait "1 ahead" behind it and fail as well. So after a failed test
the next test gets a fresh server: each test is independent of an earlier one's failure.
"""

from __future__ import annotations

import pytest
from e2e_support import FAKE_TOKEN, RUN_TIMEOUT_S, AppServer, SharedServer, launch_chromium, start_app


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test (``rep_setup``, ``rep_call``) and flag a failed server."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    shared = item.funcargs.get("_shared_server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(shared, SharedServer):
        shared.failed = True


@pytest.fixture(scope="session")
def _shared_server(tmp_path_factory):
    env = {"HF_TOKEN": FAKE_TOKEN, "LENSLAB_TIME_LIMIT_S": str(RUN_TIMEOUT_S - 30)}
    shared = SharedServer(tmp_path_factory.mktemp("e2e"), lambda root: start_app(root, extra_env=env))
    yield shared
    logs = shared.stop()
    assert all(FAKE_TOKEN not in log for log in logs), "the server printed a secret from its environment"


@pytest.fixture
def server(_shared_server) -> AppServer:
    """The app (``tests/e2e_app.py``: forms start at fast configs), with a fake secret in its env."""
    return _shared_server.current()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, driven by Playwright, for the whole session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
