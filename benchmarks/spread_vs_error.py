"""Does the model's band follow its error? Per value, per distance to clear data, per cube.

    python benchmarks/spread_vs_error.py [--checkpoint FILE ...] [--cube FILE ...]
        [--episodes 24] [--samples 8] [--seed 1] [--json FILE]

On each cube (default: the held-out sites of the first checkpoint's record), ``--episodes``
self-supervised episodes hide clear pixels the way per-field calibration does (whole frames,
real cloud masks from other dates, a 20-60 day gap in 30 % of them; ``--seed`` 1, so not the
episodes that per-field calibration with seed 0 fits on). For every hidden value the model
gives its best estimate and K samples (the checkpoint's spread factor, the default steps).
Printed per checkpoint and cube:

- the rank correlation between each value's sample spread (sd of the K samples) and its
  absolute error: 0 means the band is as wide where the model is right as where it is wrong;
- by days to the nearest clear observation of that pixel (0-8, 8-20, over 20): MAE, mean
  sample sd, p10-p90 coverage and CRPS. A band that follows the error keeps coverage level
  across the buckets while its width grows with the MAE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import DEFAULT_CHECKPOINT, Settings
from core.evaluate import crps_ensemble
from core.model.checkpoint import load_checkpoint
from core.model.features import GAP_PREV_CHANNEL, REFL_SCALE, gap_days
from core.model.training import collate, load_series, residual_draws, validation_episodes

BUCKETS = ((0.0, 8.0), (8.0, 20.0), (20.0, np.inf))
"""Days to the nearest clear observation of the pixel."""


def nearest_clear_days(episode) -> np.ndarray:
    """Days from each target value of ``episode`` to its pixel's nearest clear observation, in
    the order of :func:`residual_draws`' outputs."""
    batch = collate([episode])
    target = batch.target[0]
    frames = target.flatten(1).any(dim=1)
    s2 = batch.s2[0][frames].numpy()
    nearest = np.minimum(gap_days(s2[:, GAP_PREV_CHANNEL]), gap_days(s2[:, GAP_PREV_CHANNEL + 1]))
    nearest = np.broadcast_to(nearest[:, None], target[frames].shape)
    return nearest[target[frames].numpy()]


def spread_figures(checkpoint, series, episodes: int, samples: int, seed: int) -> dict:
    """The figures described in the module docstring for one checkpoint and one series."""
    config = checkpoint.config
    chosen = validation_episodes(
        [series],
        episodes,
        checkpoint.train_config,
        seed=seed,
        smooth_features=config.smooth_features,
        whittaker_features=config.whittaker_features,
        stratified=True,
        patch=config.patch,
    )
    generator = torch.Generator().manual_seed(seed)
    parts = [
        residual_draws(checkpoint.model, ep, samples, config.default_steps, generator)
        for ep in chosen
    ]
    mean = np.concatenate([p[0] for p in parts]) / REFL_SCALE
    draws = mean[None] + checkpoint.spread_scale * (
        np.concatenate([p[2] for p in parts], axis=1) / REFL_SCALE
    )
    truth = np.concatenate([p[3] for p in parts]) / REFL_SCALE
    nearest = np.concatenate([nearest_clear_days(ep) for ep in chosen])
    error = np.abs(mean - truth)
    spread = draws.std(axis=0)
    low, high = np.percentile(draws, [10, 90], axis=0)
    inside = (truth >= low) & (truth <= high)
    crps = crps_ensemble(draws, truth)
    rows = []
    for lo, hi in BUCKETS:
        sel = (nearest >= lo) & (nearest < hi)
        rows.append(
            {
                "days": [lo, None if np.isinf(hi) else hi],
                "n_values": int(sel.sum()),
                "mae": float(error[sel].mean()) if sel.any() else None,
                "sample_sd": float(spread[sel].mean()) if sel.any() else None,
                "coverage": float(inside[sel].mean()) if sel.any() else None,
                "crps": float(crps[sel].mean()) if sel.any() else None,
            }
        )
    return {
        "n_values": int(truth.size),
        "rank_correlation_sd_error": float(spearmanr(spread, error).statistic),
        "mae": float(error.mean()),
        "coverage": float(inside.mean()),
        "crps": float(crps.mean()),
        "by_days_to_clear": rows,
    }


def _days(bounds: list) -> str:
    low, high = bounds
    return f"{low:.0f}-{high:.0f} d" if high is not None else f"> {low:.0f} d"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    parser.add_argument("--cube", type=Path, action="append", default=[])
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.checkpoint or [DEFAULT_CHECKPOINT]
    checkpoints = [load_checkpoint(p) for p in paths]
    cubes = args.cube or sorted(
        p
        for p in Settings.from_env().cubes_dir.glob("*.nc")
        if p.name.split("_")[0] in checkpoints[0].record.get("holdout_sites", [])
    )
    out: list[dict] = []
    print(f"{args.episodes} episodes per cube (seed {args.seed}), K = {args.samples}")
    print(
        "checkpoint | cube | rank corr(sd, |err|) | days to clear: n, MAE, sample sd, "
        "coverage, CRPS | all: coverage, CRPS"
    )
    for path, checkpoint in zip(paths, checkpoints, strict=True):
        for cube in cubes:
            figures = spread_figures(
                checkpoint, load_series(cube), args.episodes, args.samples, args.seed
            )
            out.append({"checkpoint": str(path), "cube": cube.stem, **figures})
            buckets = "; ".join(
                f"{_days(r['days'])}: {r['n_values']}, "
                f"{r['mae']:.4f}, {r['sample_sd']:.4f}, {r['coverage']:.2f}, {r['crps']:.4f}"
                for r in figures["by_days_to_clear"]
                if r["n_values"]
            )
            print(
                f"{path.name} | {cube.stem} | {figures['rank_correlation_sd_error']:.2f} | "
                f"{buckets} | {figures['coverage']:.2f}, {figures['crps']:.4f}",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
