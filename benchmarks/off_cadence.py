"""How well each method reconstructs a date that lies off the acquisitions' cadence.

    python benchmarks/off_cadence.py orbit [--cube CUBE ...] [--smooth-days 0,2]
    python benchmarks/off_cadence.py moved [--cube CUBE ...] [--frames 10] [--smooth-days 0,2]
        [--blend-field] [--threads 2]

Sentinel-2 revisits a place every 5 days, so a cube's acquisitions lie a whole number of 5 days
apart per orbit; the model is trained on hidden frames, which therefore all lie on the cadence
of the cube's orbits, and so does every frame the yardstick hides. An anytime query (and most
days of the daily curve) can lie off it. Two tests:

``orbit`` (real truth off the cadence; cubes seen from two orbits, 2 or 3 days apart, such as
be-flanders-a and be-flanders-c): every acquisition of one orbit leaves the cube, and the
dates of that orbit's clear frames (>= 95 % of the best frame's clear share) are asked for:
they lie 2 or 3 days off the remaining orbit's cadence. Each orbit in turn; MAE over the
frames' clear pixels, per orbit left out, for linear, Whittaker and the model at each
``--smooth-days``, with the app's model settings (the field blend on; ``--band``: also K = 8
with the band fitted on the field, and the share of the truth inside p10-p90).

``moved`` (any cube): it drops a clear frame at day d (up to ``--frames`` per cube, evenly
spread, none of the first or last three), moves every other acquisition, S2 and S1, k days
later, and asks for day d. For k = 1-4 the date lies off the moved cadence; k = 0 is the
yardstick's case. The truth is the dropped frame; the context is mislabelled by k days, alike
for every method, so the baselines show what that alone costs (a confound: it weighs most on
whatever leans on the nearest observations). Prints MAE per k for linear, Whittaker and the
model at each ``--smooth-days`` (``ReconstructOptions.smooth_days``; 0: the network at the
date itself), then their mean over k = 1-4. The model runs without the field blend unless
``--blend-field`` (the blend refits on every moved cube, which takes seconds each).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.model.inference import clear_field_cache
from core.reconstruct import ReconstructOptions, reconstruct
from core.timeline import calendar_day

SHIFTS = (0, 1, 2, 3, 4)
DEFAULT_CUBES = (
    "be-flanders-a_2017-2018",
    "es-field_2019",
    "it-bolzano_2022-06",
    "pt-santarem_2021",
    "tz-arusha_2019-2021",
)


TWO_ORBIT_CUBES = ("be-flanders-a_2017-2018",)


def clear_frames(cube) -> np.ndarray:
    """(T,) bool: the frame is clear over >= 95 % of what the clearest frame covers (a field's
    frames never cover the pixels outside it)."""
    share = cube["valid"].values.mean(axis=(1, 2))
    return share / max(share.max(), 1e-9) > 0.95


def cube_path(name: str, folder: Path) -> Path:
    return Path(name) if name.endswith(".nc") else folder / f"{name}.nc"


def orbit_test(
    paths: list[Path], smooth_days: str, band: bool = False, checkpoint: Path | None = None
) -> int:
    """The ``orbit`` test (module docstring); prints a table. ``band``: the model with the
    app's band (K = 8, fitted on the field), and the share of the truth inside its p10-p90.
    ``checkpoint``: the model's (None: the shipped one)."""
    model = ReconstructOptions(checkpoint=checkpoint)
    if band:
        model = dataclasses.replace(model, samples=8, calibrate_field=True)
    runs = [("linear", ReconstructOptions()), ("whittaker", ReconstructOptions())]
    runs += [
        (f"model h={h}", dataclasses.replace(model, smooth_days=h))
        for h in (int(v) for v in smooth_days.split(","))
    ]
    print("one orbit left out, its clear frames' dates asked for; MAE (model: field blend on)")
    if band:
        print("model rows: K = 8, band fitted on the field; cov = share of truth in p10-p90")
    print(f"{'cube':26s} {'left out':>8s} {'frames':>6s} " + " ".join(f"{n:>11s}" for n, _ in runs))
    totals: dict[str, list[float]] = {name: [] for name, _ in runs}
    for path in paths:
        cube = read_cube(path)
        day = calendar_day(cube["time_s2"].values).astype(np.int64)
        clear = clear_frames(cube)
        for phase in np.unique(day % 5):
            out = day % 5 == phase
            asked = np.flatnonzero(out & clear)
            kept = cube.isel(time_s2=np.flatnonzero(~out))
            if asked.size == 0 or kept.sizes["time_s2"] < 4:
                continue
            first, last = day[~out][[0, -1]]
            asked = asked[(day[asked] > first) & (day[asked] < last)]
            truth = cube["s2"].values[asked]
            valid = cube["valid"].values[asked].astype(bool)[:, None] & np.isfinite(truth)
            query = cube["time_s2"].values[asked]
            row, covers = [], []
            for name, options in runs:
                clear_field_cache()
                out = reconstruct(kept, query, name.split()[0], options)
                got = out["s2"].values
                mae = float(np.nanmean(np.abs(got - truth)[valid]))
                totals[name].append(mae)
                row.append(f"{mae:11.4f}")
                if band and name.startswith("model"):
                    low, high = out["s2_p10"].values, out["s2_p90"].values
                    inside = (truth >= low) & (truth <= high)
                    covers.append(f"{name} cov {inside[valid].mean():.2f}")
            line = f"{path.stem:26s} {int(phase):8d} {asked.size:6d} " + " ".join(row)
            print(line + ("   " + ", ".join(covers) if covers else ""), flush=True)
    means = " ".join(f"{np.mean(v):11.4f}" for v in totals.values())
    print(f"{'mean':26s} {'':8s} {'':6s} {means}")
    return 0


def dropped_frames(cube, most: int) -> list[int]:
    """Indices of clear frames to drop: >= 95 % of the best frame's clear share, not among the
    first or last three, evenly spread, at most ``most``."""
    clear = clear_frames(cube)
    usable = [i for i in range(3, cube.sizes["time_s2"] - 3) if clear[i]]
    return usable[:: max(1, len(usable) // most)][:most]


def moved(cube, drop: int, days: int):
    """``cube`` without frame ``drop``, every other acquisition ``days`` days later."""
    rest = cube.isel(time_s2=[j for j in range(cube.sizes["time_s2"]) if j != drop])
    shift = np.timedelta64(days, "D")
    rest = rest.assign_coords(time_s2=rest["time_s2"].values + shift)
    if "time_s1" in rest.coords:
        rest = rest.assign_coords(time_s1=rest["time_s1"].values + shift)
    return rest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", choices=("orbit", "moved"))
    parser.add_argument("--cube", action="append", default=[], help="cube name or file")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--smooth-days", default="0,2")
    parser.add_argument("--blend-field", action="store_true")
    parser.add_argument("--band", action="store_true", help="orbit: the app's band, coverage")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, help="the model's (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Settings.from_env().cubes_dir
    if args.test == "orbit":
        cubes = args.cube or list(TWO_ORBIT_CUBES)
        paths = [cube_path(c, folder) for c in cubes]
        return orbit_test(paths, args.smooth_days, args.band, args.checkpoint)
    paths = [cube_path(c, folder) for c in (args.cube or DEFAULT_CUBES)]
    runs = [("linear", ReconstructOptions()), ("whittaker", ReconstructOptions())]
    runs += [
        (
            f"model h={h}",
            ReconstructOptions(
                smooth_days=h, blend_field=args.blend_field, checkpoint=args.checkpoint
            ),
        )
        for h in (int(v) for v in args.smooth_days.split(","))
    ]
    print(f"model: field blend {'on' if args.blend_field else 'off'}; MAE by k = {SHIFTS}")
    pooled: dict[str, list[np.ndarray]] = {}
    for path in paths:
        cube = read_cube(path)
        days = calendar_day(cube["time_s2"].values)
        frames = dropped_frames(cube, args.frames)
        errors = {name: np.zeros(len(SHIFTS)) for name, _ in runs}
        began = time.perf_counter()
        for i in frames:
            truth = cube["s2"].values[i]
            clear = cube["valid"].values[i].astype(bool)
            query = np.array([days[i]], "datetime64[ns]") + np.timedelta64(12, "h")
            for k, shift in enumerate(SHIFTS):
                rest = moved(cube, i, shift)
                for name, options in runs:
                    clear_field_cache()
                    got = reconstruct(rest, query, name.split()[0], options)["s2"].values[0]
                    errors[name][k] += np.nanmean(np.abs(got[:, clear] - truth[:, clear]))
        print(f"{path.stem}: {len(frames)} frames, {time.perf_counter() - began:.0f} s")
        for name, total in errors.items():
            mae = total / max(len(frames), 1)
            pooled.setdefault(name, []).append(mae)
            print(f"  {name:10s} {row(mae)}")
    print("mean over the cubes (cube mean)")
    for name, rows in pooled.items():
        mae = np.mean(rows, axis=0)
        print(f"  {name:10s} {row(mae)}")
    return 0


def row(mae: np.ndarray) -> str:
    """MAE per k, then their mean off the cadence (k >= 1)."""
    return " ".join(f"{v:.4f}" for v in mae) + f"   off {mae[1:].mean():.4f}"


if __name__ == "__main__":
    raise SystemExit(main())
