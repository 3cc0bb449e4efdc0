"""Real-browser end-to-end tests: Debian's Chromium (via Playwright) against a real `streamlit run`.

For every page the app discovers: load it, type a prompt, press its run button, see a plotly figure
render, save a report, and find it on the Reports page. The prompt carries an HTML/JS payload, so
each page also shows that token text is never executed. Screenshots and the server log go to
``tests/_artifacts/`` on failure. Skipped (with the reason) only when Chromium is not installed.
"""

from __future__ import annotations

import re
import time
import zipfile

import pytest
from e2e_support import (
    CHROMIUM,
    RUN_TIMEOUT_S,
    STATS,
    exceptions_on,
    save_server_log,
    screenshot,
)
from e2e_support import errors_on as page_errors
from e2e_support import wait_idle as idle

from lenslab.app.views import DEFAULT_URL, discover

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]

# Harmless-looking for the model, hostile for a renderer: if any of it is executed, window.__xss is set.
PROMPT = 'The <b>Eiffel</b> Tower "><img src=x onerror="window.__xss=1"> is in the city of'
PREPARE_WORDS = re.compile(r"^\W*(fit|train|prepare)\b", re.IGNORECASE)
# Reports and Sweeps have no prompt → run → figure → save flow (Sweeps: tests/app/test_app_sweeps.py).
PAGES = [m for m in discover() if m.URL not in ("reports", "sweeps")]
LOAD_TIMEOUT_S = 240


@pytest.fixture
def page(browser, server, request):
    """A fresh page; on failure a screenshot and the server log are kept under tests/_artifacts."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.dialogs = []
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    yield tab
    context.close()


@pytest.fixture(autouse=True)
def _keep_evidence(request, server):
    yield
    report = getattr(request.node, "rep_call", None)  # set by tests/e2e/conftest.py
    if report is not None and report.failed:
        save_server_log(server, request.node.name)


def _open(page, server, url_path: str) -> None:
    """Open a page by its URL (a deep link, as from a bookmark) and wait for its run to finish."""
    path = "" if url_path == DEFAULT_URL else url_path  # Streamlit serves the default page only at "/"
    page.goto(f"{server.url}/{path}", wait_until="domcontentloaded")
    page.locator("h1").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
    idle(page, timeout_s=LOAD_TIMEOUT_S)
    assert not page.get_by_text("Page not found").count(), f"/{url_path}: 'Page not found'"
    nav = page.locator("[data-testid='stSidebarNav'] a")
    hrefs = [nav.nth(i).get_attribute("href") or "" for i in range(nav.count())]
    default = url_path == DEFAULT_URL  # the default page is served at "/"
    listed = any(h.endswith(f"/{url_path}") or (default and h.rstrip("/") == server.url) for h in hrefs)
    assert listed, f"/{url_path} is not in the navigation {hrefs}"


def _no_crash(page) -> None:
    assert not exceptions_on(page), f"traceback shown: {exceptions_on(page)}"
    assert page.evaluate("() => window.__xss") is None, "a script from the prompt ran"
    assert not page.dialogs, f"a dialog fired: {page.dialogs}"


def _run_button(page):
    """The page's main action: the first visible, enabled primary button that is not a preparation step."""
    buttons = page.locator(
        "[data-testid='stBaseButton-primary']:visible, [data-testid='stBaseButton-primaryFormSubmit']:visible"
    )
    for i in range(buttons.count()):
        button = buttons.nth(i)
        text = button.inner_text().strip()
        if button.is_enabled() and not PREPARE_WORDS.match(text):
            return button, text
    texts = [buttons.nth(i).inner_text().strip() for i in range(buttons.count())]
    return None, texts


DONE = re.compile(r": done in [0-9.]+ s")


def _status_texts(page) -> list[str]:
    """Texts of the run_with_status boxes that say "done in … s"."""
    labels = page.get_by_text(DONE)
    return [labels.nth(i).inner_text() for i in range(labels.count())]


def _wait_for_run(page, before: list[str]) -> None:
    """After a click: wait until the script ran and settled, with a new status, an error or a traceback."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    saw_running, calm_since = False, None
    while time.monotonic() < deadline:
        if page.locator("[data-testid='stStatusWidget']").count():
            saw_running, calm_since = True, None
        else:
            calm_since = calm_since or time.monotonic()
            changed = _status_texts(page) != before or page_errors(page) or exceptions_on(page)
            if (saw_running or changed) and time.monotonic() - calm_since > 1.5:
                return
        page.wait_for_timeout(250)
    raise TimeoutError(f"the run did not finish within {RUN_TIMEOUT_S} s")


def _figure_rendered(page) -> bool:
    """Whether a plotly figure is in the page (plotly.js loads lazily: give it time)."""
    try:
        page.locator(".js-plotly-plot .main-svg").first.wait_for(state="attached", timeout=60_000)
    except Exception:
        return False
    return True


# Pages whose prompt box has another label or whose Run needs a particular prompt: activation
# patching runs only on a clean prompt token-aligned with its corrupted one (fast_configs: one digit
# changed), which still carries markup.
PAGE_PROMPTS = {"patching": ("Clean prompt", "The Eiffel Tower is in <b>Paris</b> & 48 + 7 =")}


@pytest.mark.parametrize("module", PAGES, ids=lambda m: m.URL)
def test_page_runs_renders_and_saves(module, page, server):
    try:
        _open(page, server, module.URL)
        _no_crash(page)
        label, text = PAGE_PROMPTS.get(module.URL, ("Prompt", PROMPT))
        prompt = page.locator(f"textarea[aria-label='{label}']:visible")
        if prompt.count():
            prompt.first.fill(text)
            prompt.first.press("Tab")  # commit the value before pressing the button
            idle(page)
        button, label = _run_button(page)
        if button is None:
            STATS.note(f"browser: page {module.URL} offers only {label} until its artefacts are prepared")
            pytest.skip(f"page {module.URL} has no runnable action before preparation (buttons: {label})")
        before = _status_texts(page)
        button.click()
        _wait_for_run(page, before)
        _no_crash(page)
        assert not page_errors(page), f"{module.URL}: {label!r} showed errors {page_errors(page)}"
        assert _figure_rendered(page), f"{module.URL}: no plotly figure after {label!r}"
        STATS.add("browser_pages")

        title = f"e2e {module.URL} {int(time.time())}"
        save = page.get_by_role("button", name=re.compile("Save report"))
        assert save.count(), f"{module.URL}: no 'Save report' button after a run"
        title_box = page.locator("input[aria-label='Report title']:visible").first
        title_box.fill(title)
        title_box.press("Tab")
        save.first.click()
        page.get_by_text("Saved report").first.wait_for(state="visible", timeout=120_000)
        _no_crash(page)

        _open(page, server, "reports")
        _no_crash(page)
        page.get_by_text(title).first.wait_for(state="visible", timeout=30_000)
        STATS.add("browser_reports")
        STATS.add("reports_checked")
        STATS.add("xss_blocked")
    except Exception:
        screenshot(page, f"e2e-{module.URL}")
        save_server_log(server, f"e2e-{module.URL}")
        raise


def test_reports_page_opens_a_saved_report(page, server, tiny_gemma):
    """A report saved by the API is listed, opens (figures re-rendered) and its prompt stays text."""
    from lenslab.analyses.report import Report, report_meta
    from lenslab.probes import LogitLens, LogitLensConfig

    result = LogitLens().run(tiny_gemma, PROMPT, LogitLensConfig(k=3))
    Report([result], report_meta([result], tiny_gemma, "e2e opened report")).save(server.reports / "opened")
    try:
        _open(page, server, "reports")
        page.get_by_text("e2e opened report").first.click()
        page.get_by_text("Open").first.wait_for(state="visible")
        idle(page)
        # the zip is built when the button is pressed (not on every rerun): it still holds the report
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name=re.compile("Download zip")).first.click()
        with zipfile.ZipFile(download.value.path()) as archive:
            assert "opened/report.json" in archive.namelist(), archive.namelist()
        _switch_on(page, "[data-testid='stCheckbox'], [data-testid='stToggle']")
        page.locator(".js-plotly-plot").first.wait_for(state="attached", timeout=60_000)
        _no_crash(page)
        STATS.add("reports_checked")
        STATS.add("xss_blocked")
    except Exception:
        screenshot(page, "e2e-reports-open")
        raise


def _switch_on(page, selector: str, tries: int = 3) -> None:
    """Click the first toggle matching ``selector`` until its input is checked.

    A click that lands while Streamlit is still re-running the script can be dropped by the
    rerun; the page is what a user sees, so the test clicks again as a user would.
    """
    toggle = page.locator(selector).first
    for _ in range(tries):
        if toggle.locator("input").first.is_checked():
            return
        toggle.click()
        idle(page)
    assert toggle.locator("input").first.is_checked(), "the toggle never switched on"


def _run_prompt(page, text: str) -> None:
    """Type ``text`` into the page's prompt and press Run; wait for the run to settle."""
    prompt = page.locator("textarea[aria-label='Prompt']").first
    prompt.fill(text)
    prompt.press("Tab")
    idle(page)
    before = _status_texts(page)
    page.get_by_role("button", name="Run").first.click()
    _wait_for_run(page, before)


def test_bad_input_shows_a_message_and_the_app_keeps_serving(page, server):
    """An empty prompt gives a message (no traceback); the next good run on the same page works."""
    try:
        _open(page, server, "logit-lens")
        _run_prompt(page, "   ")
        assert any("empty" in e for e in page_errors(page)), page_errors(page)
        _no_crash(page)
        _run_prompt(page, "Paris is the capital of")
        assert _figure_rendered(page)
        assert not page_errors(page)
        _no_crash(page)
    except Exception:
        screenshot(page, "e2e-bad-input")
        raise


def test_the_chart_code_loads_before_run_and_only_once(page, server):
    """The page fetches the frontend's plotly module while the user types, and Run reuses it.

    Fails if the preload stops (the module would first be fetched after Run, in the user's wait)
    or resolves to another URL than the frontend's own import (it would be fetched twice).
    """
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/PlotlyChart." in r.url else None)
    try:
        _open(page, server, "logit-lens")
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while not fetched and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert fetched, "the chart code was not fetched before Run"
        assert not page.locator(".js-plotly-plot").count(), "a figure is on the page before Run"
        _run_prompt(page, "Paris is the capital of")
        assert _figure_rendered(page)
        assert len(fetched) == 1, fetched
        _no_crash(page)
        assert not page_errors(page), page_errors(page)
    except Exception:
        screenshot(page, "e2e-chart-preload")
        raise


def test_clicking_a_grid_cell_opens_the_inspector(page, server):
    """A click on a logit-lens cell switches to the state inspector on that (layer, position)."""
    try:
        _open(page, server, "logit-lens")
        _run_prompt(page, "Paris is the capital of")
        assert _figure_rendered(page)
        plot = page.locator(".js-plotly-plot").first
        plot.scroll_into_view_if_needed()
        target = plot.locator(".nsewdrag").first  # plotly's event layer over the plot area
        box = target.bounding_box()
        assert box, "the grid has no plot area"
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        inspect = page.get_by_role("button", name=re.compile(r"Inspect layer \d+, position \d+"))
        inspect.first.wait_for(state="visible", timeout=RUN_TIMEOUT_S * 1000)
        layer, position = re.search(r"layer (\d+), position (\d+)", inspect.first.inner_text()).groups()
        inspect.first.click()
        page.wait_for_url(re.compile(r"/inspector\?"), timeout=RUN_TIMEOUT_S * 1000)
        page.locator("h1").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page, timeout_s=LOAD_TIMEOUT_S)
        url = page.url
        assert "prompt=Paris" in url and f"layer={layer}" in url and f"pos={position}" in url, url
        _no_crash(page)
        assert not page_errors(page), page_errors(page)
        STATS.add("browser_pages")
    except Exception:
        screenshot(page, "e2e-click-to-inspect")
        raise


DEEP_PROMPT = "Deep links keep the prompt"


@pytest.mark.parametrize("module", discover(), ids=lambda m: m.URL)
def test_deep_link_opens_the_page_with_its_state(module, page, server):
    """``/<page>?prompt=...`` opens that page (never "Page not found") with the prompt in its box."""
    from urllib.parse import quote

    query = f"?prompt={quote(DEEP_PROMPT)}"
    try:
        page.goto(f"{server.url}/{module.URL}{query}", wait_until="domcontentloaded")
        page.locator("h1").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page, timeout_s=LOAD_TIMEOUT_S)
        assert not page.get_by_text("Page not found").count(), f"/{module.URL}: 'Page not found'"
        assert page.url.split("?")[0].rstrip("/").endswith(f"/{module.URL}"), page.url
        title = page.locator("h1").first.inner_text()
        assert module.TITLE.lower() in title.lower(), title
        no_prompt = ("reports", "shared-neurons", "neurosymbolic", "sweeps", "replications")
        if module.URL in no_prompt:  # pages without a prompt box
            return
        if module.URL == "sae-features" and page.get_by_text("No SAE has been trained").count():
            return  # its prompt box sits in a tab shown once an SAE is loaded
        box = page.locator("textarea").first  # drawn once the model is loaded
        box.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        assert box.input_value() == DEEP_PROMPT, f"/{module.URL} ignored the prompt in its link"
    except Exception:
        screenshot(page, f"e2e-deep-link-{module.URL}")
        raise


def test_editing_the_prompt_updates_the_link_and_the_root_is_an_overview(page, server):
    """Typing a prompt writes it to the address bar; "/" lists every page; no deploy button."""
    try:
        page.goto(server.url, wait_until="domcontentloaded")
        page.locator("h1").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page)
        for module in discover():
            assert page.get_by_role("link", name=module.TITLE).count(), f"{module.TITLE} not on the overview"
        assert not page.get_by_role("button", name="Deploy").count(), "the toolbar offers Deploy"
        _open(page, server, "logit-lens")
        box = page.locator("textarea").first
        box.fill("Links remember this")
        box.press("Control+Enter")
        idle(page)
        assert "prompt=Links+remember+this" in page.url or "prompt=Links%20remember%20this" in page.url, (
            page.url
        )
    except Exception:
        screenshot(page, "e2e-deep-link-edit")
        raise


@pytest.mark.parametrize(
    ("url", "query", "number", "chips", "select"),
    [
        ("logit-lens", {"k": "7", "layers": "2,5"}, "k", ["2", "5"], None),
        ("jacobian", {"method": "randomized", "n_components": "3"}, "n_components", None, "method"),
    ],
    ids=["logit-lens", "jacobian"],
)
def test_deep_link_restores_the_page_settings(url, query, number, chips, select, page, server):
    """``/<page>?prompt=...&k=7`` opens the page with its settings; editing one rewrites the link."""
    from urllib.parse import urlencode

    link = f"{server.url}/{url}?{urlencode({'prompt': DEEP_PROMPT, **query})}"
    try:
        page.goto(link, wait_until="domcontentloaded")
        page.locator("textarea").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page, timeout_s=LOAD_TIMEOUT_S)
        page.get_by_text("Settings", exact=True).first.click()  # open the settings expander
        idle(page)
        assert not page.get_by_text("Invalid settings").count()
        box = page.get_by_label(number.replace("_", " "), exact=True)
        assert box.input_value() == query[number], f"/{url}: {number} shows {box.input_value()}"
        if chips is not None:  # the layers multiselect shows one chip per layer
            shown = page.locator("[data-testid='stMultiSelect']").first.inner_text()
            lines = [line.strip() for line in shown.splitlines()]
            assert all(chip in lines for chip in chips) and "0" not in lines, shown
        if select is not None:
            box_of = page.locator("[data-testid='stSelectbox']").filter(has_text=select).first
            shown = (
                box_of.inner_text()
                + " "
                + " ".join(box_of.locator("input").evaluate_all("inputs => inputs.map(i => i.value)"))
            )
            assert query[select] in shown or page.get_by_text(query[select], exact=True).count(), shown
        edited = str(int(query[number]) + 1)
        box.fill(edited)
        box.press("Enter")
        idle(page)
        assert f"{number}={edited}" in page.url, page.url
    except Exception:
        screenshot(page, f"e2e-deep-link-settings-{url}")
        raise


def test_a_bad_setting_in_a_link_is_refused_in_the_browser(page, server):
    """``?k=abc`` shows the one refusal message and leaves the Run button disabled."""
    try:
        page.goto(f"{server.url}/logit-lens?k=abc", wait_until="domcontentloaded")
        page.locator("textarea").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page, timeout_s=LOAD_TIMEOUT_S)
        assert page.get_by_text("cannot read 'abc'").count(), "no refusal for ?k=abc"
        assert page.get_by_role("button", name="Run").first.is_disabled()
    except Exception:
        screenshot(page, "e2e-deep-link-bad-setting")
        raise
