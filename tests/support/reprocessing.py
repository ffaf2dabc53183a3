"""A published S2 item as ESA reprocessed it: the same acquisition delivered again.

Planetary Computer holds some acquisitions twice: as first processed (e.g. baseline 02.12 in
2020) and as ESA's reprocessing delivered them (05.00 in 2023): the same time, tile and
footprint, another id, baseline and generation time, and DN with the +1000 offset where the
new baseline has it. :func:`reprocessed` makes such a product from a published item: every
published COG written again beside the original as the new baseline's DN, the 10 m bands
raised by ``tracer_dn`` (0.003 reflectance for 30) so that a test can tell which product a
pixel came from, optionally with a strip along the top left without data (a product that does
not cover the whole field).

    site.stac_server.add_items({S2_COLLECTION: [reprocessed(site, item) for item in ...]})
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio

from tests.support.publish import S2_10M, SCL_ASSET, dn_to_reflectance, reflectance_to_dn
from tests.support.site import PublishedSite


def _local_file(site: PublishedSite, href: str) -> Path:
    return site.folder / href.removeprefix(site.cog_server.url).lstrip("/").split("?", 1)[0]


def _rewrite(source: Path, tag: str, change) -> Path:
    """``source`` with its band passed through ``change(data, resolution_m)``, written beside
    it as a COG."""
    with rasterio.open(source) as src:
        data = src.read(1)
        resolution_m = float(src.transform.a)
        profile = {
            "driver": "COG",
            "width": src.width,
            "height": src.height,
            "count": 1,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "compress": "DEFLATE",
            "blocksize": 64,
        }
    target = source.with_name(f"{source.stem}_{tag}.tif")
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(change(data, resolution_m), 1)
    return target


def reprocessed(
    site: PublishedSite,
    item: dict,
    *,
    baseline: str = "05.00",
    generated: datetime = datetime(2023, 5, 1, 12, 0, tzinfo=UTC),
    tracer_dn: int = 30,
    blank_m: int = 0,
) -> dict:
    """``item``'s acquisition as reprocessed with ``baseline`` at ``generated`` (see the
    module docstring). ``blank_m``: the strip along the top of every published layer that
    holds no data (DN 0) in the new product, in metres (a multiple of 20)."""
    assert blank_m % 20 == 0, "a strip the 20 m layers can hold whole"
    new = copy.deepcopy(item)
    old = item["properties"]["s2:processing_baseline"]
    stamp = generated.strftime("%Y%m%dT%H%M%S")
    tag = f"N{baseline.replace('.', '')}_{stamp}"
    for name, asset in new["assets"].items():
        href = asset.get("href", "")
        source = _local_file(site, href) if href.startswith(site.cog_server.url) else None
        if source is None or not source.is_file():
            continue

        def change(data: np.ndarray, resolution_m: float, name: str = name) -> np.ndarray:
            out = data.copy()
            if name != SCL_ASSET:
                reflectance = dn_to_reflectance(data, old)
                if name in S2_10M:
                    reflectance = reflectance + tracer_dn / 10000.0
                out = reflectance_to_dn(reflectance, baseline)
            out[: int(blank_m // resolution_m)] = 0
            return out

        asset["href"] = site.cog_server.url_for(_rewrite(source, tag, change))
    new["id"] = item["id"].rsplit("_", 1)[0] + f"_{stamp}"
    props = new["properties"]
    props["s2:processing_baseline"] = baseline
    props["s2:generation_time"] = generated.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    for key in ("s2:product_uri", "s2:datatake_id", "s2:granule_id", "s2:datastrip_id"):
        if key in props:
            props[key] = (
                props[key]
                .replace(f"N{old}", f"N{baseline}")
                .replace(f"N{old.replace('.', '')}", f"N{baseline.replace('.', '')}")
            )
    return new
