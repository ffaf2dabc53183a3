"""What per-field calibration of the uncertainty band costs, and how stable its spread is.

    python benchmarks/field_calibration.py [--checkpoint assets/model.pt] [--threads N]
        [--sizes 64,128] [--repeats 3] [--seeds 0,1,2] [--json FILE]

1. Cost: a 64 x 64 px cube of 70 S2 dates built from a real one (``core.bench``), 20 query
   dates, K = 8 samples, the model's default steps (8; 4 with calibration): the median of
   ``--repeats`` timed calls of
   :func:`core.reconstruct.reconstruct` without and with ``calibrate_field`` (the per-field
   cache is emptied before each call, so every call calibrates afresh), per field size.
2. Stability: the spread scale fitted on each cube the checkpoint never saw (its record's
   held-out sites, whole cube), per seed, next to the checkpoint's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bench import DEFAULT_SOURCE, make_bench_cube, query_dates
from core.config import DEFAULT_CHECKPOINT, Settings
from core.cube import read_cube
from core.model.inference import (
    cached_checkpoint,
    clear_field_cache,
    default_steps,
    field_checkpoint,
)
from core.reconstruct import ReconstructOptions, reconstruct


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--sizes", type=_ints, default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    checkpoint = cached_checkpoint(str(args.checkpoint), "cpu")
    plain = ReconstructOptions(samples=args.samples, checkpoint=args.checkpoint, device="cpu")
    fitted = ReconstructOptions(
        samples=args.samples, checkpoint=args.checkpoint, device="cpu", calibrate_field=True
    )
    steps = default_steps(checkpoint, fitted)
    source = read_cube(settings.cubes_dir / DEFAULT_SOURCE)
    out: dict[str, object] = {"threads": torch.get_num_threads(), "cost": [], "scales": []}
    print(
        f"torch threads {torch.get_num_threads()}, K = {args.samples}, "
        f"{default_steps(checkpoint, plain)} steps, {steps} with calibration (the defaults)"
    )
    print("size px | reconstruct s | with calibration s | calibration alone s")
    for size in args.sizes:
        cube = make_bench_cube(source, size, 70)
        query = query_dates(cube, 20)
        times: dict[str, list[float]] = {"plain": [], "fitted": [], "alone": []}
        for _ in range(args.repeats):
            for name, options in (("plain", plain), ("fitted", fitted)):
                clear_field_cache()
                start = time.perf_counter()
                reconstruct(cube, query, "model", options)
                times[name].append(time.perf_counter() - start)
            clear_field_cache()
            start = time.perf_counter()
            field_checkpoint(checkpoint, cube, fitted, steps, "cpu")
            times["alone"].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{size} | {med['plain']:.1f} | {med['fitted']:.1f} | {med['alone']:.1f}")
        out["cost"].append({"size_px": size, **{f"{k}_s": v for k, v in med.items()}})
    print(f"\nspread scale of the checkpoint: {checkpoint.spread_scale:.3f}")
    held_out = sorted(
        p
        for p in settings.cubes_dir.glob("*.nc")
        if p.name.split("_")[0] not in checkpoint.seen_sites
    )
    for path in held_out:
        cube: xr.Dataset = read_cube(path)
        scales = []
        for seed in args.seeds:
            clear_field_cache()
            options = ReconstructOptions(
                samples=args.samples, device="cpu", calibrate_field=True, seed=seed
            )
            scales.append(field_checkpoint(checkpoint, cube, options, steps, "cpu").spread_scale)
        listed = ", ".join(f"seed {s} {v:.3f}" for s, v in zip(args.seeds, scales, strict=True))
        print(f"{path.stem}: {listed}")
        out["scales"].append({"cube": path.stem, "seeds": args.seeds, "scales": scales})
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
