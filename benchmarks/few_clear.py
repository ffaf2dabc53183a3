"""How the model's curve and its band fare with only a few clear acquisitions in the period,
with the per-field fits gated at :data:`core.model.config.MIN_CLEAR_ACQUISITIONS` (now) and
with them made on any number (before 2026-12-05).

    python benchmarks/few_clear.py [--cube be-flanders-a] [--draws 3] [--kept 1,2,3,4]

The cube: a 32 px crop (rows and columns 16-48) of be-flanders-a over 2018-03-01 to
2018-06-30, the period review 9 found the defect on. Its acquisitions over 90 % clear are the
candidates; each draw keeps the clear pixels of ``kept`` of them, picked at random (seeded), and
flags every other acquisition cloudy. The model reconstructs the field's daily NDVI curve over
the whole crop with the app's model settings (K = 8, tuned 50 steps, the band and the blend
fitted on the field, the haze screen). Scored on the candidates it hid: the field-mean NDVI of
their clear pixels in the original cube against the curve that day (absolute error), whether
it lies inside the curve's p10-p90, and the band's width. ``gated``: as the product does now
(under :data:`MIN_CLEAR_ACQUISITIONS` acquisitions with clear pixels, neither tuned nor
fitted); ``fits on any``: the gate set to 1, as before.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.curve import ndvi_curve
from core.indices import ndvi
from core.model import inference
from core.model.config import MIN_CLEAR_ACQUISITIONS
from core.reconstruct import ReconstructOptions
from core.season import DEFAULT_ADAPT_STEPS
from core.timeline import calendar_day

START, END = "2018-03-01", "2018-06-30"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cube", default="be-flanders-a")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--kept", default="1,2,3,4")
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = next(Settings.from_env().cubes_dir.glob(f"{args.cube}*.nc"))
    cube = read_cube(path).isel(y=slice(16, 48), x=slice(16, 48))
    cube = cube.sel(time_s2=slice(START, END), time_s1=slice(START, END))
    valid = cube["valid"].values.astype(bool)
    truth = ndvi(cube["s2"].values)
    candidates = np.flatnonzero(valid.mean(axis=(1, 2)) > 0.9)
    days = calendar_day(cube["time_s2"].values)
    print(f"{path.stem} rows/cols 16-48, {START} to {END}: {cube.sizes['time_s2']} acquisitions,")
    print(f"{candidates.size} over 90 % clear: {', '.join(str(days[i]) for i in candidates)}")
    options = ReconstructOptions(
        samples=8, adapt_steps=DEFAULT_ADAPT_STEPS, calibrate_field=True, screen_haze=True
    )
    print(f"{'kept':>4} {'fits':<11} {'draw':>4} {'frames':>6} {'MAE':>6} {'held':>5} {'width':>6}")
    rows = []
    for kept in (int(k) for k in args.kept.split(",")):
        for draw in range(args.draws):
            pick = np.random.default_rng(100 * kept + draw).choice(candidates, kept, replace=False)
            few = np.zeros_like(valid)
            few[pick] = valid[pick]
            cloudy = cube.assign(valid=cube["valid"].copy(data=few.astype(np.uint8)))
            scored = [i for i in candidates if i not in pick]
            for gate in ("gated", "fits on any") if kept < MIN_CLEAR_ACQUISITIONS else ("gated",):
                inference.MIN_CLEAR_ACQUISITIONS = MIN_CLEAR_ACQUISITIONS if gate == "gated" else 1
                inference.clear_field_cache()
                curve = ndvi_curve(cloudy, START, END, method="model", options=options)
                curve = curve.set_index(calendar_day(curve["date"].to_numpy()))
                err, held, width = [], [], []
                for i in scored:
                    true = float(np.nanmean(np.where(valid[i], truth[i], np.nan)))
                    row = curve.loc[days[i]]
                    err.append(abs(row["ndvi"] - true))
                    held.append(row["ndvi_p10"] - 1e-3 <= true <= row["ndvi_p90"] + 1e-3)
                    width.append(row["ndvi_p90"] - row["ndvi_p10"])
                rows.append((kept, gate, np.mean(err), np.mean(held), np.mean(width)))
                print(
                    f"{kept:>4} {gate:<11} {draw:>4} {len(scored):>6} {np.mean(err):>6.3f} "
                    f"{np.mean(held):>5.2f} {np.mean(width):>6.3f}",
                    flush=True,
                )
    inference.MIN_CLEAR_ACQUISITIONS = MIN_CLEAR_ACQUISITIONS
    print("\nmeans over the draws")
    for kept, gate in dict.fromkeys((r[0], r[1]) for r in rows):
        sel = np.array([r[2:] for r in rows if (r[0], r[1]) == (kept, gate)])
        mae, held, width = sel.mean(axis=0)
        print(f"{kept:>4} {gate:<11} MAE {mae:.3f}  held {held:.2f}  width {width:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
