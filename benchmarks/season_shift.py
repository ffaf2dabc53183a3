"""What the day of year is worth to the network, and what a field south of the tropics would lose
if its dates were read by the calendar (README, the seasons south of the tropics).

Usage::

    python benchmarks/season_shift.py [--seeds 0-2] [--adapt-steps N] [--app] [--json OUT.json]

Each held-out cube is scored by the yardstick three ways, with the same draws:

* **as is**;
* **half a year later**: every date (S2 and S1) 182 days on, the place unchanged: the series of
  a field whose season runs half a year from its calendar, read by the calendar. This is what a
  southern field would have met without the rule. The baselines see the same intervals and
  score the same; only the network's day of year moves;
* **moved south**: the same dates 182 days on, and the cube put in the southern hemisphere
  (a UTM cube in the southern zone of the same number, a cube in degrees mirrored about the
  equator), where the rule reads its dates half a year on again: it should score as is.

Printed per cube and pooled: the model's MAE / the better baseline's for each task, summed over
the seeds. ``--app`` scores with the app's settings (8 samples, the field blend and band fitted on
the field; add ``--adapt-steps 50`` for the app's tuning); without it the network and the field
blend as ``python -m core evaluate --methods linear,whittaker,model --samples 8`` does.
Nothing is chosen on this.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seed_spread import BASELINES, HELD_OUT, TASKS, parse_seeds  # beside this script

from core.config import Settings
from core.cube import read_cube
from core.evaluate import POOLED_CUBE, Protocol, evaluate
from core.grid import cube_latitude
from core.reconstruct import ReconstructOptions

HALF_YEAR = np.timedelta64(182, "D")
VARIANTS = ("as is", "half a year later", "moved south")


def later(cube: xr.Dataset) -> xr.Dataset:
    """Every date of ``cube`` half a year on, the place unchanged."""
    cube = cube.assign_coords(time_s2=cube["time_s2"].values + HALF_YEAR)
    if "time_s1" in cube.coords:
        cube = cube.assign_coords(time_s1=cube["time_s1"].values + HALF_YEAR)
    return cube


def moved_south(cube: xr.Dataset) -> xr.Dataset:
    """``cube`` half a year later, put in the southern hemisphere."""
    cube = later(cube).copy()
    crs = str(cube.attrs["crs"]).upper()
    if crs.startswith("EPSG:326"):
        cube.attrs["crs"] = "EPSG:327" + crs[8:]
    elif crs == "EPSG:4326":
        cube = cube.assign_coords(y=cube["y"].values - 2 * float(cube_latitude(cube)))
    else:
        raise SystemExit(f"Cannot move a cube in {crs} south.")
    return cube


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--cube", action="append", default=[], help="cube names (held out)")
    parser.add_argument("--app", action="store_true", help="the app's settings")
    parser.add_argument("--adapt-steps", type=int, default=0, help="per-field tuning steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Settings.from_env().cubes_dir
    names = args.cube or list(HELD_OUT)
    originals = {name: read_cube(folder / f"{name}.nc") for name in names}
    makers = {"as is": lambda c: c, "half a year later": later, "moved south": moved_south}
    for name, cube in originals.items():
        print(
            f"{name}: latitude {cube_latitude(cube):.2f}, moved south "
            f"{cube_latitude(moved_south(cube)):.2f}"
        )
    options = ReconstructOptions(
        samples=8,
        calibrate_field=args.app,
        blend_field=True,
        adapt_steps=args.adapt_steps,
    )
    seeds = parse_seeds(args.seeds)
    # maes[variant][cube][(task, method)] summed over the seeds
    maes: dict[str, dict[str, dict[str, float]]] = {v: {} for v in VARIANTS}
    for seed in seeds:
        for variant in VARIANTS:
            began = time.perf_counter()
            cubes = [(name, makers[variant](cube)) for name, cube in originals.items()]
            evaluation = evaluate(cubes, [*BASELINES, "model"], Protocol(seed=seed), options)
            for row in (*evaluation.rows, *evaluation.pooled):
                if row.scores is None or row.status != "ok":
                    continue
                if row.cube not in (*names, POOLED_CUBE):
                    continue
                key = f"{row.task} {row.method}"
                per_cube = maes[variant].setdefault(row.cube, {})
                per_cube[key] = per_cube.get(key, 0.0) + float(row.scores.mae)
            print(f"seed {seed} {variant:18s} {time.perf_counter() - began:5.0f} s", flush=True)
    settings = (
        f"the app's settings, tuned {args.adapt_steps} steps"
        if args.app
        else "the network and the field blend, 8 samples, untuned"
    )
    print(f"\n{settings}; model MAE / the better baseline's, summed over seeds {args.seeds}")
    print(f"{'cube':25s} {'task':8s} " + " ".join(f"{v:>18s}" for v in VARIANTS))
    table: dict[str, dict[str, list[float]]] = {}
    for cube in (*names, POOLED_CUBE):
        for task in TASKS:
            ratios = []
            for variant in VARIANTS:
                figures = maes[variant].get(cube, {})
                best = min(figures.get(f"{task} {m}", np.inf) for m in BASELINES)
                ratios.append(figures.get(f"{task} model", np.nan) / best)
            table.setdefault(cube, {})[task] = ratios
            change = 100 * (ratios[1] / ratios[0] - 1)
            print(
                f"{cube:25s} {task:8s} "
                + " ".join(f"{r:18.3f}" for r in ratios)
                + f"   later: {change:+.1f} %"
            )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"seeds": seeds, "settings": settings, "ratios": table, "maes": maes})
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
