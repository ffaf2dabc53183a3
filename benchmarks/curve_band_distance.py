"""The NDVI curve's band with one factor per field against one factor per distance to clear data.

    python benchmarks/curve_band_distance.py [--seeds 0-9] [--cube NAME ...] [--json OUT.json]

The curve's band is the field mean of the pixels' NDVI p10-p90, narrowed by a factor fitted on
the field's own hidden frames (``core.model.calibration.fit_field_ndvi_scale``). Since
2026-12-05 the model also fits that factor per bucket of a frame's days to clear data (<= 8,
8-20, > 20; ``fit_field_ndvi_scale_by_distance``), and the curve takes the factor of each day's
distance (``core.curve.band_days``, ``band_scale``: in steps until the second rule,
``curve_band_line_rule.txt``, then in a line between the buckets). This script runs the
yardstick (``core.evaluate``, one seed after another, the app's settings: K = 8, the band fitted
on the field, the field blend, tuned 50 steps, the haze screen) on each cube with the model, and
scores every scored frame's true field-mean NDVI (its hidden clear pixels' mean) against both
bands, made from the same reconstruction: the one the yardstick scores (by distance) and the
field's one factor. It prints per task and per bucket of the frame's distance the frames, how
many of them each band holds, its mean width and its mean interval score (width + 10 x a miss's
distance outside; lower is better), pooled over the seeds. Default cube: hu-alfold, the only
held-out cube with red and NIR (be-flanders-c has no red). Nothing is chosen on this: the rules
it answers are ``benchmarks/candidates/curve_band_distance_rule.txt`` and
``curve_band_line_rule.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core.evaluate
from benchmarks.seed_spread import parse_seeds
from core.config import Settings
from core.cube import read_cube
from core.evaluate import Protocol, evaluate_cube
from core.model.blend import DISTANCE_EDGES_DAYS, distance_bucket
from core.reconstruct import (
    FIELD_NDVI_SCALE_ATTR,
    FIELD_NDVI_SCALE_BY_DISTANCE_ATTR,
    ReconstructOptions,
)

BUCKETS = ("<= 8 d", "8-20 d", "> 20 d")
BANDS = ("one factor", "by distance")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--cube", action="append", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.cube or ["hu-alfold_2021"]
    cubes_dir = Settings.from_env().cubes_dir
    options = ReconstructOptions(
        samples=8, calibrate_field=True, blend_field=True, adapt_steps=50, screen_haze=True
    )
    original = core.evaluate.field_ndvi_scores
    calls: list[dict] = []

    def recording(truth, result, frames, rows, scored, frame_days=None):
        """The yardstick's own figures, and each frame scored against both bands."""
        per_frame = []
        for i, (f, r) in enumerate(zip(frames, rows, strict=True)):
            days = None if frame_days is None else frame_days[i : i + 1]
            both = [original(truth, result, [f], [r], scored, d) for d in (None, days)]
            if both[0]:
                per_frame.append(
                    {
                        "days": None if days is None else float(days[0]),
                        **{
                            band: {k: s[k] for k in ("field_ndvi_coverage", "field_ndvi_band",
                                                     "field_ndvi_interval_score")}
                            for band, s in zip(BANDS, both, strict=True)
                        },
                    }
                )  # fmt: skip
        calls.append(
            {
                "frames": per_frame,
                "factor": result.attrs.get(FIELD_NDVI_SCALE_ATTR),
                "factors": result.attrs.get(FIELD_NDVI_SCALE_BY_DISTANCE_ATTR),
            }
        )
        return original(truth, result, frames, rows, scored, frame_days)

    core.evaluate.field_ndvi_scores = recording
    records: list[dict] = []
    print(f"cubes: {', '.join(names)}; the app's settings; seeds {args.seeds}")
    for seed in parse_seeds(args.seeds):
        for name in names:
            began = time.perf_counter()
            cube = read_cube(cubes_dir / f"{name}.nc")
            calls.clear()
            _, rows = evaluate_cube(name, cube, ["model"], Protocol(seed=seed), options)
            scored_rows = [row for row in rows if row.method == "model" and row.status == "ok"]
            if len(scored_rows) != len(calls):
                raise SystemExit(f"{name} seed {seed}: {len(calls)} scorings, {len(rows)} rows")
            for row, call in zip(scored_rows, calls, strict=True):
                got = row.scores.field_ndvi_interval_score
                mine = [fr["by distance"]["field_ndvi_interval_score"] for fr in call["frames"]]
                if got is not None and not np.isclose(got, np.mean(mine)):
                    raise SystemExit(f"{name} seed {seed} {row.task}: not the yardstick's figure")
                for fr in call["frames"]:
                    records.append({"seed": seed, "cube": name, "task": row.task, **fr})
                factor, factors = call["factor"], call["factors"]
                days = [round(fr["days"], 1) for fr in call["frames"] if fr["days"] is not None]
                print(
                    f"seed {seed} {name} {row.task:8s} frames {len(call['frames']):2d} "
                    f"factor {None if factor is None else round(float(factor), 3)} "
                    f"by distance {None if factors is None else np.round(factors, 3).tolist()} "
                    f"frame days {days}"
                )
            print(f"  ({time.perf_counter() - began:.0f} s)", flush=True)
    summary = summarise(records)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"cubes": names, "seeds": args.seeds, "frames": records,
                        "summary": summary}, indent=1) + "\n"
        )  # fmt: skip
        print(f"wrote {args.json}")
    return 0


def summarise(records: list[dict]) -> dict[str, dict[str, object]]:
    """Per task, per distance bucket and over all: frames, and per band the frames held, mean
    width and mean interval score."""
    groups: dict[str, list[dict]] = {"all": records}
    for task in dict.fromkeys(r["task"] for r in records):
        groups[task] = [r for r in records if r["task"] == task]
    days = np.array([np.nan if r["days"] is None else r["days"] for r in records])
    bucket = distance_bucket(days)
    for k, label in enumerate(BUCKETS):
        groups[label] = [r for r, b in zip(records, bucket, strict=True) if b == k]
    print(
        f"\npooled over the seeds; buckets of a frame's days to clear data "
        f"(edges {DISTANCE_EDGES_DAYS}); per band: held / frames, mean width, mean interval score"
    )
    print(f"{'group':10s} {'frames':>6s}  " + "  ".join(f"{b:>30s}" for b in BANDS))
    out: dict[str, dict[str, object]] = {}
    for label, group in groups.items():
        if not group:
            continue
        out[label] = {"frames": len(group)}
        cells = []
        for band in BANDS:
            held = int(sum(r[band]["field_ndvi_coverage"] for r in group))
            width = float(np.mean([r[band]["field_ndvi_band"] for r in group]))
            score = float(np.mean([r[band]["field_ndvi_interval_score"] for r in group]))
            out[label][band] = {"held": held, "width": width, "interval_score": score}
            cells.append(f"{held:4d} ({held / len(group):.2f})  {width:.3f}  IS {score:.3f}")
        print(f"{label:10s} {len(group):6d}  " + "  ".join(f"{c:>30s}" for c in cells))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
