"""The haze screen's measurement (haze_screen_rule.txt), paired: each method's MAE summed over
the draws without and with the screen, from the four haze_screen_*.json beside this file.

    python benchmarks/candidates/haze_screen_compare.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def maes(name: str) -> dict[str, dict[str, float]]:
    data = json.loads((HERE / f"haze_screen_{name}.json").read_text())
    ((_, per_seed),) = data["maes"].items()
    return per_seed


def main() -> None:
    for cube in ("be-flanders-a", "hu-alfold"):
        without, with_screen = maes(cube), maes(f"{cube}_screen")
        seeds = sorted(without, key=int)
        print(f"{cube}: mean MAE over seeds {','.join(seeds)} (screened truth), without -> with")
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
