"""Per-pixel NDVI band from the samples or from the field's own NDVI errors (training cubes).

    python benchmarks/ndvi_band_estimators.py CUBE_NAME [CUBE_NAME ...] [--samples 8]

Per cube (a name in the shared cubes folder): 24 per-field episodes (seed 0, as per-field
calibration makes them) fit, and 24 others (seed 1) score, two per-pixel NDVI bands around the
field-blended estimate (4 Euler steps, the calibrated default), each scored by its coverage of
the hidden pixels' true NDVI (also by days to clear data: <= 8 / 8-20 / > 20), mean width and
interval score (``core.evaluate.interval_score``):

* samples: the p10-p90 of the NDVI of the samples ``mean + s x draws``, with the spread factor
  s fitted on the reflectance as per-field calibration does (the product's band until now);
* errors: the estimate's NDVI +- the 80th percentile of |true - estimated NDVI| on the fit
  episodes, per distance bucket (``core.model.calibration.fit_error_band``);
* widened: the samples' band stretched to hold the estimate's NDVI where it lies outside;
* recentred: the samples' band moved so that its median sits at the estimate's NDVI (the
  distances from the samples' median to p10 and p90 kept), within [-1, 1];
* fitted: the recentred band with its distances to the edges scaled by a factor per distance
  bucket, fitted on the fit episodes to hold 80 % of their hidden pixels' NDVI
  (``core.model.calibration.fit_pixel_ndvi_factors``).

It also prints the share of pixels whose estimate lies outside the samples' band.

Training cubes are in-sample for the network; the comparison is between bands.
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
from core.model.calibration import (
    episode_pixel_ndvi,
    fit_error_band,
    fit_pixel_ndvi_factors,
    fit_spread,
)
from core.model.inference import CALIBRATED_STEPS, cached_checkpoint
from core.model.training import blend_targets, episode_predictions, load_series, validation_episodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cubes", nargs="+")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoint = cached_checkpoint(None, "cpu")
    cubes = Settings.from_env().cubes_dir

    def predictions(series, seed: int, blend=None):
        episodes = validation_episodes(
            [series], 24, checkpoint.train_config, seed=seed,
            smooth_features=checkpoint.config.smooth_features,
            whittaker_features=checkpoint.config.whittaker_features, stratified=True,
            patch=checkpoint.config.patch, with_smoother=True,
        )  # fmt: skip
        mean, _, draws, truth = episode_predictions(
            checkpoint.model, episodes, args.samples, CALIBRATED_STEPS, seed, "cpu"
        )
        smoother, band, distance = blend_targets(episodes)
        if blend is None:
            blend = fit_blend(mean, smoother, truth, band, distance)
        mean = mean + blend.delta_values(mean, smoother, band, distance)
        return episodes, mean, draws, truth, blend

    def report(label: str, true, low, high, distance) -> str:
        inside = (true >= low) & (true <= high)
        bucket = distance_bucket(distance)
        by = "/".join(
            f"{inside[bucket == k].mean():.2f}" if (bucket == k).any() else "-" for k in range(3)
        )
        score = interval_score(low, high, true).mean()
        return (
            f"{label} coverage {inside.mean():.3f} ({by}) width {np.mean(high - low):.3f} "
            f"IS {score:.3f}"
        )

    for name in args.cubes:
        series = load_series(cubes / f"{name}.nc")
        fit_eps, fm, fd, ft, blend = predictions(series, 0)
        eval_eps, em, ed, et, _ = predictions(series, 1, blend)
        scale = fit_spread(fm, fd, ft)
        fit = episode_pixel_ndvi(fit_eps, fm, ft, scale * fd)
        ev = episode_pixel_ndvi(eval_eps, em, et, scale * ed)
        if ev["true"].size == 0:
            print(f"{name}: no NDVI (red or NIR missing)")
            continue
        rows = []
        low, median, high = np.percentile(ev["samples"], [10, 50, 90], axis=0)
        est = ev["estimate"]
        outside = float(np.mean((est < low) | (est > high)))
        rows.append(report("samples", ev["true"], low, high, ev["distance"]))
        rows.append(
            report(
                "widened", ev["true"], np.minimum(low, est), np.maximum(high, est), ev["distance"]
            )
        )
        rows.append(
            report(
                "recentred",
                ev["true"],
                np.clip(est - (median - low), -1.0, 1.0),
                np.clip(est + (high - median), -1.0, 1.0),
                ev["distance"],
            )
        )
        f_low, f_median, f_high = np.percentile(fit["samples"], [10, 50, 90], axis=0)
        factors = fit_pixel_ndvi_factors(
            fit["true"], fit["estimate"], f_median - f_low, f_high - f_median, fit["distance"]
        )
        c = factors[distance_bucket(ev["distance"])]
        rows.append(
            report(
                f"fitted ({'/'.join(f'{v:.2f}' for v in factors)})",
                ev["true"],
                np.clip(est - c * (median - low), -1.0, 1.0),
                np.clip(est + c * (high - median), -1.0, 1.0),
                ev["distance"],
            )
        )
        half = fit_error_band(
            fit["estimate"], fit["true"], np.zeros(fit["true"].size, int), fit["distance"], 1
        )[0]
        h = half[distance_bucket(ev["distance"])]
        rows.append(
            report("errors", ev["true"], ev["estimate"] - h, ev["estimate"] + h, ev["distance"])
        )
        print(
            f"{name} K={args.samples} ({ev['true'].size} pixels; half widths "
            f"{'/'.join(f'{v:.3f}' for v in half)}; estimate outside the samples' band "
            f"{outside:.3f}):\n  " + "\n  ".join(rows),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
