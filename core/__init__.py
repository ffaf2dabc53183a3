"""FieldFlow core: field input, Sentinel data access, cubes, reconstruction and evaluation.

Nothing here imports Streamlit; the UI in ``app/`` is a thin layer over these modules.
"""
