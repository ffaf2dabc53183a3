"""Does a fifth training site lower the held-out ratios? The reading of
``benchmarks/candidates/site_scaling_rule.txt`` from ``seed_spread.py --json`` runs.

    python benchmarks/site_scaling.py --five A.json --five B.json --four C.json ... \\
        [--reference M5.json] [--loso D.json ...]

``--five``: runs of models trained on all five training sites (two trainings of the same data:
their difference is the training noise); ``--four``: runs of models that each left one site
out; every one scored with ``seed_spread.py --network-alone`` on the same held-out cubes and
seeds, so their hidden pixels are the same. ``--reference``: the shipped checkpoint's run, for
scale. ``--loso``: ``seed_spread.py --cube SITE`` runs of each four-site model on the site it
left out (leave-one-site-out). Prints, per task, the ratio of the MAEs summed over the seeds
(model / the better baseline) of every model, the means of the four- and five-site models, and
the rule's reading; then the leave-one-site-out table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TASKS = ("missing", "cloud", "gap")
BASELINES = ("linear", "whittaker")


def load(path: Path) -> tuple[str, dict]:
    """A seed_spread JSON's one model label and its per-seed MAEs."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if len(data["maes"]) != 1:
        raise SystemExit(f"{path} holds {len(data['maes'])} models; pass one model per run.")
    ((label, maes),) = data["maes"].items()
    return label, {"seeds": data["seeds"], "cubes": data["cubes"], "maes": maes}


def summed(run: dict, task: str, figure: str = "model") -> float:
    """Sum over the seeds of a method's pooled MAE in ``task``."""
    return float(sum(run["maes"][str(s)].get(f"{task} {figure}", np.nan) for s in run["seeds"]))


def ratio(run: dict, task: str) -> float:
    """The model's MAE summed over the seeds over the better baseline's."""
    return summed(run, task) / min(summed(run, task, b) for b in BASELINES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--five", type=Path, action="append", default=[])
    parser.add_argument("--four", type=Path, action="append", default=[])
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--loso", type=Path, action="append", default=[])
    parser.add_argument(
        "--sites", type=int, default=5, help="four-site models the rule asks for (one per site)"
    )
    args = parser.parse_args()
    if len(args.five) != 2 or len(args.four) < 2:
        raise SystemExit("Give two --five runs and at least two --four runs.")
    five = [load(p) for p in args.five]
    four = [load(p) for p in args.four]
    runs = five + four + ([load(args.reference)] if args.reference else [])
    keys = {(tuple(r["seeds"]), tuple(r["cubes"])) for _, r in runs}
    if len(keys) != 1:
        raise SystemExit("The runs differ in seeds or cubes; they must be paired.")
    ((seeds, cubes),) = keys
    print(f"held out: {', '.join(cubes)}; seeds {seeds[0]}-{seeds[-1]}; the network alone")
    print("ratio of the MAEs summed over the seeds (model / the better baseline)\n")
    print(f"{'model':28s} " + " ".join(f"{t:>8s}" for t in TASKS))
    for label, run in runs:
        print(f"{label:28s} " + " ".join(f"{ratio(run, t):8.3f}" for t in TASKS))
    verdicts = []
    print()
    for task in TASKS:
        five_r = np.array([ratio(r, task) for _, r in five])
        four_r = np.array([ratio(r, task) for _, r in four])
        noise = abs(five_r[0] - five_r[1])
        gain = four_r.mean() - five_r.mean()
        beaten = int((five_r.mean() < four_r).sum())
        wins = gain > noise and beaten >= len(four_r) - 1
        verdicts.append((task, wins, gain > 0))
        print(
            f"{task:8s} five sites {five_r.mean():.3f} (the two trainings {five_r[0]:.3f} / "
            f"{five_r[1]:.3f}: noise {noise:.3f}); four sites {four_r.mean():.3f} "
            f"[{four_r.min():.3f} - {four_r.max():.3f}]; five lower by {gain:+.3f}, below "
            f"{beaten} of {len(four_r)} four-site models: "
            + ("five beat four" if wins else "not beaten")
        )
    won = {task for task, wins, _ in verdicts if wins}
    if len(won) >= 2 and "gap" in won:
        reading = "supported at this scale"
    elif not any(lower for _, _, lower in verdicts):
        reading = "contradicted at this scale"
    else:
        reading = "not resolved at this scale"
    if len(four) < args.sites:
        print(
            f"\nthe rule's reading needs all {args.sites} four-site models; {len(four)} so far: "
            f'(would read "{reading}"; not a reading yet)'
        )
    else:
        print(f'\nthe rule\'s reading: "more sites close the gap" is {reading}')
    if args.loso:
        print("\nleave-one-site-out: each four-site model on the site it left out")
        print("MAE, mean over the draws: linear / Whittaker / model (ratio of the sums)")
        for path in args.loso:
            label, run = load(path)
            cells = []
            for task in TASKS:
                lin, whit, model = (
                    summed(run, task, m) / len(run["seeds"]) for m in (*BASELINES, "model")
                )
                cells.append(
                    f"{task} {lin:.4f} / {whit:.4f} / {model:.4f} ({ratio(run, task):.3f})"
                    if np.isfinite(model)
                    else f"{task} -"
                )
            print(f"{', '.join(run['cubes'])} (seeds {len(run['seeds'])}): " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
