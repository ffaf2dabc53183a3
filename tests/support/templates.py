"""Real Planetary Computer STAC JSON used as templates by the local servers and the publisher.

The files live in the shared data folder (``stac/``, see ``../shared/data/README.md``); they are
read, never copied into the repository. :func:`rebase_urls` points every PC API URL in a
document at a local base URL, so that nothing a test serves leads to the real service.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from core.config import PLANETARY_COMPUTER_STAC_URL, Settings

S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-rtc"
PC_ORIGIN = "https://planetarycomputer.microsoft.com"

PC_CONFORMANCE: tuple[str, ...] = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "https://api.stacspec.org/v1.0.0/item-search#fields",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
)
"""Conformance classes of PC's STAC API today (from its landing page recorded in 2025); the
shared ``planetary-computer-root.json`` is an older snapshot with beta classes."""


def default_stac_dir() -> Path:
    """The shared ``stac/`` folder (``FIELDFLOW_DATA_DIR`` overrides the data root)."""
    return Settings.from_env().data_dir / "stac"


def _read(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(
            f"PC template {path} is missing; set FIELDFLOW_DATA_DIR to the shared data folder."
        )
    return json.loads(path.read_text())


def item_template(stac_dir: Path, collection: str) -> dict:
    """A real PC item of ``collection`` (the first of the stac-geoparquet sample), deep-copied."""
    name = {S2_COLLECTION: "sentinel-2-l2a-pc.json", S1_COLLECTION: "sentinel-1-rtc-pc.json"}
    if collection not in name:
        raise ValueError(f"No item template for collection {collection!r}; have {sorted(name)}.")
    items = _read(stac_dir / "stac-geoparquet" / name[collection])
    return copy.deepcopy(items[0])


def landing_template(stac_dir: Path) -> dict:
    """PC's landing page (``pystac-client/planetary-computer-root.json``)."""
    return _read(stac_dir / "pystac-client" / "planetary-computer-root.json")


def collection_template(stac_dir: Path, collection: str) -> dict:
    """PC collection JSON for ``sentinel-2-l2a`` (real) or ``sentinel-1-rtc``.

    PC's ``sentinel-1-rtc`` collection is not among the shared files; it is made from the real
    ``gap`` collection's structure with the id, title, description, item assets and summaries of
    Sentinel-1 RTC (item assets taken from the real S1 RTC item).
    """
    if collection == S2_COLLECTION:
        return _read(stac_dir / "odc-stac" / "sentinel-2-l2a.collection.json")
    if collection != S1_COLLECTION:
        raise ValueError(f"No collection template for {collection!r}.")
    doc = _read(stac_dir / "pystac-client" / "planetary-computer-collection.json")
    item = item_template(stac_dir, S1_COLLECTION)
    doc = json.loads(json.dumps(doc).replace("/collections/gap", f"/collections/{S1_COLLECTION}"))
    doc.update(
        {
            "id": S1_COLLECTION,
            "title": "Sentinel 1 Radiometrically Terrain Corrected (RTC)",
            "description": "Sentinel-1 GRD scenes radiometrically terrain corrected to gamma "
            "naught, in UTM, as float32 linear backscatter (local copy of PC's collection).",
            "msft:short_description": "Sentinel-1 RTC backscatter (gamma0, linear).",
            "msft:container": "sentinel1-grd-rtc",
            "msft:storage_account": "sentinel1euwestrtc",
            "license": "CC-BY-4.0",
            "keywords": ["ESA", "Copernicus", "Sentinel", "C-Band", "SAR", "RTC"],
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [["2014-10-10T00:28:21Z", None]]},
            },
            "summaries": {
                "platform": ["SENTINEL-1A", "SENTINEL-1B"],
                "constellation": ["Sentinel-1"],
                "sar:polarizations": ["VV", "VH", "HH", "HV"],
                "sar:instrument_mode": ["IW"],
                "sat:orbit_state": ["ascending", "descending"],
            },
            "item_assets": {
                key: {
                    k: v
                    for k, v in asset.items()
                    if k not in ("href", "file:size", "file:checksum")
                }
                for key, asset in item["assets"].items()
                if key in ("vv", "vh")
            },
            "assets": {},
        }
    )
    doc["links"] = [link for link in doc["links"] if link["rel"] != "describedby"]
    return doc


def rebase_urls(doc: object, stac_base_url: str) -> object:
    """A copy of ``doc`` with every PC STAC API URL under ``stac_base_url`` instead.

    Other PC URLs (``/api/data/v1`` previews, tiles) go under the local origin, so no link leads
    to the real service. Blob-storage hrefs are left alone; the publisher sets those.
    """
    base = stac_base_url.rstrip("/")
    origin = "/".join(base.split("/")[:3])
    text = json.dumps(doc)
    text = text.replace(PLANETARY_COMPUTER_STAC_URL, base).replace(PC_ORIGIN, origin)
    return json.loads(text)
