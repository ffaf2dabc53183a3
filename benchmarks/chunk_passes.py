"""How an app Run's chunked daily curve compares with reconstructing every day in one call.

    python benchmarks/chunk_passes.py [--cube ../shared/data/cubes/be-flanders-a_2017-2018.nc]
        [--days 176] [--threads 2]

The yardstick scores a daily reconstruction made in one call (``python -m core evaluate
--query-every-days 1``); an app Run makes it in the curve's chunks of days
(:func:`core.curve.curve_chunks`). Prints the trunk passes each chunk size plans
(:func:`core.model.inference.plan_passes`), then, with the app's model settings (K = 8, the
field blend, the band fitted on the field), the time of both and how far the chunked
reconstruction lies from the one-call one (mean |difference| of reflectance and NDVI, and the
largest difference of the field-mean NDVI over the days).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.curve import curve_chunks
from core.model.inference import clear_field_cache, plan_passes, prepare_series
from core.reconstruct import ReconstructOptions, observations, reconstruct
from core.timeline import calendar_day, regular_dates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().cubes_dir / "be-flanders-a_2017-2018.nc"
    parser.add_argument("--cube", type=Path, default=default)
    parser.add_argument("--days", type=int, default=176)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cube = read_cube(args.cube)
    acquired = calendar_day(cube["time_s2"].values)
    n_days = min(args.days, int((acquired[-1] - acquired[0]).astype(int)) + 1)
    last = acquired[0] + np.timedelta64(n_days - 1, "D")
    dates = regular_dates(str(acquired[0]), str(last), 1).astype("datetime64[ns]")
    print(f"{args.cube.name}: {n_days} days from {acquired[0]}")

    observed = observations(cube)
    for size in (8, 20, 24, 40, n_days):
        counts = []
        for lo in range(0, dates.size, size):
            series = prepare_series(observed, dates[lo : lo + size])
            counts.append(len(plan_passes(series.acquired, series.query_frame, 40)))
        print(f"chunks of {size:3d} days: {sum(counts):3d} passes in {len(counts)} calls")

    options = ReconstructOptions(samples=8, calibrate_field=True)
    clear_field_cache()
    began = time.perf_counter()
    whole = reconstruct(cube, dates, "model", options)
    one_call_s = time.perf_counter() - began
    clear_field_cache()
    began = time.perf_counter()
    parts = [
        reconstruct(cube, dates[chunk], "model", options)
        for chunk in curve_chunks(cube, dates.size, options.samples)
    ]
    chunked_s = time.perf_counter() - began
    print(f"time: one call {one_call_s:.1f} s, in {len(parts)} chunks {chunked_s:.1f} s")
    for name in ("s2", "ndvi"):
        chunked = np.concatenate([part[name].values for part in parts])
        gap = np.nanmean(np.abs(chunked - whole[name].values))
        print(f"{name:4s} mean |chunked - one call|: {gap:.4f}")
    field = np.nanmean(np.concatenate([p["ndvi"].values for p in parts]), axis=(1, 2))
    largest = np.nanmax(np.abs(field - np.nanmean(whole["ndvi"].values, axis=(1, 2))))
    print(f"field-mean NDVI, largest |chunked - one call| over the days: {largest:.4f}")
    return 0


if __name__ == "__main__":  # the smoother's worker processes re-import this module
    raise SystemExit(main())
