"""The scene screen's measurement (sparse_scene_rule.txt), paired: each method's MAE summed over
the draws without and with the screen, from the sparse_scene_*.json beside this file.

    python benchmarks/candidates/sparse_scene_compare.py
"""

from __future__ import annotations

from pathlib import Path

from paired import per_seed_maes, print_paired

HERE = Path(__file__).resolve().parent


def maes(name: str) -> dict[str, dict[str, float]] | None:
    path = HERE / f"sparse_scene_{name}.json"
    return per_seed_maes(path) if path.is_file() else None


def main() -> None:
    for cube in ("be-flanders-c", "hu-alfold"):
        without, with_screen = maes(cube), maes(f"{cube}_scenes")
        if without is None or with_screen is None:
            print(f"{cube}: not measured yet")
            continue
        seeds = sorted(set(without) & set(with_screen), key=int)
        print(f"{cube}: MAE summed over seeds {','.join(seeds)}, without -> with the scene screen")
        print_paired(without, with_screen, seeds)


if __name__ == "__main__":
    main()
