"""Real-browser checks of hand-built widgets in links and of the sidebar's icons (Debian's Chromium).

A Future Lens link with grid settings (a slider, a number field, layer chips) opens the page with
them; every sidebar entry draws a Material icon (a glyph of the app's own font, so it renders on
a machine without an emoji font), each a different one.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from e2e_support import CHROMIUM, screenshot
from e2e_support import wait_idle as idle

from lenslab.app.views import PAGES

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
LOAD_TIMEOUT_S = 240


@pytest.fixture
def page(browser, server):
    """A fresh page on the session's Chromium (``tests/e2e/conftest.py``)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    yield tab
    context.close()


def test_a_future_lens_link_restores_the_grid_settings(page, server):
    link = f"{server.url}/future-lens?{urlencode({'horizon': '1', 'k': '7', 'layers': '2,5'})}"
    try:
        page.goto(link, wait_until="domcontentloaded")
        page.locator("textarea").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page, timeout_s=LOAD_TIMEOUT_S)
        assert not page.get_by_text("Invalid settings").count()
        shown_n = page.locator("[data-testid='stSliderThumbValue']").first.inner_text()
        assert shown_n.strip() == "1", shown_n  # the slider N
        assert page.get_by_label("top-k", exact=True).input_value() == "7"
        chips = page.locator("[data-testid='stMultiSelect']").first.inner_text().split()
        assert "2" in chips and "5" in chips and "0" not in chips, chips
        assert "horizon=1" in page.url and "k=7" in page.url, page.url  # the link stays shareable

        page.goto(f"{server.url}/future-lens?horizon=9", wait_until="domcontentloaded")
        page.locator("textarea").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page, timeout_s=LOAD_TIMEOUT_S)
        assert page.get_by_text("horizon must be between 0 and 3, got 9").count(), "no refusal"
        assert page.get_by_role("button", name="Run").first.is_disabled()
    except Exception:
        screenshot(page, "e2e-future-lens-link")
        raise


def test_every_sidebar_entry_has_its_own_material_icon(page, server):
    try:
        page.goto(server.url, wait_until="domcontentloaded")
        page.locator("h1").first.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
        idle(page, timeout_s=LOAD_TIMEOUT_S)
        links = page.locator("[data-testid='stSidebarNav'] a")
        glyph = "[data-testid='stIconMaterial']"
        icons = [links.nth(i).locator(glyph).all_inner_texts() for i in range(links.count())]
        assert links.count() == len(PAGES) + 1, links.count()  # the pages and the overview
        assert all(len(found) == 1 for found in icons), icons  # no entry without a glyph (or with an emoji)
        names = [found[0] for found in icons]
        assert len(set(names)) == len(names), names
        family = page.locator("[data-testid='stIconMaterial']").first.evaluate(
            "el => getComputedStyle(el).fontFamily"
        )
        assert "Material Symbols" in family, family
    except Exception:
        screenshot(page, "e2e-sidebar-icons")
        raise
