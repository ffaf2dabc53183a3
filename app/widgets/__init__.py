"""The page's widgets, one module per part of the page."""
