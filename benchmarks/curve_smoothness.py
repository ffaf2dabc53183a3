"""How smooth the daily NDVI curve is, per method and smoothing, on every shared cube.

    python benchmarks/curve_smoothness.py [--cubes-dir ../shared/data/cubes] [--days 240]
        [--smooth-days 0,2] [--threads 2]

The curve is the app's (:func:`core.curve.ndvi_curve`, every day, the app's model settings:
K = 8, the field blend, the band fitted on the field) over ``--days`` days from each cube's
first S2 acquisition. Per cube and method it prints:

- ``d2``: the mean |second difference| of the field-mean NDVI from day to day (linear
  interpolation's comes only from its kinks at acquisitions);
- ``turns``: how often the curve changes direction (a local minimum or maximum), per 30 days:
  what a phenology reading (green-up, peak, senescence dates) trips over;
- ``band``: the mean width of the curve's p10-p90 band (model only);
- ``s``: the curve's wall time.

``--smooth-days``: the model's ``ReconstructOptions.smooth_days`` values to compare (0: the
network's own estimate at every day).
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
from core.curve import ndvi_curve
from core.errors import InputError
from core.model.inference import clear_field_cache
from core.reconstruct import ReconstructOptions
from core.timeline import calendar_day


def turns_per_30_days(values: np.ndarray) -> float:
    """Local extrema of a daily series per 30 days (flat steps do not count)."""
    step = np.diff(values)
    step = step[step != 0]
    changes = np.count_nonzero(np.diff(np.sign(step)) != 0)
    return 30.0 * changes / max(values.size - 1, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes-dir", type=Path, default=Settings.from_env().cubes_dir)
    parser.add_argument("--days", type=int, default=240)
    parser.add_argument("--smooth-days", default="0,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, help="the model's (default: the shipped one)")
    parser.add_argument(
        "--cube", action="append", default=[], help="only these cubes (names; default: all)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spacings = [int(a) for a in args.smooth_days.split(",")]
    runs = [("linear", ReconstructOptions()), ("whittaker", ReconstructOptions())]
    runs += [
        (
            f"model h={h}",
            ReconstructOptions(
                samples=8, calibrate_field=True, smooth_days=h, checkpoint=args.checkpoint
            ),
        )
        for h in spacings
    ]
    print(f"daily NDVI curve, first {args.days} days of each cube")
    header = f"{'days':>4s} {'d2':>7s} {'turns':>6s} {'band':>6s} {'s':>6s}"
    print(f"{'cube':26s} {'method':11s} {header}")
    totals: dict[str, list[tuple[float, float]]] = {}
    for path in sorted(args.cubes_dir.glob("*.nc")):
        if args.cube and path.stem not in args.cube:
            continue
        cube = read_cube(path)
        acquired = calendar_day(cube["time_s2"].values)
        last = min(acquired[-1], acquired[0] + np.timedelta64(args.days - 1, "D"))
        for name, options in runs:
            clear_field_cache()
            began = time.perf_counter()
            method = name.split()[0]
            try:
                curve = ndvi_curve(cube, acquired[0], last, method=method, options=options)
            except InputError as error:  # a cube without red or NIR: no NDVI curve
                print(f"{path.stem:26s} skipped: {error}")
                break
            seconds = time.perf_counter() - began
            ndvi = curve["ndvi"].to_numpy(dtype=float)
            ndvi = ndvi[np.isfinite(ndvi)]
            d2 = float(np.mean(np.abs(np.diff(ndvi, 2))))
            turns = turns_per_30_days(ndvi)
            width = (curve["ndvi_p90"] - curve["ndvi_p10"]).to_numpy(dtype=float)
            band = f"{np.nanmean(width):6.3f}" if np.isfinite(width).any() else f"{'-':>6s}"
            totals.setdefault(name, []).append((d2, turns))
            print(
                f"{path.stem:26s} {name:11s} {ndvi.size:4d} {d2:7.4f} {turns:6.2f} "
                f"{band} {seconds:6.1f}",
                flush=True,
            )
    print("\nmedian over the cubes")
    for name, rows in totals.items():
        d2s, turns = zip(*rows, strict=True)
        print(f"{name:11s} d2 {np.median(d2s):.4f}  turns/30 d {np.median(turns):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
