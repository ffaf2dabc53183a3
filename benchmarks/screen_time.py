"""How long the haze screen takes, and how much memory beside the cube, on a field-sized cube.

    python benchmarks/screen_time.py [--size 256] [--dates 70] [--repeats 3]

The cube is real imagery tiled to ``--size`` pixels: be-flanders-a (the shared cube with the
most haze to find) repeated across the grid, its first ``--dates`` acquisitions. Times
:func:`core.screening.screen_cube` with the haze screen, with and without the pixels around the
haze (:func:`core.screening.haze_nearby`), and the peak of Python's allocations during it
(tracemalloc: numpy's arrays are counted), beside the cube's own size. Medians of
``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.screening import screen_cube

MIB = 2**20


def tiled(size: int, dates: int) -> xr.Dataset:
    cube = read_cube(Settings.from_env().cubes_dir / "be-flanders-a_2017-2018.nc")
    cube = cube.isel(time_s2=slice(0, dates))
    h, w = cube.sizes["y"], cube.sizes["x"]
    reps = (-(-size // h), -(-size // w))
    s2 = np.tile(cube["s2"].values, (1, 1, *reps))[..., :size, :size]
    valid = np.tile(cube["valid"].values, (1, *reps))[..., :size, :size]
    step_y = float(cube["y"].values[1] - cube["y"].values[0])
    step_x = float(cube["x"].values[1] - cube["x"].values[0])
    coords = {
        "time_s2": cube["time_s2"].values,
        "band": cube["band"].values,
        "y": cube["y"].values[0] + step_y * np.arange(size),
        "x": cube["x"].values[0] + step_x * np.arange(size),
    }
    return xr.Dataset(
        {
            "s2": (("time_s2", "band", "y", "x"), s2),
            "valid": (("time_s2", "y", "x"), valid),
        },
        coords=coords,
        attrs=dict(cube.attrs),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dates", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cube = tiled(args.size, args.dates)
    own = (cube["s2"].nbytes + cube["valid"].nbytes) / MIB
    print(
        f"# python benchmarks/screen_time.py --size {args.size} --dates {args.dates} "
        f"--repeats {args.repeats}: be-flanders-a tiled, {cube.sizes['time_s2']} dates, "
        f"cube {own:.0f} MiB"
    )
    for nearby in (False, True):
        seconds, peaks = [], []
        for _ in range(args.repeats):
            tracemalloc.start()
            began = time.perf_counter()
            _, screening = screen_cube(cube, nearby=nearby)
            seconds.append(time.perf_counter() - began)
            peaks.append(tracemalloc.get_traced_memory()[1] / MIB)
            tracemalloc.stop()
        print(
            f"haze screen{' and its surroundings' if nearby else ' alone'}: "
            f"{statistics.median(seconds):.2f} s (runs {', '.join(f'{s:.2f}' for s in seconds)}), "
            f"peak {statistics.median(peaks):.0f} MiB beside the cube; took "
            f"{screening.count:,} of {screening.clear_before:,} clear pixel observations"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
