"""lenslab's Streamlit entry point: sidebar, then the page the user picked."""

import streamlit as st

from lenslab.app import state
from lenslab.app.pages import discover

st.set_page_config(page_title="lenslab", page_icon="🔬", layout="wide")
state.sidebar()
pages = [
    st.Page(module.render, title=module.TITLE, icon=module.ICON, url_path=module.URL) for module in discover()
]
st.navigation(pages).run()
