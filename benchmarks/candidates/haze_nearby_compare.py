"""The haze screen's surroundings measured (haze_nearby_rule.txt), paired: each method's MAE
summed over the draws without and with them, from the haze_nearby_*.json beside this file.

    python benchmarks/candidates/haze_nearby_compare.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUBES = ("be-flanders-a", "pt-santarem")


def maes(name: str) -> dict[str, dict[str, float]]:
    data = json.loads((HERE / f"haze_nearby_{name}.json").read_text())
    ((_, per_seed),) = data["maes"].items()
    return per_seed


def main() -> None:
    for cube in CUBES:
        without, with_nearby = maes(f"{cube}_without"), maes(f"{cube}_with")
        seeds = sorted(without, key=int)
        print(
            f"{cube}: mean MAE over seeds {','.join(seeds)} (truth without the screened pixels "
            "and their surroundings), without -> with the surroundings"
        )
        for task in ("missing", "cloud", "gap"):
            said = []
            for method in ("linear", "whittaker", "model"):
                a = sum(without[s][f"{task} {method}"] for s in seeds)
                b = sum(with_nearby[s][f"{task} {method}"] for s in seeds)
                n = len(seeds)
                said.append(f"{method} {a / n:.5f} -> {b / n:.5f} ({100 * (b / a - 1):+.1f} %)")
            won = sum(with_nearby[s][f"{task} model"] < without[s][f"{task} model"] for s in seeds)
            print(f"  {task:8s} " + "; ".join(said) + f"; model better on {won} of {len(seeds)}")


if __name__ == "__main__":
    main()
