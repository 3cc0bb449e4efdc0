"""User text is data, never markup: one escaping rule for everything Streamlit renders as Markdown.

Streamlit renders labels (expanders, buttons, metrics, tabs), captions, ``st.markdown`` and
``st.write`` strings as Markdown, with its own extensions (``:red[...]``, ``:material/x:`` icons,
``$...$`` maths). A report title ``[x](javascript:...)`` would become a link and a token ``__x__``
bold text. Every string that came from a user, a file or the model goes through :func:`md`
before it is placed into Markdown; long text goes to :func:`show_text`, which uses ``st.text``
(no Markdown at all). HTML output uses :func:`html_text`.
"""

from __future__ import annotations

import html
import re

import streamlit as st

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping all of them
# (not a hand-picked few) also covers Streamlit's extensions and GFM autolinks ("www.x.y").
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def md(text: object) -> str:
    """``text`` as Markdown that renders literally: no link, emphasis, HTML, icon or maths.

    Line breaks become spaces (a label or table cell is one line); use :func:`show_text` for
    multi-line text.
    """
    flat = " ".join(str(text).splitlines())
    return _PUNCTUATION.sub(r"\\\1", flat)


def md_code(text: object) -> str:
    """``text`` as inline code (rendered literally whatever it holds, backticks included)."""
    flat = " ".join(str(text).splitlines())
    fence = "`" * (max((len(m) for m in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat.strip() else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def html_text(text: object) -> str:
    """``text`` for an HTML context (``st.html``): markup escaped, quotes included."""
    return html.escape(str(text), quote=True)


INVALID = "Invalid settings"  # every refused input starts with this; nothing runs until it is fixed


def show_invalid(problems: list[str]) -> None:
    """The one message style for refused input: field, allowed range, value; nothing runs."""
    if problems:
        st.error(f"{INVALID}: {'; '.join(md(p) for p in problems)}. Nothing runs until this is fixed.")


def show_text(text: object, *, limit: int | None = None) -> None:
    """Show user text as plain preformatted text (``st.text``: no Markdown, no HTML)."""
    value = str(text)
    if limit is not None and len(value) > limit:
        value = value[:limit] + " …"
    st.text(value)
