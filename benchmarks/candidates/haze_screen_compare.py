"""The haze screen's measurement (haze_screen_rule.txt), paired: each method's MAE summed over
the draws without and with the screen, from the four haze_screen_*.json beside this file.

    python benchmarks/candidates/haze_screen_compare.py
"""

from __future__ import annotations

from pathlib import Path

from paired import per_seed_maes, print_paired

HERE = Path(__file__).resolve().parent


def main() -> None:
    for cube in ("be-flanders-a", "hu-alfold"):
        without = per_seed_maes(HERE / f"haze_screen_{cube}.json")
        with_screen = per_seed_maes(HERE / f"haze_screen_{cube}_screen.json")
        seeds = sorted(without, key=int)
        print(f"{cube}: mean MAE over seeds {','.join(seeds)} (screened truth), without -> with")
        print_paired(without, with_screen, seeds)


if __name__ == "__main__":
    main()
