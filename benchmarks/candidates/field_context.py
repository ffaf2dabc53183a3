"""Does more ground around a small field lower the model's error on the field's own pixels?

    python benchmarks/candidates/field_context.py [--seeds 0,1] [--windows 4] [--size 10]
        [--context 16] [--tight 2] [--cube NAME ...] [--threads 2]

The rule this answers was written before it ran: ``field_context_rule.txt`` beside this file.
Square "fields" of ``--size`` px are cut at random positions of each held-out cube. For each,
the yardstick's tasks (``core.evaluate.plan_tasks``) are drawn and hidden on the context cube
(the field plus ``--context`` px each side); the tight cube (the field plus ``--tight`` px, as
the app fetches: 20 m) is cut from the same degraded cube, so both hide exactly the same pixels
inside the field. The model (the app's estimate: tuned 50 steps, field blend, K = 1) runs on
both; linear and Whittaker (pixel by pixel: the same either way) on the tight one. Printed: MAE
over the field's hidden clear pixels, per window and summed over the windows, per task.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import Settings
from core.cube import bands_present, read_cube
from core.evaluate import Protocol, hide, plan_tasks
from core.reconstruct import ReconstructOptions, reconstruct
from core.timeline import calendar_day

HELD_OUT = ("be-flanders-c_2018-2019", "hu-alfold_2021")
TASKS = ("missing", "cloud", "gap")
VARIANTS = ("model tight", "model context", "linear", "whittaker")


@dataclass
class Sums:
    """Absolute errors and counts per (task, variant), summed over windows."""

    error: dict[tuple[str, str], float]
    count: dict[tuple[str, str], int]

    def add(self, task: str, variant: str, error: float, count: int) -> None:
        key = (task, variant)
        self.error[key] = self.error.get(key, 0.0) + error
        self.count[key] = self.count.get(key, 0) + count

    def mae(self, task: str, variant: str) -> float:
        count = self.count.get((task, variant), 0)
        return self.error.get((task, variant), 0.0) / count if count else float("nan")


def window_errors(
    cube: xr.Dataset,
    name: str,
    origin: tuple[int, int],
    size: int,
    context: int,
    tight: int,
    seed: int,
) -> dict[tuple[str, str], tuple[float, int]]:
    """(task, variant) -> (sum of absolute errors, values) over the field's hidden pixels."""
    y0, x0 = origin
    outer = cube.isel(
        y=slice(y0 - context, y0 + size + context), x=slice(x0 - context, x0 + size + context)
    )
    inner = {"y": slice(context - tight, context + size + tight)}
    inner["x"] = inner["y"]
    field = (slice(context, context + size), slice(context, context + size))
    field_in_tight = (slice(tight, tight + size), slice(tight, tight + size))
    plan = plan_tasks(outer, f"{name}@{y0},{x0}", Protocol(seed=seed))
    present = bands_present(outer)
    valid = outer["valid"].values.astype(bool)
    truth_all = outer["s2"].values
    out: dict[tuple[str, str], tuple[float, int]] = {}
    runs = [[s for s in (plan.missing, plan.cloud) if s.applicable]]
    runs.append([plan.gap] if plan.gap.applicable else [])
    for task_sets in runs:
        if not task_sets:
            continue
        hidden = np.logical_or.reduce([s.hidden for s in task_sets])
        degraded = hide(outer, hidden, Protocol(seed=seed))
        frames = sorted({f for s in task_sets for f in s.frames})
        query = calendar_day(outer["time_s2"].values[frames]).astype("datetime64[ns]")
        model = ReconstructOptions(samples=1, blend_field=True, adapt_steps=50, seed=seed)
        results = {
            "model tight": (reconstruct(degraded.isel(inner), query, "model", model), True),
            "model context": (reconstruct(degraded, query, "model", model), False),
            "linear": (reconstruct(degraded.isel(inner), query, "linear"), True),
            "whittaker": (reconstruct(degraded.isel(inner), query, "whittaker"), True),
        }
        for variant, (result, is_tight) in results.items():
            rows = np.searchsorted(
                calendar_day(result["time"].values), calendar_day(outer["time_s2"].values)
            )
            where = field_in_tight if is_tight else field
            for task in task_sets:
                error, count = 0.0, 0
                for f in task.frames:
                    scored = (task.hidden[f] & valid[f])[field]
                    pred = result["s2"].values[rows[f]][present][:, where[0], where[1]]
                    truth = truth_all[f][present][:, field[0], field[1]]
                    diff = np.abs(pred - truth)[:, scored]
                    error += float(diff.astype(np.float64).sum())
                    count += int(diff.size)
                out[(task.task, variant)] = (error, count)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--tight", type=int, default=2)
    parser.add_argument("--cube", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Settings.from_env().cubes_dir
    seeds = [int(s) for s in args.seeds.split(",")]
    sums = Sums({}, {})
    print(
        f"fields of {args.size} px; tight cube +{args.tight} px, context cube +{args.context} px"
        " each side; MAE over the field's hidden clear pixels"
    )
    print(
        f"{'cube':26s} {'seed':>4s} {'window':>8s} {'task':8s} "
        + " ".join(f"{v:>13s}" for v in VARIANTS)
        + "     s"
    )
    for name in args.cube or HELD_OUT:
        cube = read_cube(folder / f"{name}.nc")
        height, width = cube.sizes["y"], cube.sizes["x"]
        low, high = args.context, min(height, width) - args.size - args.context
        if high < low:
            raise SystemExit(f"{name} is too small for these windows.")
        for seed in seeds:
            rng = np.random.default_rng([seed, len(name), args.size])
            for _ in range(args.windows):
                origin = (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))
                began = time.perf_counter()
                errors = window_errors(
                    cube, name, origin, args.size, args.context, args.tight, seed
                )
                seconds = time.perf_counter() - began
                for task in TASKS:
                    if (task, VARIANTS[0]) not in errors:
                        continue
                    maes = []
                    for variant in VARIANTS:
                        error, count = errors[(task, variant)]
                        sums.add(task, variant, error, count)
                        maes.append(error / count if count else float("nan"))
                    print(
                        f"{name:26s} {seed:4d} {origin[0]:3d},{origin[1]:3d}  {task:8s} "
                        + " ".join(f"{m:13.4f}" for m in maes)
                        + f" {seconds:5.0f}",
                        flush=True,
                    )
    print("\nsummed over the windows (MAE)")
    for task in TASKS:
        tight, context = sums.mae(task, "model tight"), sums.mae(task, "model context")
        baseline = min(sums.mae(task, "linear"), sums.mae(task, "whittaker"))
        print(
            f"{task:8s} tight {tight:.4f}  context {context:.4f}  change {context / tight - 1:+.1%}"
            f"  better baseline {baseline:.4f}  ratios {tight / baseline:.3f} -> "
            f"{context / baseline:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
