"""The flow head in bfloat16 on the CPU: how much faster, and how far the samples move.

    python benchmarks/flow_bf16.py [--cube NAME ...] [--repeats 3] [--threads 2]

Per cube (training cubes by default; nothing here selects anything):

1. one window's query tokens (the first pass of 60 daily queries), K = 8: the flow head's
   Euler integration (4 and 8 steps) timed in float32 and in bfloat16 from the same noise
   (median of ``--repeats``), and the samples' mean and largest difference, in reflectance;
2. a whole reconstruction with the app's model settings (K = 8, the field blend, the band fitted
   on the field) at 20 dates, once with ``FIELDFLOW_FLOW_BF16=0`` and once with ``=1``: wall
   time and the mean difference of the per-pixel NDVI p10 / p90 and of the curve band's
   edges (field means), next to the band's mean width.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.curve import field_ndvi_band
from core.model.features import REFL_SCALE, select_frames, series_inputs
from core.model.flow import euler_solve
from core.model.inference import (
    cached_checkpoint,
    clear_field_cache,
    frames_unseen,
    plan_passes,
    prepare_series,
    thin_s1,
)
from core.model.network import FLOW_BF16_ENV, cpu_has_native_bf16
from core.reconstruct import ReconstructOptions, reconstruct
from core.timeline import regular_dates


def head_check(cube, repeats: int) -> None:
    checkpoint = cached_checkpoint(None, "cpu")
    model, config = checkpoint.model, checkpoint.config
    first = cube["time_s2"].values[0].astype("datetime64[D]")
    query = np.arange(first, first + np.timedelta64(60, "D")).astype("datetime64[ns]")
    series = prepare_series(cube, query)
    inputs = series_inputs(series.frames, config.smooth_features, config.whittaker_features)
    step = plan_passes(series.acquired, series.query_frame, config.s2_window)[0]
    window = thin_s1(
        select_frames(inputs, step.frames, config.s1_margin_days), config.max_s1_frames
    )
    unseen = frames_unseen(series.acquired[step.frames])
    origin = window.days[0]
    with torch.no_grad():
        features = model.encode(
            torch.as_tensor(window.s2)[None],
            torch.as_tensor(window.days - origin, dtype=torch.float32)[None],
            torch.as_tensor(window.s1)[None],
            torch.as_tensor(window.s1_days - origin, dtype=torch.float32)[None],
            None if unseen is None else torch.as_tensor(unseen)[None],
        )[:, torch.as_tensor(step.targets)]
        rows = features.reshape(-1, features.shape[-1])
        noise = torch.randn(8 * rows.shape[0], 160, generator=torch.Generator().manual_seed(0))
        for steps in (4, 8):
            out, times = {}, {}
            for name, enabled in (("float32", False), ("bfloat16", True)):
                spent = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                        velocity = model.flow_head.velocity_given(rows)
                        out[name] = euler_solve(velocity, noise, steps).float()
                    spent.append(time.perf_counter() - began)
                times[name] = statistics.median(spent)
            diff = (out["float32"] - out["bfloat16"]).abs() / REFL_SCALE
            spread = float(out["float32"].std()) / REFL_SCALE
            print(
                f"  flow head, {noise.shape[0]} residuals x {steps} steps: float32 "
                f"{times['float32']:.2f} s, bfloat16 {times['bfloat16']:.2f} s "
                f"({times['float32'] / times['bfloat16']:.1f} x); samples differ by "
                f"{float(diff.mean()):.5f} on average (max {float(diff.max()):.4f}) reflectance, "
                f"their spread (sd) {spread:.4f}",
                flush=True,
            )


def run_check(cube) -> None:
    times = cube["time_s2"].values
    dates = regular_dates(
        times[0], times[-1], max(1, int((times[-1] - times[0]) / np.timedelta64(1, "D")) // 20)
    )[:20]
    options = ReconstructOptions(samples=8, calibrate_field=True)
    mask = np.isfinite(cube["s2"].values).any(axis=(0, 1))
    results = {}
    for flag in ("0", "1"):
        os.environ[FLOW_BF16_ENV] = flag
        clear_field_cache()
        began = time.perf_counter()
        results[flag] = reconstruct(cube, dates, "model", options)
        spent = time.perf_counter() - began
        print(
            f"  {FLOW_BF16_ENV}={flag}: reconstruction of {dates.size} dates {spent:.1f} s "
            f"({results[flag].attrs.get('model_flow_precision')})",
            flush=True,
        )
    os.environ.pop(FLOW_BF16_ENV)
    a, b = results["0"], results["1"]
    width = np.nanmean(a["ndvi_p90"].values - a["ndvi_p10"].values)
    for name in ("ndvi_p10", "ndvi_p90"):
        d = np.nanmean(np.abs(a[name].values - b[name].values))
        print(f"  per-pixel {name}: mean |difference| {d:.4f} (band mean width {width:.3f})")
    _, lo_a, hi_a = field_ndvi_band(a, mask)
    _, lo_b, hi_b = field_ndvi_band(b, mask)
    print(
        f"  curve band edges: mean |difference| {np.mean(np.abs(lo_a - lo_b)):.4f} / "
        f"{np.mean(np.abs(hi_a - hi_b)):.4f}, width {np.mean(hi_a - lo_a):.3f}"
    )
    same = np.array_equal(a["s2"].values, b["s2"].values, equal_nan=True)
    print(f"  best estimate identical: {same}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cube", action="append", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.cube or ["be-flanders-a_2017-2018.nc", "pt-santarem_2021.nc"]
    print(
        f"native bfloat16 on this CPU: {cpu_has_native_bf16()}; torch {torch.__version__}, "
        f"{args.threads} threads"
    )
    for name in names:
        cube = read_cube(Settings.from_env().cubes_dir / name)
        print(f"{name}: {dict(cube.sizes)}", flush=True)
        head_check(cube, args.repeats)
        run_check(cube)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
