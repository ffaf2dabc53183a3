"""Feasibility check (2026-12-02): would fitting the field blend's red and NIR weights jointly,
by the NDVI MAE of the pixels, lower the NDVI error of the blended estimate?

    PYTHONPATH=. python benchmarks/candidates/ndvi_pair_blend.py [CUBE_NAME ...]

The shipped blend (:func:`core.model.blend.fit_blend`) picks each band's weight of the Whittaker
smoother by that band's reflectance MAE, so red and NIR are fitted apart, while NDVI depends on
both. Here, per cube and episode seed, 48 self-supervised episodes of the field (as the product
makes them: :func:`core.model.training.validation_episodes`) are split in two halves; both
blends are fitted on the first half (the joint one over the 11 x 11 grid of red and NIR weights
per distance bucket) and the NDVI MAE of the pixels with red and NIR hidden is scored on the
second. Only the field's own clear pixels are used, as in the product; the yardstick's hidden
frames are not looked at. The shipped checkpoint, untuned, one sample (the estimate).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import DEFAULT_CHECKPOINT, Settings
from core.cube import read_cube
from core.indices import NIR, NIR_NARROW, RED
from core.model.blend import BLEND_GRID, DISTANCE_EDGES_DAYS, bucket_of, fit_blend
from core.model.checkpoint import load_checkpoint
from core.model.training import (
    blend_targets,
    episode_predictions,
    series_from_cube,
    validation_episodes,
)

EPISODES = 48
MIN_PAIRS = 100


def ndvi_of(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """NDVI as :func:`core.indices.ndvi` makes it (negative reflectance counts as 0)."""
    red, nir = np.maximum(red, 0.0), np.maximum(nir, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(red + nir > 0, (nir - red) / (red + nir), np.nan)


def red_nir_pairs(episodes, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ...]:
    """Each 1-D array of the episodes' hidden values as (2, P) red / NIR pairs (B08, else B8A)
    at the pixels where every array has both, and those pixels' days to clear data (P,)."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
    days = []
    offset = 0
    for ep in episodes:
        target = ep.target
        part = slice(offset, offset + int(target.sum()))
        offset = part.stop
        maps = {}
        for name, values in arrays.items():
            full = np.full(target.shape, np.nan, np.float32)
            full[target] = values[part]
            maps[name] = full
        nir = NIR if np.isfinite(maps["truth"][:, NIR]).any() else NIR_NARROW
        ok = np.ones(target[:, 0].shape, bool)
        for full in maps.values():
            ok &= np.isfinite(full[:, RED]) & np.isfinite(full[:, nir])
        for name, full in maps.items():
            out[name].append(np.stack([full[:, RED][ok], full[:, nir][ok]]))
        days.append(np.asarray(ep.distance)[ok])
    return {name: np.concatenate(v, axis=1) for name, v in out.items()}, np.concatenate(days)


def joint_weights(pairs: dict[str, np.ndarray], bucket: np.ndarray, fallback: np.ndarray):
    """(2, buckets) red and NIR weights with the lowest NDVI MAE per bucket (``fallback``,
    the per-band weights, where a bucket has under :data:`MIN_PAIRS` pixels)."""
    weights = fallback.copy()
    for k in range(weights.shape[1]):
        sel = bucket == k
        if sel.sum() < MIN_PAIRS:
            continue
        model, smoother = pairs["model"][:, sel], pairs["smoother"][:, sel]
        truth = ndvi_of(*pairs["truth"][:, sel])
        errors = {
            (wr, wn): np.nanmean(
                np.abs(ndvi_of(*(model + np.array([[wr], [wn]]) * (smoother - model))) - truth)
            )
            for wr, wn in itertools.product(BLEND_GRID, BLEND_GRID)
        }
        weights[:, k] = min(errors, key=errors.get)
    return weights


def main() -> int:
    torch.set_num_threads(2)
    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT, "cpu")
    folder = Settings.from_env().cubes_dir
    print("NDVI MAE on the second half of each field's episodes: network alone, per-band blend")
    print("(shipped), red and NIR fitted jointly on NDVI; pixels with red and NIR hidden")
    for name in sys.argv[1:] or ["hu-alfold_2021", "be-flanders-a_2017-2018", "es-field_2019"]:
        series = series_from_cube(read_cube(folder / f"{name}.nc"), name)
        for seed in (0, 1, 2):
            episodes = validation_episodes(
                [series],
                EPISODES,
                checkpoint.train_config,
                seed=seed,
                smooth_features=checkpoint.config.smooth_features,
                whittaker_features=checkpoint.config.whittaker_features,
                stratified=True,
                patch=checkpoint.config.patch,
                with_smoother=True,
                with_distance=True,
            )
            halves = []
            for half in (episodes[0::2], episodes[1::2]):
                mean, _, _, truth = episode_predictions(checkpoint.model, half, 1, 8, seed, "cpu")
                smoother, band, days = blend_targets(half, "distance")
                halves.append((half, mean, smoother, truth, band, days))
            (fit_eps, mean_a, smooth_a, truth_a, band_a, days_a) = halves[0]
            (score_eps, mean_b, smooth_b, truth_b, band_b, days_b) = halves[1]
            blend = fit_blend(mean_a, smooth_a, truth_a, band_a, days_a)
            blended_b = mean_b + blend.delta_values(mean_b, smooth_b, band_b, days_b)
            pairs_a, near_a = red_nir_pairs(
                fit_eps,
                {"model": mean_a, "smoother": np.where(np.isfinite(smooth_a), smooth_a, mean_a),
                 "truth": truth_a},
            )  # fmt: skip
            pairs_b, near_b = red_nir_pairs(
                score_eps,
                {"model": mean_b, "smoother": np.where(np.isfinite(smooth_b), smooth_b, mean_b),
                 "truth": truth_b, "blended": blended_b},
            )  # fmt: skip
            nir = NIR if np.isfinite(truth_a[band_a == NIR]).any() else NIR_NARROW
            per_band = blend.weights[[RED, nir]]
            joint = joint_weights(pairs_a, bucket_of(near_a, DISTANCE_EDGES_DAYS), per_band)
            w = joint[:, bucket_of(near_b, DISTANCE_EDGES_DAYS)]
            model_b, smoother_b = pairs_b["model"], pairs_b["smoother"]
            joint_b = model_b + w * (smoother_b - model_b)
            truth = ndvi_of(*pairs_b["truth"])
            mae = {
                label: float(np.nanmean(np.abs(ndvi_of(*values) - truth)))
                for label, values in (
                    ("network", model_b),
                    ("per-band", pairs_b["blended"]),
                    ("joint", joint_b),
                )
            }
            print(
                f"{name} seed {seed}: {near_b.size} pixels; network {mae['network']:.4f}, "
                f"per-band blend {mae['per-band']:.4f}, joint {mae['joint']:.4f} "
                f"({mae['joint'] / mae['per-band'] - 1:+.1%}); weights red / NIR per bucket "
                f"per-band {per_band.round(1).tolist()}, joint {joint.round(1).tolist()}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
