"""The scene screen's measurement (sparse_scene_rule.txt), paired: each method's MAE summed over
the draws without and with the screen, from the sparse_scene_*.json beside this file.

    python benchmarks/candidates/sparse_scene_compare.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def maes(name: str) -> dict[str, dict[str, float]] | None:
    path = HERE / f"sparse_scene_{name}.json"
    if not path.is_file():
        return None
    ((_, per_seed),) = json.loads(path.read_text())["maes"].items()
    return per_seed


def main() -> None:
    for cube in ("be-flanders-c", "hu-alfold"):
        without, with_screen = maes(cube), maes(f"{cube}_scenes")
        if without is None or with_screen is None:
            print(f"{cube}: not measured yet")
            continue
        seeds = sorted(set(without) & set(with_screen), key=int)
        print(f"{cube}: MAE summed over seeds {','.join(seeds)}, without -> with the scene screen")
        for task in ("missing", "cloud", "gap"):
            said = []
            for method in ("linear", "whittaker", "model"):
                a = sum(without[s][f"{task} {method}"] for s in seeds)
                b = sum(with_screen[s][f"{task} {method}"] for s in seeds)
                n = len(seeds)
                said.append(f"{method} {a / n:.5f} -> {b / n:.5f} ({100 * (b / a - 1):+.1f} %)")
            won = sum(with_screen[s][f"{task} model"] < without[s][f"{task} model"] for s in seeds)
            print(f"  {task:8s} " + "; ".join(said) + f"; model better on {won} of {len(seeds)}")


if __name__ == "__main__":
    main()
