"""Integration fixtures: real cubes served by local servers that speak PC's protocols.

``published_site`` is a session-scoped factory:

    def test_fetch(published_site):
        site = published_site("be-flanders-a", max_dates=10, split=(2,), reprocessed=(1,))
        cube = fetch_cube(site.field(), ..., settings=Settings(stac_api_url=site.stac_url))
        np.testing.assert_allclose(cube["s2"], site.cube["s2"], atol=1e-4)

Keyword arguments are :class:`~tests.support.publish.PublishOptions` fields. One site is
published per (name, options) per session and shared; every call clears both servers' request
logs and faults, so a test starts clean. ``fresh=True`` publishes a new site with new servers
(new URLs), for tests that must see GDAL fetch bytes that an earlier test may have cached: GDAL
caches /vsicurl/ reads per URL for the whole process (or wrap the read in
``rasterio.Env(**site.gdal_env())``, which turns that cache off for the site's COG server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import xarray as xr

from core.cube import read_cube
from tests.support.publish import PublishOptions
from tests.support.site import PublishedSite, find_cube, serve_site

PublishSite = Callable[..., PublishedSite]
"""``published_site(name, *, fresh=False, **options) -> PublishedSite``."""


@pytest.fixture(scope="session")
def published_site(
    cubes_dir: Path, stac_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PublishSite]:
    """Factory serving a shared cube like Planetary Computer; see the module docstring."""
    sites: dict[tuple[str, PublishOptions], PublishedSite] = {}
    cubes: dict[Path, xr.Dataset] = {}
    with ExitStack() as stack:

        def publish(name: str, *, fresh: bool = False, **options: object) -> PublishedSite:
            opts = PublishOptions(**options)  # type: ignore[arg-type]
            key = (name, opts)
            if fresh or key not in sites:
                path = find_cube(cubes_dir, name)
                if path not in cubes:
                    cubes[path] = read_cube(path)
                folder = tmp_path_factory.mktemp(f"site-{name}")
                site = stack.enter_context(serve_site(cubes[path], folder, opts, stac_dir=stac_dir))
                if fresh:
                    return site
                sites[key] = site
            site = sites[key]
            site.reset()
            return site

        yield publish


@pytest.fixture
def flanders_site(published_site: PublishSite) -> PublishedSite:
    """be-flanders-a, first 12 S2 and 12 S1 dates; S2 date 3 split over two tiles, date 1
    reprocessed (baseline 05.00 in 2017), 8 px nodata border."""
    return published_site("be-flanders-a", max_dates=12, split=(3,), reprocessed=(1,), pad_px=8)
