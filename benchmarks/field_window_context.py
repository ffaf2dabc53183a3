"""Does reconstructing a field from its own window (bounding box + 2 px, what ``ndvi`` does on a
cube of a larger area since 2026-12-06, and what the app fetches) cost accuracy against
reconstructing it from the whole cube (what ``ndvi`` did before)?

For each held-out cube and a few square fields placed at random on it (seeded), the field's
clear pixels are hidden on a quarter of its clear acquisitions (chosen at random), both ways
reconstruct those dates with the model (the app's per-field blend, no tuning), and the MAE on
the hidden clear pixels is compared. Nothing is tuned to this; one run, printed.

    python benchmarks/field_window_context.py [--fields 4] [--size 16] [--seed 0] [--margin 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from core.config import Settings
from core.cube import read_cube
from core.curve import field_window
from core.reconstruct import ReconstructOptions, reconstruct

HELD_OUT = ("be-flanders-c_2018-2019.nc", "hu-alfold_2021.nc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=int, default=2, help="px around the field's box")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    cubes = Settings.from_env().cubes_dir
    options = ReconstructOptions(samples=1, seed=args.seed)
    print("cube                      field   hidden   whole-cube MAE   window MAE   window/whole")
    sums = {"whole": 0.0, "window": 0.0, "n": 0}
    for name in HELD_OUT:
        cube = read_cube(cubes / name)
        height, width = cube.sizes["y"], cube.sizes["x"]
        for k in range(args.fields):
            r0 = int(rng.integers(0, height - args.size))
            c0 = int(rng.integers(0, width - args.size))
            mask = np.zeros((height, width), bool)
            mask[r0 : r0 + args.size, c0 : c0 + args.size] = True
            valid = cube["valid"].values.astype(bool)
            clear_dates = np.flatnonzero(valid[:, mask].mean(axis=1) > 0.5)
            if clear_dates.size < 8:
                continue
            hidden = np.sort(rng.choice(clear_dates, clear_dates.size // 4, replace=False))
            masked = cube.copy(deep=True)
            for t in hidden:
                masked["valid"].values[t][mask] = 0
            truth = cube["s2"].values[hidden]  # (D, B, H, W)
            scored = valid[hidden] & mask[None]  # clear field pixels hidden
            dates = cube["time_s2"].values[hidden]
            maes = {}
            started = time.monotonic()
            whole = reconstruct(masked, dates, "model", options)["s2"].values
            window_cube, _ = field_window(masked, mask, args.margin)
            part = reconstruct(window_cube, dates, "model", options)["s2"].values
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            # the window is a plain slice of the cube: placed back by its coordinates
            y0 = int(np.flatnonzero(cube["y"].values == window_cube["y"].values[0])[0])
            x0 = int(np.flatnonzero(cube["x"].values == window_cube["x"].values[0])[0])
            full = np.full_like(whole, np.nan)
            full[:, :, y0 : y0 + part.shape[2], x0 : x0 + part.shape[3]] = part
            for label, estimate in (("whole", whole), ("window", full)):
                error = np.abs(estimate - truth).transpose(0, 2, 3, 1)[scored]
                maes[label] = float(np.nanmean(error))
            n = int(scored.sum())
            sums["whole"] += maes["whole"] * n
            sums["window"] += maes["window"] * n
            sums["n"] += n
            print(
                f"{name[:24]:25s} {k:5d} {hidden.size:4d} fr  {maes['whole']:14.4f}"
                f"   {maes['window']:10.4f}   {maes['window'] / maes['whole']:10.3f}"
                f"   ({time.monotonic() - started:.0f} s; rows {rows[0]}-{rows[-1]},"
                f" cols {cols[0]}-{cols[-1]})"
            )
    if sums["n"]:
        whole, window = sums["whole"] / sums["n"], sums["window"] / sums["n"]
        print(
            f"pooled over {sums['n']:,} hidden pixels: whole cube {whole:.4f}, window "
            f"{window:.4f}, ratio {window / whole:.3f}"
        )


if __name__ == "__main__":
    main()
