"""The Streamlit front end (the only part of lenslab that imports streamlit)."""
