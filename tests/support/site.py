"""A real cube served like Planetary Computer: COG server + STAC API + published items.

with serve_site(read_cube(path), tmp_path, PublishOptions(max_dates=10)) as site:
    client = open_client(site.stac_url)
    ...
    site.stac_server.faults.fail_next(2, 503)
    site.cog_server.faults.deny("/sentinel1-grd-rtc/", 403)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import xarray as xr
from pyproj import Transformer
from shapely.geometry import Polygon, box

from tests.support.cog_server import CogServer
from tests.support.publish import PublicationGrid, PublishOptions, publish_cube, select_dates
from tests.support.stac_server import StacServer
from tests.support.templates import S1_COLLECTION, S2_COLLECTION


def find_cube(cubes_dir: Path, name: str) -> Path:
    """The shared cube file for a site name ("be-flanders-a") or file name."""
    exact = cubes_dir / name
    if exact.is_file():
        return exact
    matches = sorted(cubes_dir.glob(f"{name}_*.nc")) or sorted(cubes_dir.glob(f"{name}*.nc"))
    if len(matches) != 1:
        names = sorted(p.name for p in cubes_dir.glob("*.nc"))
        raise FileNotFoundError(f"No single cube named {name!r} in {cubes_dir}; have {names}.")
    return matches[0]


@dataclass(frozen=True)
class PublishedSite:
    """A published cube and the two servers that serve it."""

    name: str
    """Site name (the cube's ``site`` attribute)."""
    cube: xr.Dataset
    """The published part of the source cube (the dates the options selected): what a client
    that fetches every published acquisition should get back."""
    items: dict[str, list[dict]]
    """Published STAC items by collection, in time order."""
    folder: Path
    """Where the COGs lie (served by :attr:`cog_server`)."""
    cog_server: CogServer
    stac_server: StacServer
    options: PublishOptions

    @property
    def stac_url(self) -> str:
        """The STAC API root URL to give a client (``STAC_API_URL``)."""
        return self.stac_server.url

    @property
    def s2_items(self) -> list[dict]:
        return self.items[S2_COLLECTION]

    @property
    def s1_items(self) -> list[dict]:
        return self.items[S1_COLLECTION]

    @property
    def crs(self) -> str:
        return str(self.cube.attrs["crs"])

    def field(self, inset_m: float = 30.0) -> Polygon:
        """A lon/lat field polygon: the cube's extent shrunk by ``inset_m`` on every side.

        A client that adds a margin of up to ``inset_m - 10`` m and snaps outward to 10 m
        stays inside the cube.
        """
        x, y = self.cube["x"].values, self.cube["y"].values
        rect = box(x[0] - 5 + inset_m, y[-1] - 5 + inset_m, x[-1] + 5 - inset_m, y[0] + 5 - inset_m)
        to_lonlat = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        return shapely.transform(rect.segmentize(50.0), to_lonlat.transform, interleaved=False)

    def grid(self) -> PublicationGrid:
        """The grid the COGs were written on (the cube's, padded)."""
        return PublicationGrid.for_cube(self.cube, self.options.pad_px)

    def s2_times(self) -> np.ndarray:
        """Published S2 acquisition times (datetime64[ns]), one per acquisition (not per item)."""
        return self.cube["time_s2"].values

    def gdal_env(self) -> dict[str, str]:
        """GDAL options for ``rasterio.Env`` that make every read of this site's COGs reach the
        server (GDAL otherwise caches /vsicurl/ data per URL for the whole process) and skip
        GDAL's sidecar-file probing."""
        return {
            "CPL_VSIL_CURL_NON_CACHED": f"/vsicurl/{self.cog_server.url}",
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        }

    def reset(self) -> None:
        """Clear both servers' request logs and faults."""
        self.cog_server.reset()
        self.stac_server.reset()


@contextmanager
def serve_site(
    cube: xr.Dataset,
    folder: Path,
    options: PublishOptions | None = None,
    *,
    stac_dir: Path | None = None,
    stac_port: int = 0,
    cog_port: int = 0,
) -> Iterator[PublishedSite]:
    """Start a COG server on ``folder`` and a STAC API, publish ``cube`` into them, yield the
    site; stop both servers on exit (the files stay).
    """
    options = options or PublishOptions()
    with (
        CogServer(folder, port=cog_port) as cogs,
        StacServer(stac_dir, port=stac_port) as stac,
    ):
        items = publish_cube(cube, folder, cogs.url, stac.url, options, stac_dir=stac_dir)
        stac.add_items(items)
        yield PublishedSite(
            name=str(cube.attrs.get("site", folder.name)),
            cube=select_dates(cube, options),
            items=items,
            folder=Path(folder),
            cog_server=cogs,
            stac_server=stac,
            options=options,
        )
