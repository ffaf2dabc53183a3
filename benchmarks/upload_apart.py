"""What reading an upload in a process of its own costs (core.field.read_upload, since
2026-12-06) against reading it in the caller's process (core.field.read_field_file).

GeoPackages of N parcels (1.2 ha squares near Ghent, written here with geopandas) are read
both ways, several times each; the medians are printed with the range.

    python benchmarks/upload_apart.py [--parcels 3,200,2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import geopandas as gpd
from shapely.geometry import box

from core.field import read_field_file, read_upload


def parcels(path: Path, count: int) -> Path:
    """A GeoPackage of ``count`` squares in rows of 50."""
    shapes = [
        box(
            3.0 + 0.002 * (i % 50),
            51.0 + 0.002 * (i // 50),
            3.0 + 0.002 * (i % 50) + 0.0015,
            51.0 + 0.002 * (i // 50) + 0.001,
        )
        for i in range(count)
    ]
    frame = gpd.GeoDataFrame({"name": [f"P{i + 1}" for i in range(count)]}, geometry=shapes)
    frame.set_crs("EPSG:4326").to_file(path, layer="fields", driver="GPKG")
    return path


def timed(call, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", default="3,200,2000")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print("parcels  apart: median [min - max] s   here: median s")
    with tempfile.TemporaryDirectory() as tmp:
        for count in (int(n) for n in args.parcels.split(",")):
            path = parcels(Path(tmp) / f"farm-{count}.gpkg", count)
            data = path.read_bytes()
            apart = timed(lambda: read_upload(data, path.name), args.repeats)  # noqa: B023
            here = timed(lambda: read_field_file(path), args.repeats)  # noqa: B023
            print(
                f"{count:7d}  {statistics.median(apart):.2f} [{min(apart):.2f} - {max(apart):.2f}]"
                f"            {statistics.median(here):.3f}"
            )


if __name__ == "__main__":
    main()
