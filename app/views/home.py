"""Overview page at the app's root: what each page answers, one line each, with its link.

Streamlit serves its default page only at ``/``; making this overview the default gives every
probe page its own address (``/logit-lens`` ...), so deep links and shared URLs work.
"""

import streamlit as st

from lenslab.app import state
from lenslab.app.views import discover

TITLE = "Overview"
ICON = ":material/home:"
URL = "overview"


def render() -> None:
    """One link and one sentence per page."""
    st.title("lenslab")
    st.caption(
        "An interpretability workbench for the loaded model. Pick a page; every page's address "
        "(with its prompt in the query string) can be bookmarked or shared."
    )
    for module in discover():
        left, right = st.columns([1, 3])
        page = state.page(module.URL)
        if page is not None:
            left.page_link(page, label=module.TITLE, icon=module.ICON)
        else:  # rendered on its own (tests)
            left.markdown(f"{module.ICON} {module.TITLE}")
        right.caption(getattr(module, "SUMMARY", (module.__doc__ or "").strip().splitlines()[0]))
