"""What the app's "Make a model for this region" does, outside the page: the demo field's Run
cube (the offline demo, its season), then the button's fine-tuning of a base model on it.

    python benchmarks/region_button.py --base BASE.pt --out NEW.pt [--steps 600] [--runs N]

The Run is the page's (core.season.compute_season on the offline demo cube, the demo's field
and season; linear interpolation, whose cube is the model's); the fine-tuning is the button's
(core.model.tuning.tune_for_region with its defaults: 600 steps of batch 4, the command's
learning rate for fine-tuning, in a process of its own). Prints the Run cube's size, the
training's stages with their times and the new model's summary; score it with
``benchmarks/seed_spread.py --checkpoint NEW.pt``. ``--runs N``: also time N model Runs of the
demo field with the app's defaults (K = 8, 50 tuning steps, the band fitted, the field blend)
before the fine-tuning and N while it trains, as a user of the same server would see them; the
medians are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.demo import demo_cube_path, demo_preset
from core.model.inference import clear_field_cache
from core.model.tuning import REGION_STEPS, RegionTuning, tune_for_region
from core.reconstruct import ReconstructOptions
from core.season import DEFAULT_ADAPT_STEPS, SeasonRequest, compute_season


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=REGION_STEPS)
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    settings = Settings.from_env()
    preset = demo_preset(demo_cube_path(settings))
    request = SeasonRequest(
        field=preset.field, start=preset.start, end=preset.end, cube_path=preset.cube_path
    )
    result = compute_season(request, settings)
    cube = result.cube
    print(
        f"Run cube: {cube.sizes['y']} x {cube.sizes['x']} px, {cube.sizes['time_s2']} S2 and "
        f"{cube.sizes.get('time_s1', 0)} S1 dates, {preset.start} to {preset.end}",
        flush=True,
    )
    began = time.monotonic()
    last: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if not last or last[-1] != stage:
            print(f"{time.monotonic() - began:7.1f} s  {stage}", flush=True)
            last.append(stage)

    model_run = dataclasses.replace(
        request,
        method="model",
        options=ReconstructOptions(
            samples=8, adapt_steps=DEFAULT_ADAPT_STEPS, calibrate_field=True, blend_field=True
        ),
    )
    alone = [_timed_run(model_run, settings) for _ in range(args.runs)]
    tuning = RegionTuning(args.base, args.out, steps=args.steps)
    outcome: list[object] = []
    training = threading.Thread(
        target=lambda: outcome.append(
            tune_for_region(tuning, cube, progress, site=preset.field.name)
        )
    )
    training.start()
    time.sleep(10 if args.runs else 0)  # the command has started and is training
    beside = [_timed_run(model_run, settings) for _ in range(args.runs) if training.is_alive()]
    training.join()
    if not outcome:
        return 1
    tuned = outcome[0]
    if args.runs:
        print(
            f"demo field model Run (app defaults): alone median {statistics.median(alone):.1f} s "
            f"{[round(t, 1) for t in alone]}; while the model trains "
            + (
                f"median {statistics.median(beside):.1f} s {[round(t, 1) for t in beside]}"
                if beside
                else "none finished in time"
            )
        )
    print(f"{tuned.seconds:7.1f} s  saved {args.out}")
    print(tuned.choice.summary())
    for warning in tuned.warnings:
        print(f"warning: {warning}")
    return 0


def _timed_run(request: SeasonRequest, settings: Settings) -> float:
    """Seconds one Run of ``request`` takes, its per-field fits made afresh as a new Run's."""
    clear_field_cache()
    began = time.monotonic()
    compute_season(request, settings)
    return time.monotonic() - began


if __name__ == "__main__":
    raise SystemExit(main())
