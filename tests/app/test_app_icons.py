"""Page and button icons are Material Symbols (a web font Streamlit serves), never emoji.

A machine without an emoji font (Debian's Chromium as shipped) draws emoji as empty boxes, so
every page's sidebar entry looked the same. Material icons come with the app's own font.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.material_icon_names import ALL_MATERIAL_ICONS

from lenslab.app.views import PAGES, home

APP = Path(__file__).resolve().parents[2] / "app"
MATERIAL = re.compile(r"^:material/([a-z0-9_]+):$")


def _is_emoji(char: str) -> bool:
    """Code points drawn only by an emoji font: pictographs and the technical/dingbat symbols."""
    code = ord(char)
    return code >= 0x1F000 or 0x2300 <= code <= 0x23FF or 0x2600 <= code <= 0x27BF


def test_every_page_has_its_own_material_icon():
    icons = {module.__name__: module.ICON for module in (home, *PAGES)}
    for name, icon in icons.items():
        match = MATERIAL.match(icon)
        assert match, f"{name}: ICON {icon!r} is not a :material/<name>: icon"
        assert match.group(1) in ALL_MATERIAL_ICONS, f"{name}: no Material icon called {match.group(1)!r}"
    assert len(set(icons.values())) == len(icons), f"pages share an icon: {icons}"


def test_the_app_source_draws_no_emoji():
    found = [
        f"{path.relative_to(APP)}:{number}: {line.strip()}"
        for path in sorted(APP.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if any(_is_emoji(c) for c in line)
    ]
    assert not found, "emoji render as empty boxes without an emoji font:\n" + "\n".join(found)
