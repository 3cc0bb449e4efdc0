"""lenslab's Streamlit entry point: access check, sidebar, then the page the user picked.

Every page has its own address (``/logit-lens``, ``/future-lens``, ...), so links work and
carry the page's state in the query string; the root ``/`` is an overview of the pages.
"""

import streamlit as st

from lenslab.app import access, preload, state
from lenslab.app.views import discover, home

st.set_page_config(page_title="lenslab", page_icon=":material/biotech:", layout="wide")
access.require_access()
state.sidebar()
with st.sidebar:  # the chart code loads while the user types, not after Run
    preload.preload_charts()
modules = discover()
pages = {
    home.URL: st.Page(home.render, title=home.TITLE, icon=home.ICON, url_path=home.URL, default=True),
    **{
        module.URL: st.Page(module.render, title=module.TITLE, icon=module.ICON, url_path=module.URL)
        for module in modules
    },
}
state.set_pages(pages)  # lets figures link to other pages (a clicked cell opens the inspector)
# Expanded: with more than ten pages Streamlit would otherwise fold the rest behind "View more".
st.navigation(list(pages.values()), expanded=True).run()
