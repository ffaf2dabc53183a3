"""Batch throughput (fields per minute) vs local workers, processes vs threads (a printout).

    python benchmarks/batch_throughput.py [--fields 8] [--max-dates 12] [--workers 1,2]
        [--method linear|whittaker|model] [--samples 1] [--out benchmarks/batch_throughput.txt]

be-flanders-a is published like Planetary Computer by the offline test harness (local STAC API
and HTTP-Range COG server, :mod:`tests.support`); ``--fields`` small fields tile the cube. Each
configuration runs :func:`core.batch.run_batch` with ``--method`` (linear) on a fresh local
cluster with an empty cube cache and results folder, so every field is really fetched (S2 and
S1) and reconstructed. Wall time excludes starting the cluster (shown apart). Threads share
one process: fetches then run one at a time (HDF5, see ``core.batch._FETCH_LOCK``) and the
GIL binds the numpy parts; worker processes avoid both but pay for start-up and transfers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import box, mapping

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.batch import BatchRequest, list_fields, run_batch
from core.bench import machine_description
from core.config import Settings
from core.cube import read_cube
from core.distributed import local_cluster
from core.reconstruct import ReconstructOptions
from tests.support.publish import PublishOptions
from tests.support.site import find_cube, serve_site

CUBE = "be-flanders-a"


def write_fields(cube, count: int, path: Path) -> Path:
    """``count`` fields tiling the cube (2 rows), 20 m inside it, as GeoJSON."""
    x, y = cube["x"].values, cube["y"].values
    columns = -(-count // 2)
    xs = np.linspace(x[0] + 20, x[-1] - 20, columns + 1)
    ys = np.linspace(y[-1] + 20, y[0] - 20, 3)
    to_lonlat = Transformer.from_crs(cube.attrs["crs"], "EPSG:4326", always_xy=True)
    features = []
    for i in range(count):
        col, row = i % columns, i // columns
        outline = box(xs[col] + 5, ys[row] + 5, xs[col + 1] - 5, ys[row + 1] - 5)
        lonlat = shapely.transform(outline, to_lonlat.transform, interleaved=False)
        features.append(
            {
                "type": "Feature",
                "properties": {"name": f"field-{i + 1}"},
                "geometry": mapping(lonlat),
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--max-dates", type=int, default=12, help="S2 and S1 dates published")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--method", default="linear", help="reconstruction method")
    parser.add_argument("--samples", type=int, default=1, help="samples (model only)")
    parser.add_argument("--out", type=Path, default=None, help="also write the printout here")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    cube = read_cube(find_cube(settings.cubes_dir, CUBE))
    worker_counts = [int(w) for w in args.workers.split(",")]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    machine = machine_description(probe_torch=False)
    with tempfile.TemporaryDirectory(prefix="fieldflow-bench-") as tmp:
        root = Path(tmp)
        options = PublishOptions(max_dates=args.max_dates)
        with serve_site(cube, root / "site", options, stac_dir=settings.data_dir / "stac") as site:
            days = site.s2_times().astype("datetime64[D]")
            start, end = str(days.min()), str(days.max())
            fields_path = write_fields(site.cube, args.fields, root / "fields.geojson")
            fields = list_fields(fields_path)
            areas = [f.field.area_ha for f in fields if f.field is not None]
            request = BatchRequest(
                start=start,
                end=end,
                method=args.method,
                options=ReconstructOptions(samples=args.samples),
                every_days=7,
            )
            for key, value in machine.items():
                say(f"{key}: {value}")
            say(f"load average at start: {load_average()} (1, 5, 15 min)")
            say(
                f"input: {CUBE} published locally, {len(site.s2_items)} S2 + "
                f"{len(site.s1_items)} S1 items, {start} to {end}; {len(fields)} fields of "
                f"{min(areas):.1f}-{max(areas):.1f} ha; method {args.method}, "
                f"{args.samples} sample(s); frames every 7 days + acquisitions, daily curve; "
                "empty cache per run"
            )
            say()
            header = (
                f"{'mode':<10}{'workers':>8}{'start s':>9}{'wall s':>8}{'fields/min':>11}"
                f"{'ok':>4}  load avg after"
            )
            say(header)
            say("-" * len(header))
            for processes in (False, True):
                for workers in worker_counts:
                    run = root / f"{'proc' if processes else 'thr'}-{workers}"
                    config = Settings(stac_api_url=site.stac_url, cache_dir=run / "cache")
                    began = time.perf_counter()
                    with local_cluster(workers, processes=processes) as cluster:
                        ready = time.perf_counter()
                        rows = run_batch(
                            fields, request, run / "out", cluster=cluster, settings=config
                        )
                        wall = time.perf_counter() - ready
                    ok = sum(r.status == "ok" for r in rows)
                    mode = "processes" if processes else "threads"
                    if cluster.note:
                        mode += "*"
                    say(
                        f"{mode:<10}{workers:>8}{ready - began:>9.1f}{wall:>8.1f}"
                        f"{60 * len(fields) / wall:>11.1f}{ok:>4}  {load_average()}"
                    )
    say()
    say(
        "Wall time per configuration, one run each: the load averages show what else ran; "
        "compare rows of one run only."
    )
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
