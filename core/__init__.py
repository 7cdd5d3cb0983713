"""LLM Anatomy Lab core: plain Python + torch, no streamlit. Every number a page shows comes from here."""
