"""Where the long gap's error lies: per band, linear / Whittaker / the model with the app's
settings, one held-out cube, one draw per seed.

    python benchmarks/gap_bands.py [--cube hu-alfold_2021] [--seeds 0-3] [--threads 2]

The yardstick (``core.evaluate``) on the one cube, with the same draws as the two-cube
yardstick's for it (a cube's draws come from the seed and its name), the app's model settings
(K = 8, the field blend, the band fitted on the field, tuned 50 steps). Prints the gap task's
reflectance MAE per band and NDVI MAE of each method, and which baseline the draw favours.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.seed_spread import parse_seeds
from core.config import Settings
from core.cube import read_cube
from core.evaluate import Protocol, evaluate
from core.reconstruct import ReconstructOptions

METHODS = ("linear", "whittaker", "model")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cube", default="hu-alfold_2021")
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cube = read_cube(Settings.from_env().cubes_dir / f"{args.cube}.nc")
    options = ReconstructOptions(samples=8, calibrate_field=True, blend_field=True, adapt_steps=50)
    for seed in parse_seeds(args.seeds):
        began = time.perf_counter()
        evaluation = evaluate([(args.cube, cube)], list(METHODS), Protocol(seed=seed), options)
        rows = {r.method: r.scores for r in evaluation.rows if r.task == "gap" and r.scores}
        if set(rows) != set(METHODS):
            print(f"seed {seed}: no long gap scored on {args.cube}")
            continue
        bands = [b.band for b in rows["linear"].bands]
        seconds = time.perf_counter() - began
        print(f"seed {seed} ({seconds:.0f} s), gap frames {rows['linear'].n_frames}")
        print(f"  {'method':10s} {'MAE':>7s} " + " ".join(f"{b:>7s}" for b in bands) + "    NDVI")
        for method in METHODS:
            scores = rows[method]
            per_band = " ".join(f"{b.mae:7.4f}" for b in scores.bands)
            ndvi = f"{scores.ndvi_mae:7.4f}" if scores.ndvi_mae is not None else "      -"
            print(f"  {method:10s} {scores.mae:7.4f} {per_band} {ndvi}")
        best = min(("linear", "whittaker"), key=lambda m: rows[m].mae)
        print(f"  better baseline: {best}; model / it: {rows['model'].mae / rows[best].mae:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
