"""Feasibility check (2026-12-04, rule: three_way_blend_rule.txt): would the field blend err
less with linear interpolation beside the Whittaker smoother?

    PYTHONPATH=. python benchmarks/candidates/three_way_blend.py [CUBE_NAME ...]

Per cube and episode seed, 48 self-supervised episodes of the field (as the product makes them:
:func:`core.model.training.validation_episodes`) are split in two halves. Both blends are
fitted on the first half: the shipped one (:func:`core.model.blend.fit_blend`, a weight of the
smoother per band and bucket of days to clear data) and the three-way one (weights of the
smoother and of linear interpolation, on the 0.1 grid with a sum <= 1, per band and bucket).
Reflectance MAE is scored on the second half, overall and in the > 20-day bucket. Only the
field's own clear pixels are used, as in the product; the yardstick's hidden frames are not
looked at. The shipped checkpoint, untuned, one sample (the estimate).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import DEFAULT_CHECKPOINT, Settings
from core.cube import read_cube
from core.model.blend import BLEND_GRID, DISTANCE_EDGES_DAYS, MIN_VALUES, bucket_of, fit_blend
from core.model.checkpoint import load_checkpoint
from core.model.features import N_BANDS
from core.model.training import (
    blend_targets,
    episode_predictions,
    series_from_cube,
    validation_episodes,
)

EPISODES = 48
PAIRS = [(ws, wl) for wl in BLEND_GRID for ws in BLEND_GRID if ws + wl <= 1.0 + 1e-9]
"""(w_s, w_l) pairs in the order ties are broken: smaller w_l first, then smaller w_s."""


def best_pair(mean, smoother, linear, truth) -> tuple[float, float]:
    errors = [
        np.mean(np.abs(mean + ws * (smoother - mean) + wl * (linear - mean) - truth))
        for ws, wl in PAIRS
    ]
    return PAIRS[int(np.argmin(errors))]


def fit_three_way(mean, smoother, linear, truth, band, key) -> np.ndarray:
    """(N_BANDS, buckets, 2) weights; the same fallbacks as fit_blend."""
    bucket = bucket_of(key, DISTANCE_EDGES_DAYS)
    weights = np.zeros((N_BANDS, len(DISTANCE_EDGES_DAYS) + 1, 2))
    usable = np.isfinite(mean) & np.isfinite(truth)
    for b in range(N_BANDS):
        in_band = usable & (band == b)
        if in_band.sum() < MIN_VALUES:
            continue
        whole = best_pair(mean[in_band], smoother[in_band], linear[in_band], truth[in_band])
        for k in range(weights.shape[1]):
            sel = in_band & (bucket == k)
            weights[b, k] = (
                best_pair(mean[sel], smoother[sel], linear[sel], truth[sel])
                if sel.sum() >= MIN_VALUES
                else whole
            )
    return weights


def mae(values: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(np.mean(np.abs(values[where] - truth[where]))) if where.any() else np.nan


def main() -> int:
    torch.set_num_threads(2)
    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT, "cpu")
    folder = Settings.from_env().cubes_dir
    print("Reflectance MAE on the second half of each field's episodes: the network alone, the")
    print("shipped blend (smoother), the three-way blend (smoother + linear); all, and > 20 days")
    far_gain, all_change = [], []
    names = sys.argv[1:] or [
        "hu-alfold_2021", "be-flanders-a_2017-2018", "es-field_2019", "pt-santarem_2021"
    ]  # fmt: skip
    for name in names:
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
                mean, linear, _, truth = episode_predictions(
                    checkpoint.model, half, 1, 8, seed, "cpu", report=False
                )
                smoother, band, days = blend_targets(half, "distance")
                smoother = np.where(np.isfinite(smoother), smoother, mean)
                linear = np.where(np.isfinite(linear), linear, mean)
                halves.append((mean, smoother, linear, truth, band, days))
            mean_a, smooth_a, lin_a, truth_a, band_a, days_a = halves[0]
            mean_b, smooth_b, lin_b, truth_b, band_b, days_b = halves[1]
            shipped = fit_blend(mean_a, smooth_a, truth_a, band_a, days_a)
            shipped_b = mean_b + shipped.delta_values(mean_b, smooth_b, band_b, days_b)
            three = fit_three_way(mean_a, smooth_a, lin_a, truth_a, band_a, days_a)
            w = three[band_b, bucket_of(days_b, DISTANCE_EDGES_DAYS)]
            three_b = mean_b + w[:, 0] * (smooth_b - mean_b) + w[:, 1] * (lin_b - mean_b)
            ok = np.isfinite(truth_b) & np.isfinite(mean_b)
            far = ok & (days_b > DISTANCE_EDGES_DAYS[-1])

            row = {
                label: (mae(values, truth_b, ok), mae(values, truth_b, far))
                for label, values in (
                    ("network", mean_b), ("shipped", shipped_b), ("three-way", three_b),
                    ("whittaker", smooth_b), ("linear", lin_b),
                )
            }  # fmt: skip
            gain = 100 * (row["three-way"][1] / row["shipped"][1] - 1)
            change = 100 * (row["three-way"][0] / row["shipped"][0] - 1)
            far_gain.append(gain)
            all_change.append(change)
            mean_w = three[:, :, :].mean(axis=0).round(2).tolist()
            print(
                f"{name} seed {seed}: {int(ok.sum())} values ({int(far.sum())} > 20 d); "
                + "; ".join(f"{k} {v[0]:.4f} / {v[1]:.4f}" for k, v in row.items())
                + f"; three-way vs shipped: all {change:+.1f} %, > 20 d {gain:+.1f} %;"
                + f" mean (w_s, w_l) per bucket {mean_w}",
                flush=True,
            )
    print(
        f"median change of the > 20-day MAE {np.median(far_gain):+.2f} % (rule: <= -1 %); "
        f"overall MAE worst change {max(all_change):+.2f} % (rule: none above +0.5 %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
