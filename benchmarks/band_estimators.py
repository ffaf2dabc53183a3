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

With ``--blend`` the band is fitted and scored around the field-blended estimate, as the app
does (the blend fitted on the seed-0 episodes). Besides coverage and width, each band's interval
score (``core.evaluate.interval_score``: width + 10 x the misses' distances, a proper score of
an 80 % band; model units) and its coverage by days to clear data (<= 8 / 8-20 / > 20).

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
from core.evaluate import interval_score
from core.model.blend import distance_bucket, fit_blend
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
    parser.add_argument("--blend", action="store_true", help="around the field-blended estimate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoint = cached_checkpoint(None, "cpu")
    cubes = Settings.from_env().cubes_dir

    def predictions(series, seed: int, samples: int):
        episodes = validation_episodes(
            [series], 24, checkpoint.train_config, seed=seed,
            smooth_features=checkpoint.config.smooth_features,
            whittaker_features=checkpoint.config.whittaker_features, stratified=True,
            patch=checkpoint.config.patch, with_smoother=True,
        )  # fmt: skip
        mean, _, draws, truth = episode_predictions(
            checkpoint.model, episodes, samples, 4, seed, "cpu"
        )
        return mean, draws, truth, blend_targets(episodes)

    def report(label, em, et, eb, low, high):
        inside = (et >= low) & (et <= high)
        bucket = distance_bucket(eb[2])
        by = "/".join(f"{inside[bucket == k].mean():.2f}" for k in range(3))
        score = interval_score(low, high, et).mean()
        return (f"{label} coverage {inside.mean():.3f} ({by}) width {np.mean(high - low):.3f} "
                f"IS {score:.3f}")  # fmt: skip

    for name in args.cubes:
        series = load_series(cubes / f"{name}.nc")
        for samples in (int(k) for k in args.samples.split(",")):
            fm, fd, ft, fb = predictions(series, 0, samples)
            em, ed, et, eb = predictions(series, 1, samples)
            if args.blend:
                blend = fit_blend(fm, fb[0], ft, fb[1], fb[2])
                fm = fm + blend.delta_values(fm, fb[0], fb[1], fb[2])
                em = em + blend.delta_values(em, eb[0], eb[1], eb[2])
            rows = []
            scale = fit_spread(fm, fd, ft)
            low, high = band_offsets(ed)
            rows.append(report("pct", em, et, eb, em + scale * low, em + scale * high))
            fit_sd, eval_sd = fd.std(axis=0, ddof=1), ed.std(axis=0, ddof=1)
            c = symmetric_factor(np.abs(ft - fm), fit_sd)
            rows.append(report("sd", em, et, eb, em - c * eval_sd, em + c * eval_sd))
            fit_med = np.array([np.median(fit_sd[fb[1] == b]) if (fb[1] == b).any() else np.nan
                                for b in range(10)])  # fmt: skip
            eval_med = np.array([np.median(eval_sd[eb[1] == b]) if (eb[1] == b).any() else np.nan
                                 for b in range(10)])  # fmt: skip
            c = symmetric_factor(np.abs(ft - fm), fit_med[fb[1]])
            half = c * eval_med[eb[1]]
            rows.append(report("pooled", em, et, eb, em - half, em + half))
            # one width per band and distance bucket
            fcell, ecell = fb[1] * 3 + distance_bucket(fb[2]), eb[1] * 3 + distance_bucket(eb[2])
            fit_cell = np.array([np.median(fit_sd[fcell == b]) if (fcell == b).any() else np.nan
                                 for b in range(30)])  # fmt: skip
            eval_cell = np.array([np.median(eval_sd[ecell == b]) if (ecell == b).any() else np.nan
                                  for b in range(30)])  # fmt: skip
            c = symmetric_factor(np.abs(ft - fm), fit_cell[fcell])
            half = c * eval_cell[ecell]
            rows.append(report("cell", em, et, eb, em - half, em + half))
            # no samples: the 80th percentile of the fit episodes' errors per band and bucket
            err = np.abs(ft - fm)
            q = np.array([np.quantile(err[fcell == b], 0.8) if (fcell == b).sum() >= 200
                          else np.quantile(err[fb[1] == b // 3], 0.8) if (fb[1] == b // 3).any()
                          else np.nan for b in range(30)])  # fmt: skip
            half = q[ecell]
            rows.append(report("errors", em, et, eb, em - half, em + half))
            # no samples: the p10 and p90 of the fit episodes' signed errors per band and bucket
            signed = ft - fm
            lo_q, hi_q = (np.array([np.quantile(signed[fcell == b], p) if (fcell == b).sum() >= 200
                                    else np.quantile(signed[fb[1] == b // 3], p)
                                    if (fb[1] == b // 3).any() else np.nan
                                    for b in range(30)]) for p in (0.1, 0.9))  # fmt: skip
            rows.append(report("signed", em, et, eb, em + lo_q[ecell], em + hi_q[ecell]))
            # geometric mean of the value's sd and its band's median
            c = symmetric_factor(np.abs(ft - fm), np.sqrt(fit_sd * fit_med[fb[1]]))
            half = c * np.sqrt(eval_sd * eval_med[eb[1]])
            rows.append(report("mixed", em, et, eb, em - half, em + half))
            print(f"{name} K={samples}: " + " | ".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
