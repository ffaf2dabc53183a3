"""UI-only settings read from the environment (the core's live in :class:`core.config.Settings`).

* ``FIELDFLOW_TILE_URL``: base-map tile URL template (``{z}/{x}/{y}``); default OpenStreetMap.
  ``none`` shows no base map (offline: the map stays blank but drawing works).
* ``FIELDFLOW_TILE_ATTRIBUTION``: the attribution shown for those tiles.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_ATTRIBUTION = "&copy; OpenStreetMap contributors"
STATIC_DIR = Path(__file__).resolve().parent / "static"
"""Streamlit serves this folder at ``<baseUrlPath>/app/static/`` (server.enableStaticServing)."""


@dataclass(frozen=True)
class AppConfig:
    """Settings of the page itself."""

    tile_url: str | None = OSM_TILES
    """Base-map tiles; None for no base map."""
    tile_attribution: str = OSM_ATTRIBUTION
    """Attribution of the tiles."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppConfig:
        """Read ``FIELDFLOW_TILE_URL`` / ``FIELDFLOW_TILE_ATTRIBUTION``; unset keeps defaults."""
        env = os.environ if environ is None else environ
        url = env.get("FIELDFLOW_TILE_URL", "").strip()
        attribution = env.get("FIELDFLOW_TILE_ATTRIBUTION", "").strip()
        if not url:
            return cls(tile_attribution=attribution or OSM_ATTRIBUTION)
        if url.lower() in ("none", "off", "0"):
            return cls(tile_url=None, tile_attribution="")
        return cls(tile_url=url, tile_attribution=attribution or url.split("/")[2])
