"""What Sentinel-1, spatial context and the ODE step count do to a trained model (a printout).

    python benchmarks/ablations.py [--checkpoint assets/model.pt] [--cube FILE ...]
        [--samples 8] [--steps 1,2,4,8,16] [--json FILE]

Every variant uses the same trained weights and the yardstick protocol of :mod:`core.evaluate`
on the cubes the checkpoint never saw (default: its record's held-out sites). They measure the
network itself, so the field blend (core.model.blend, the product's default) is off unless
``--blend-field`` is given:

- ``model``: as shipped.
- ``model-no-s1``: the cube's Sentinel-1 removed before reconstruction. Training dropped S1
  from 30 % of its episodes, so an S2-only input is one the weights know.
- ``model-shuffled``: the pixels permuted at random in space (one permutation for every date
  and both sensors) before reconstruction and put back afterwards: each pixel keeps its own
  series, but its neighbours are strangers. The weights never saw such input, so the loss it
  causes is an upper bound on what spatial context contributes, not an exact measure.
- steps: the shipped model with N Euler/Heun steps. The best estimate (the mean head) does not
  depend on N; the samples, hence p10-p90 coverage and CRPS, do. The time column is the median
  of 3 calls on a 64 x 64 px cube of 70 S2 dates (``core.bench``), 20 query dates, K samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bench import make_bench_cube, query_dates
from core.config import DEFAULT_CHECKPOINT, Settings
from core.cube import read_cube
from core.evaluate import (
    POOLED_CUBE,
    Evaluation,
    Protocol,
    evaluate,
    evaluation_to_dict,
)
from core.model.checkpoint import load_checkpoint
from core.model.inference import model_method
from core.reconstruct import METHODS, Prediction, ReconstructOptions, reconstruct

SHUFFLE_SEED = 12345


def model_without_s1(
    observed: xr.Dataset, query: np.ndarray, options: ReconstructOptions
) -> Prediction:
    """The model on the cube with its Sentinel-1 frames removed."""
    if "time_s1" in observed.dims:
        observed = observed.drop_dims("time_s1")
    return model_method(observed, query, options)


def _permute(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    *lead, height, width = values.shape
    return values.reshape(*lead, height * width)[..., order].reshape(*lead, height, width)


def model_shuffled(
    observed: xr.Dataset, query: np.ndarray, options: ReconstructOptions
) -> Prediction:
    """The model on spatially shuffled pixels, put back in place afterwards."""
    height, width = observed.sizes["y"], observed.sizes["x"]
    order = np.random.default_rng(SHUFFLE_SEED).permutation(height * width)
    back = np.argsort(order)
    shuffled = observed.copy()
    for name, var in observed.data_vars.items():
        if var.dims[-2:] == ("y", "x"):
            shuffled[name] = var.copy(data=_permute(var.values, order))
    prediction = model_method(shuffled, query, options)
    return Prediction(
        mean=_permute(prediction.mean, back),
        samples=None if prediction.samples is None else _permute(prediction.samples, back),
    )


METHODS["model-no-s1"] = "benchmarks.ablations:model_without_s1"
METHODS["model-shuffled"] = "benchmarks.ablations:model_shuffled"


def pooled(evaluation: Evaluation, label: str = "") -> list[dict[str, object]]:
    """The cube-mean pooled rows of ``evaluation`` as flat dicts."""
    out = []
    for row in evaluation.pooled:
        if not row.cube.startswith(POOLED_CUBE):
            continue
        s = row.scores
        out.append(
            {
                "variant": label or row.method,
                "task": row.task,
                "mae": s.mae,
                "ratio": row.ratio,
                "ndvi_mae": s.ndvi_mae,
                "coverage": s.coverage,
                "crps": s.crps,
            }
        )
    return out


def _fmt(value: object, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_rows(rows: list[dict[str, object]]) -> None:
    print(f"{'variant':<16} {'task':<8} {'MAE':>7} {'ratio':>6} {'NDVI':>6} {'cov':>5} {'CRPS':>7}")
    for r in rows:
        print(
            f"{r['variant']:<16} {r['task']:<8} {_fmt(r['mae'], 4):>7} {_fmt(r['ratio'], 3):>6} "
            f"{_fmt(r['ndvi_mae'], 3):>6} {_fmt(r['coverage'], 2):>5} {_fmt(r['crps'], 4):>7}"
        )


def time_steps(checkpoint: Path, steps: int, samples: int, source: Path) -> float:
    cube = make_bench_cube(read_cube(source), 64, 70)
    query = query_dates(cube, 20)
    options = ReconstructOptions(
        samples=samples, steps=steps, checkpoint=checkpoint, blend_field=False
    )  # the network's time; the blend's own cost is in core.bench's figures
    reconstruct(cube, query, "model", options)  # warm-up: load the checkpoint
    times = []
    for _ in range(3):
        start = time.perf_counter()
        reconstruct(cube, query, "model", options)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--cube", type=Path, action="append", default=[])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", default="1,2,4,8,16")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--blend-field",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with the field blend (default: the network alone)",
    )
    parser.add_argument(
        "--timing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each step count (needs an otherwise idle machine)",
    )
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    cubes_dir = Settings.from_env().data_dir / "cubes"
    paths = args.cube or [
        path
        for site in checkpoint.record.get("holdout_sites", [])
        for path in sorted(cubes_dir.glob(f"{site}_*.nc"))
    ]
    if not paths:
        sys.exit("No held-out cubes: pass --cube FILE.")
    protocol = Protocol()
    cubes = [(p.stem, read_cube(p)) for p in paths]
    seen = {m: checkpoint.seen_sites for m in ("model", "model-no-s1", "model-shuffled")}
    base = ReconstructOptions(
        samples=args.samples, checkpoint=args.checkpoint, blend_field=args.blend_field
    )
    print(f"checkpoint {args.checkpoint}; cubes: {', '.join(name for name, _ in cubes)}")

    start = time.perf_counter()
    variants = evaluate(
        cubes,
        ["linear", "whittaker", "model", "model-no-s1", "model-shuffled"],
        protocol,
        base,
        seen_sites=seen,
    )
    rows = pooled(variants)
    print(f"\nVariants (pooled, each cube counting once; {time.perf_counter() - start:.0f} s)")
    print_rows(rows)

    step_rows = []
    source = cubes_dir / "be-flanders-a_2017-2018.nc"
    for steps in [int(s) for s in args.steps.split(",")]:
        options = dataclasses.replace(base, steps=steps)
        result = evaluate(
            cubes, ["linear", "whittaker", "model"], protocol, options, seen_sites=seen
        )
        seconds = time_steps(args.checkpoint, steps, args.samples, source) if args.timing else None
        for row in pooled(result):
            if row["variant"] == "model":
                step_rows.append({**row, "variant": f"steps={steps}", "seconds_64px": seconds})
    print(f"\nODE steps (K={args.samples}; time: 64 px, 70 S2 dates, 20 queries, median of 3)")
    print_rows(step_rows)
    for steps in dict.fromkeys(r["variant"] for r in step_rows):
        seconds = next(r["seconds_64px"] for r in step_rows if r["variant"] == steps)
        print(f"{steps}: {'-' if seconds is None else f'{seconds:.2f}'} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "variants": rows,
                    "steps": step_rows,
                    "evaluation": evaluation_to_dict(variants),
                },
                indent=1,
                default=str,
            ),
            encoding="utf-8",
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
