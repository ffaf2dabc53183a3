"""FieldFlow's Streamlit app: a thin UI over :mod:`core`.

Start it with ``streamlit run app/main.py`` from the project folder.
"""
