"""The haze screen's surroundings measured (haze_nearby_rule.txt), paired: each method's MAE
summed over the draws without and with them, from the haze_nearby_*.json beside this file.

    python benchmarks/candidates/haze_nearby_compare.py
"""

from __future__ import annotations

from pathlib import Path

from paired import per_seed_maes, print_paired

HERE = Path(__file__).resolve().parent
CUBES = ("be-flanders-a", "pt-santarem")


def main() -> None:
    for cube in CUBES:
        without = per_seed_maes(HERE / f"haze_nearby_{cube}_without.json")
        with_nearby = per_seed_maes(HERE / f"haze_nearby_{cube}_with.json")
        seeds = sorted(without, key=int)
        print(
            f"{cube}: mean MAE over seeds {','.join(seeds)} (truth without the screened pixels "
            "and their surroundings), without -> with the surroundings"
        )
        print_paired(without, with_nearby, seeds)


if __name__ == "__main__":
    main()
