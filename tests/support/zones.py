"""A published S2 item's tile as the neighbouring UTM zone's tile of the same datatake.

Near a UTM zone's edge Planetary Computer serves each datatake as tiles of both zones: the
same acquisition time, the same pixels on the ground, each tile on its own zone's grid (the
easternmost MGRS tiles reach some 100 km into the next zone). :func:`tile_in_zone` makes such a
tile from a published item: every published COG reprojected (nearest) onto a grid of
``epsg`` whose edges are multiples of 60 m, as real tiles are, written beside the original,
and an item that points at them, named after its tile in that zone.

    site.stac_server.add_items({S2_COLLECTION: [tile_in_zone(site, item, 32630) ...]})
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject, transform_bounds

from tests.support.publish import mgrs_tile
from tests.support.site import PublishedSite


def _local_file(site: PublishedSite, href: str) -> Path:
    """The file behind one of the site's COG URLs (a signed one too)."""
    return site.folder / href.removeprefix(site.cog_server.url).lstrip("/").split("?", 1)[0]


def _reprojected(source: Path, epsg: int) -> tuple[Path, dict]:
    """Write ``source`` reprojected (nearest) into ``epsg`` beside it; its path and the
    asset's new ``proj:`` fields."""
    crs = f"EPSG:{epsg}"
    with rasterio.open(source) as src:
        res = float(src.transform.a)
        left, bottom, right, top = transform_bounds(src.crs, crs, *src.bounds)
        left, top = math.floor(left / 60) * 60, math.ceil(top / 60) * 60
        width, height = math.ceil((right - left) / res), math.ceil((top - bottom) / res)
        transform = Affine(res, 0.0, left, 0.0, -res, top)
        out = np.full((height, width), src.nodata, dtype=src.dtypes[0])
        reproject(
            src.read(1),
            out,
            src_transform=src.transform,
            src_crs=src.crs,
            src_nodata=src.nodata,
            dst_transform=transform,
            dst_crs=crs,
            dst_nodata=src.nodata,
            resampling=Resampling.nearest,
        )
        profile = {
            "driver": "COG",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": out.dtype.name,
            "crs": crs,
            "transform": transform,
            "nodata": src.nodata,
            "compress": "DEFLATE",
            "blocksize": 64,
        }
    target = source.with_name(f"{source.stem}_EPSG{epsg}.tif")
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(out, 1)
    fields = {
        "proj:bbox": [left, top - height * res, left + width * res, top],
        "proj:shape": [height, width],
        "proj:transform": [res, 0.0, left, 0.0, -res, top],
    }
    return target, fields


def tile_in_zone(site: PublishedSite, item: dict, epsg: int) -> dict:
    """The tile of ``item``'s datatake in UTM zone ``epsg`` (see the module docstring): same
    time, footprint and properties, its own id, MGRS tile and ``proj:`` fields, and COGs on
    that zone's grid. Assets the site does not publish keep their (404) hrefs, on the new
    grid."""
    new = copy.deepcopy(item)
    old_tile = item["properties"]["s2:mgrs_tile"]
    grid_fields: dict | None = None
    for asset in new["assets"].values():
        href = asset.get("href", "")
        source = _local_file(site, href) if href.startswith(site.cog_server.url) else None
        if source is None or not source.is_file():
            continue
        target, fields = _reprojected(source, epsg)
        asset["href"] = site.cog_server.url_for(target)
        asset.update(fields)
        if fields["proj:transform"][0] == 10.0:
            grid_fields = fields
    assert grid_fields is not None, "the item has no published 10 m asset"
    left, top = grid_fields["proj:transform"][2], grid_fields["proj:transform"][5]
    for asset in new["assets"].values():  # unpublished assets: on the new grid too
        if "proj:transform" in asset and not asset["href"].endswith(f"_EPSG{epsg}.tif"):
            gsd = float(asset.get("gsd") or asset["proj:transform"][0])
            height = math.ceil(grid_fields["proj:shape"][0] * 10.0 / gsd)
            width = math.ceil(grid_fields["proj:shape"][1] * 10.0 / gsd)
            asset["proj:shape"] = [height, width]
            asset["proj:transform"] = [gsd, 0.0, left, 0.0, -gsd, top]
            asset["proj:bbox"] = [left, top - height * gsd, left + width * gsd, top]
    tile = mgrs_tile(epsg, left + 5.0, top - 5.0)
    new["id"] = item["id"].replace(f"_T{old_tile}_", f"_T{tile}_")
    props = new["properties"]
    props["s2:mgrs_tile"] = tile
    props["proj:epsg"] = epsg
    if "proj:code" in props:
        props["proj:code"] = f"EPSG:{epsg}"
    for asset in new["assets"].values():
        if "proj:epsg" in asset:
            asset["proj:epsg"] = epsg
        if "proj:code" in asset:
            asset["proj:code"] = f"EPSG:{epsg}"
    return new
