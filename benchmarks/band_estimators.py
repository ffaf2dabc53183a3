"""How wide the band must be to hold 80 %, by how it is read off K samples (training cubes).

    python benchmarks/band_estimators.py CUBE_NAME [CUBE_NAME ...] [--samples 4,8,16]

Per cube (a name in the shared cubes folder) and K: 24 per-field episodes (seed 0, as per-field
calibration makes them) fit each band's factor to hold 80 % of the hidden values, and 24 others
(seed 1) score it: coverage and mean width (model units). Three bands around the network's
estimate, from the same K residual draws (4 Euler steps, the calibrated default):

* pct: the p10-p90 of the samples (the product's band);
* sd: +- c x the per-value standard deviation of the samples;
* pooled: +- c x the median of those standard deviations over the band's values (one width
  per band and field).

Training cubes are in-sample for the network; the comparison is between estimators.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.model.calibration import band_offsets, fit_spread, smallest_scale
from core.model.inference import cached_checkpoint
from core.model.training import blend_targets, episode_predictions, load_series, validation_episodes


def symmetric_factor(errors: np.ndarray, half_widths: np.ndarray) -> float:
    """The factor c for which +- c x ``half_widths`` holds 80 % of the absolute ``errors``."""
    return smallest_scale(lambda c: float(np.mean(errors <= c * half_widths)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cubes", nargs="+")
    parser.add_argument("--samples", default="4,8,16")
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoint = cached_checkpoint(None, "cpu")
    cubes = Settings.from_env().cubes_dir

    def predictions(series, seed: int, samples: int):
        episodes = validation_episodes(
            [series], 24, checkpoint.train_config, seed=seed,
            smooth_features=checkpoint.config.smooth_features, stratified=True,
            patch=checkpoint.config.patch, with_smoother=True,
        )  # fmt: skip
        mean, _, draws, truth = episode_predictions(
            checkpoint.model, episodes, samples, 4, seed, "cpu"
        )
        return mean, draws, truth, blend_targets(episodes)[1]

    for name in args.cubes:
        series = load_series(cubes / f"{name}.nc")
        for samples in (int(k) for k in args.samples.split(",")):
            fm, fd, ft, fb = predictions(series, 0, samples)
            em, ed, et, eb = predictions(series, 1, samples)
            scale = fit_spread(fm, fd, ft)
            low, high = band_offsets(ed)
            pct = (np.mean((et >= em + scale * low) & (et <= em + scale * high)),
                   np.mean(scale * (high - low)))  # fmt: skip
            fit_sd, eval_sd = fd.std(axis=0, ddof=1), ed.std(axis=0, ddof=1)
            c = symmetric_factor(np.abs(ft - fm), fit_sd)
            sd = np.mean(np.abs(et - em) <= c * eval_sd), np.mean(2 * c * eval_sd)
            fit_med = np.array([np.median(fit_sd[fb == b]) if (fb == b).any() else np.nan
                                for b in range(10)])  # fmt: skip
            eval_med = np.array([np.median(eval_sd[eb == b]) if (eb == b).any() else np.nan
                                 for b in range(10)])  # fmt: skip
            c = symmetric_factor(np.abs(ft - fm), fit_med[fb])
            pooled = (np.mean(np.abs(et - em) <= c * eval_med[eb]),
                      np.mean(2 * c * eval_med[eb]))  # fmt: skip
            print(
                f"{name} K={samples}: "
                + " | ".join(
                    f"{label} coverage {cov:.3f} width {width:.3f}"
                    for label, (cov, width) in (("pct", pct), ("sd", sd), ("pooled", pooled))
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
