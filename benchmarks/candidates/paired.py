"""What the *_compare.py scripts beside this file share: one run's MAEs per draw from a
benchmarks/seed_spread.py JSON, and the paired lines (each method's mean MAE over the draws
without and with a change, and on how many draws the model did better)."""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("missing", "cloud", "gap")
METHODS = ("linear", "whittaker", "model")


def per_seed_maes(path: Path) -> dict[str, dict[str, float]]:
    """{seed: {"task method": MAE}} of the one checkpoint label in seed_spread.py's JSON."""
    ((_, per_seed),) = json.loads(path.read_text())["maes"].items()
    return per_seed


def print_paired(
    without: dict[str, dict[str, float]], with_change: dict[str, dict[str, float]], seeds: list[str]
) -> None:
    """A line per task: each method's mean MAE over ``seeds`` without -> with the change, its
    change in per cent, and the draws where the model's MAE fell."""
    n = len(seeds)
    for task in TASKS:
        said = []
        for method in METHODS:
            a = sum(without[s][f"{task} {method}"] for s in seeds)
            b = sum(with_change[s][f"{task} {method}"] for s in seeds)
            said.append(f"{method} {a / n:.5f} -> {b / n:.5f} ({100 * (b / a - 1):+.1f} %)")
        won = sum(with_change[s][f"{task} model"] < without[s][f"{task} model"] for s in seeds)
        print(f"  {task:8s} " + "; ".join(said) + f"; model better on {won} of {n}")
