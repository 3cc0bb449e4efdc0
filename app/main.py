"""lenslab's Streamlit entry point: sidebar, then the page the user picked."""

import streamlit as st

from lenslab.app import state
from lenslab.app.views import DEFAULT_URL, discover

st.set_page_config(page_title="lenslab", page_icon="🔬", layout="wide")
state.sidebar()
pages = {
    module.URL: st.Page(
        module.render,
        title=module.TITLE,
        icon=module.ICON,
        url_path=module.URL,
        default=module.URL == DEFAULT_URL,
    )
    for module in discover()
}
state.set_pages(pages)  # lets figures link to other pages (a clicked cell opens the inspector)
st.navigation(list(pages.values())).run()
