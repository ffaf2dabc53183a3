"""Speed and hold-out accuracy of the baselines on the shared real cubes (a printout, not a test).

    python benchmarks/baselines_speed.py [--cubes be-flanders-a_2017-2018.nc ...] [--repeat 3]

Speed: :func:`smooth_whittaker` (GCV per series) and :func:`interpolate_linear` at every day of
each cube's period. Accuracy: a sixth of the acquisition dates (never the first or last) is
hidden; each method predicts them from the rest and is scored by RMSE of reflectance over the
clear pixels of the hidden dates, which picks the GCV variant (``GCV_GAMMA``).
BLAS threads matter on small shared machines: compare with ``OPENBLAS_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.baselines import interpolate_linear, smooth_whittaker
from core.config import Settings
from core.cube import read_cube
from core.reconstruct import observations
from core.timeline import to_days

DEFAULT_CUBES = ("be-flanders-a_2017-2018.nc", "tz-arusha_2019-2021.nc", "pt-santarem_2021.nc")


def _best_time(func, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(values: np.ndarray, days: np.ndarray, repeat: int) -> str:
    query = np.arange(np.floor(days[0]), np.floor(days[-1]) + 1)
    whittaker_s = _best_time(lambda: smooth_whittaker(values, days, query), repeat)
    linear_s = _best_time(lambda: interpolate_linear(values, days, query), repeat)
    return (
        f"{query.size} daily queries: whittaker (GCV) {whittaker_s:.2f} s, linear {linear_s:.2f} s"
    )


def holdout(values: np.ndarray, days: np.ndarray, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hidden = np.sort(rng.choice(np.arange(1, days.size - 1), days.size // 6, replace=False))
    inputs = values.copy()
    inputs[hidden] = np.nan
    truth = values[hidden]
    scored = np.isfinite(truth)

    def rmse(prediction: np.ndarray) -> float:
        return float(np.sqrt(np.mean((prediction - truth)[scored] ** 2)))

    scores = {"linear": rmse(interpolate_linear(inputs, days, days[hidden]))}
    for gamma in (1.0, 1.4, 2.0):
        predicted = smooth_whittaker(inputs, days, days[hidden], gcv_gamma=gamma)
        scores[f"gcv(gamma={gamma})"] = rmse(predicted)
    for lam in (1e2, 1e3, 1e4, 1e5):
        scores[f"lam={lam:g}"] = rmse(smooth_whittaker(inputs, days, days[hidden], lam=lam))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", nargs="+", default=list(DEFAULT_CUBES))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cubes_dir = Settings.from_env().cubes_dir
    for name in args.cubes:
        observed = observations(read_cube(cubes_dir / name))
        values = observed["s2"].values
        days = to_days(observed["time_s2"].values)
        print(f"{name} {values.shape}: {speed(values, days, args.repeat)}")
        scores = holdout(values, days)
        print("  hold-out RMSE: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
