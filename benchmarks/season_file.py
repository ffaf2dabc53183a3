"""What the page's "All N frames (NetCDF)" download costs: the demo season's Run (offline cube,
the app's settings: the model, K = 8, the band fitted on the field, tuned 50 steps), then
:func:`core.season.season_netcdf` three times (the tuned network is reused, as in the app's
process) and one frame's GeoTIFF for comparison.

    python benchmarks/season_file.py [--threads 2]

Prints the Run's time, each file's time (median of 3) and size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.demo import DEMO_CUBE_NAME, demo_preset
from core.reconstruct import ReconstructOptions
from core.season import (
    DEFAULT_ADAPT_STEPS,
    SeasonRequest,
    compute_season,
    frame_geotiff_for_day,
    season_file_mb,
    season_netcdf,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    preset = demo_preset(settings.cubes_dir / DEMO_CUBE_NAME)
    options = ReconstructOptions(samples=8, calibrate_field=True, adapt_steps=DEFAULT_ADAPT_STEPS)
    request = SeasonRequest(
        preset.field,
        preset.start,
        preset.end,
        method="model",
        options=options,
        cube_path=preset.cube_path,
    )
    began = time.perf_counter()
    result = compute_season(request, settings)
    print(
        f"Run: {time.perf_counter() - began:.1f} s, {len(result.timeline)} frames, "
        f"grid {result.grid.shape}, {len(result.curve)} curve days"
    )
    times = []
    for _ in range(3):
        began = time.perf_counter()
        data = season_netcdf(result)
        times.append(time.perf_counter() - began)
    print(
        f"NetCDF of every frame: median {statistics.median(times):.1f} s "
        f"({', '.join(f'{t:.1f}' for t in times)}), {len(data) / 1e6:.1f} MB "
        f"({season_file_mb(result):.1f} MB uncompressed)"
    )
    began = time.perf_counter()
    tiff = frame_geotiff_for_day(result, result.days[len(result.days) // 2])
    print(f"GeoTIFF of one frame: {time.perf_counter() - began:.1f} s, {len(tiff) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
