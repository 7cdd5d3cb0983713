"""Streamlit-side helpers shared by pages: model picker, cached wrappers around core, charts."""
