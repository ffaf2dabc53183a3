"""Why the model's lead in reflectance does not reach NDVI: an exploratory probe, not a rule.

    python benchmarks/ndvi_gap_probe.py CUBE ... [--threads 2] [--seeds 0,1]

On the episodes a model Run scores a field on (24 per seed, as
:func:`core.model.inference.field_checkpoint` cuts them: whole frames, real cloud masks and long
gaps hidden; the scene mask as it is, no haze screen), with the shipped network untuned and its
field blend cross-fitted (:func:`core.model.blend.cross_fitted_blend`), it prints:

- per band, the mean absolute error of the model, linear interpolation and the Whittaker
  smoother over the band's mean true reflectance (the bands NDVI reads, red and NIR, first);
- the NDVI errors (per pixel, and on each hidden date's mean) of the model moved a share ``w``
  of the way toward linear interpolation, for ``w`` from 0 to 1, with its reflectance error:
  in-sample, so the best ``w`` is an upper bound of what such a mix could buy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import S2_BANDS, read_cube
from core.model.blend import cross_fitted_blend
from core.model.calibration import field_ndvi_scores
from core.model.inference import FIELD_CALIBRATION_EPISODES, cached_checkpoint
from core.model.training import (
    blend_targets,
    episode_predictions,
    series_from_cube,
    target_episodes,
    validation_episodes,
)
from core.reconstruct import observations

SHARES = np.round(np.linspace(0.0, 1.0, 11), 1)
"""Shares of the way from the model's estimate to linear interpolation's that are scored."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cubes", nargs="+", help="shared cube names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="0", help="episode seeds, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Settings.from_env().cubes_dir
    checkpoint = cached_checkpoint(None, "cpu")
    for name in args.cubes:
        series = series_from_cube(observations(read_cube(folder / f"{name}.nc")), name)
        for seed in (int(s) for s in args.seeds.split(",")):
            episodes = validation_episodes(
                [series],
                FIELD_CALIBRATION_EPISODES,
                checkpoint.train_config,
                seed=seed,
                smooth_features=checkpoint.config.smooth_features,
                whittaker_features=checkpoint.config.whittaker_features,
                stratified=True,
                patch=checkpoint.config.patch,
                with_smoother=True,
                with_distance=True,
            )
            mean, linear, _, truth = episode_predictions(
                checkpoint.model, episodes, 1, 1, seed, "cpu", report=False
            )
            smoother, band, key = blend_targets(episodes)
            of = target_episodes(episodes)
            blended = cross_fitted_blend(mean, smoother, truth, band, key, of)
            if blended is None:
                print(f"{name} seed {seed}: too few values", flush=True)
                continue
            usable = np.isfinite(blended) & np.isfinite(linear) & np.isfinite(smoother)
            print(f"{name}, seed {seed}, {usable.sum():,} values:", flush=True)
            order = [S2_BANDS.index("B04"), S2_BANDS.index("B08")]
            order += [b for b in range(len(S2_BANDS)) if b not in order]
            for b in order:
                at = usable & (band == b)
                if not at.any():
                    continue
                level = np.abs(truth[at]).mean()
                methods = (blended, linear, smoother)
                rel = [np.abs(m[at] - truth[at]).mean() / level for m in methods]
                print(
                    f"  {S2_BANDS[b]}: MAE / mean reflectance model {rel[0]:.3f}, linear "
                    f"{rel[1]:.3f}, Whittaker {rel[2]:.3f} (model / linear {rel[0] / rel[1]:.3f})",
                    flush=True,
                )
            for w in SHARES:
                mixed = blended + w * (linear - blended)
                scores = field_ndvi_scores(episodes, (mixed, smoother, linear), truth)
                if scores is None:
                    break
                refl = np.abs(mixed[usable] - truth[usable]).mean()
                linear_refl = np.abs(linear[usable] - truth[usable]).mean()
                means = scores.frame_mean or (float("nan"),) * 3
                print(
                    f"  w {w:.1f}: NDVI per pixel {scores.pixel[0]:.4f} (linear "
                    f"{scores.pixel[2]:.4f}), dates' means {means[0]:.4f} (linear "
                    f"{means[2]:.4f}, {scores.frames} dates); reflectance / linear's "
                    f"{refl / linear_refl:.3f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
