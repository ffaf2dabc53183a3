"""How much the yardstick's held-out ratios move with its seed alone, and whether checkpoints
differ by more than that.

    python benchmarks/seed_spread.py [--seeds 0-9] [--checkpoint A.pt --checkpoint B.pt ...]
        [--adapt-steps N] [--field-episodes N] [--field-crop PX] [--blend-by span]
        [--screen-haze [--haze-nearby]] [--screen-scenes] [--screened-truth] [--include-seen]
        [--against EARLIER.json]
        [--network-alone] [--views N] [--adapt-gap-share S] [--cube CUBE ...] [--json OUT.json]

The yardstick (``core.evaluate``) draws with one seed which clear frames are hidden (missing
frames, cloud removal's frames and the cloud masks they borrow, the long gap's window). The
targets table quotes seed 0. This script scores linear, Whittaker and the model with the app's
settings (K = 8, the band fitted on the field, the field blend, the default smoothing) on the
held-out cubes once per seed, and prints each seed's pooled ratio (model MAE / the better
baseline's, the mean over the cubes, as the targets table), then their median, range and the
ratio of the MAEs summed over the seeds. With several ``--checkpoint``\\ s every seed scores
each of them on the same hidden pixels, so their differences are paired: the script prints
the median difference and on how many seeds each checkpoint wins. ``--adapt-steps N`` tunes the
network on each field first (``ReconstructOptions.adapt_steps``); ``--against`` pairs the run
with an earlier run's JSON on the same seeds and cubes (e.g. the same checkpoint untuned).
``--field-episodes N`` fits the field blend and band on N self-supervised episodes of the field
instead of :data:`core.model.inference.FIELD_CALIBRATION_EPISODES`, ``--field-crop PX`` on
PX-pixel crops instead of the training crop (:data:`core.model.inference.FIELD_EPISODE_CROP`),
and ``--blend-by`` buckets
the field blend's weights by another measure (:data:`core.model.blend.MEASURES`) than
:data:`core.model.blend.BLEND_MEASURE` (candidates' trials). ``--network-alone`` scores the
network's best estimate only (no field blend, no band, K = 1), for comparing what checkpoints
learned without the smoother the blend leans on. ``--screen-haze`` screens haze the scene
mask missed out of every method's inputs (:mod:`core.screening`), ``--screen-scenes`` the clear
pixels of mostly cloudy acquisitions (:func:`core.screening.sparse_scenes`);
``--screened-truth`` scores only the hidden pixels that are not such haze themselves (the
draws are the same). ``--views N`` averages the network's estimate over N views of its input
(``ReconstructOptions.views``; a trial, ``benchmarks/candidates/views_rule.txt``).
``--adapt-gap-share S`` hides a long gap in a share S of the per-field tuning's episodes
instead of training's 0.3 (:data:`core.model.training.ADAPT_LONG_GAP_SHARE`; a trial,
``benchmarks/candidates/tuning_gaps_rule.txt``).

Nothing is chosen on this: it measures the noise that the rules in ``benchmarks/candidates/``
had to judge changes against.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import DEFAULT_CHECKPOINT, Settings
from core.cube import read_cube
from core.evaluate import POOLED_CUBE, Protocol, evaluate
from core.model import blend, inference, training
from core.model.config import VIEW_COUNTS
from core.reconstruct import ReconstructOptions

TASKS = ("missing", "cloud", "gap")
BASELINES = ("linear", "whittaker")
HELD_OUT = ("be-flanders-c_2018-2019", "hu-alfold_2021")


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"``."""
    if "-" in text:
        first, last = (int(v) for v in text.split("-"))
        return list(range(first, last + 1))
    return [int(v) for v in text.split(",")]


def pooled_figures(evaluation, figure: str) -> dict[tuple[str, str], float]:
    """(task, method) -> a figure of the cube-mean pooled scores (``mae``, ``ndvi_mae``,
    ``coverage``), NaN where it has none."""
    out = {}
    for row in evaluation.pooled:
        if row.cube == POOLED_CUBE and row.scores is not None:
            value = getattr(row.scores, figure)
            out[(row.task, row.method)] = np.nan if value is None else float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    parser.add_argument("--cube", action="append", default=[], help="cube names (held out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adapt-steps", type=int, default=0, help="per-field tuning steps")
    parser.add_argument("--field-episodes", type=int, help="episodes per field fit (a trial)")
    parser.add_argument("--field-crop", type=int, help="field episodes' crop in px (a trial)")
    parser.add_argument("--blend-by", choices=sorted(blend.MEASURES), help="(a trial)")
    parser.add_argument(
        "--screened-truth",
        action="store_true",
        help="score only hidden pixels that are not themselves missed haze (core.screening)",
    )
    parser.add_argument(
        "--screen-haze",
        action="store_true",
        help="screen haze the scene mask missed out of every method's inputs (core.screening)",
    )
    parser.add_argument(
        "--screen-scenes",
        action="store_true",
        help="drop the clear pixels of acquisitions under 25 %% clear from every method's "
        "inputs (core.screening.sparse_scenes)",
    )
    parser.add_argument(
        "--haze-nearby",
        action="store_true",
        help="with --screen-haze: the clear pixels around screened haze too "
        "(core.screening.haze_nearby; haze_nearby_rule.txt's runs, made while it was on by "
        "default, gave --no-haze-nearby for the runs without it)",
    )
    parser.add_argument(
        "--include-seen",
        action="store_true",
        help="score the model on a --cube it was trained on too (its figures there flatter it; "
        "for changes that are not learned, such as the haze screen)",
    )
    parser.add_argument("--against", type=Path, help="an earlier run's JSON to pair with")
    parser.add_argument(
        "--network-alone",
        action="store_true",
        help="the network's estimate only: no field blend, no band, K = 1 (checkpoint trials)",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=1,
        choices=VIEW_COUNTS,
        help="the network's estimate averaged over this many views of its input (a trial)",
    )
    parser.add_argument(
        "--adapt-gap-share",
        type=float,
        help="share of the per-field tuning's episodes that hide a long gap (a trial; "
        "default: as training)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Settings.from_env().cubes_dir
    cubes = [(name, read_cube(folder / f"{name}.nc")) for name in (args.cube or HELD_OUT)]
    checkpoints = args.checkpoint or [None]
    if args.field_episodes is not None:
        if args.field_episodes < 1:
            raise SystemExit("--field-episodes must be 1 or more.")
        inference.FIELD_CALIBRATION_EPISODES = args.field_episodes  # read at each field fit
    if args.field_crop is not None:
        if args.field_crop < 8:
            raise SystemExit("--field-crop must be 8 px or more.")
        inference.FIELD_EPISODE_CROP = args.field_crop  # ditto
    if args.blend_by is not None:
        blend.BLEND_MEASURE = args.blend_by  # ditto
    if args.adapt_gap_share is not None:
        if not 0.0 <= args.adapt_gap_share <= 1.0:
            raise SystemExit("--adapt-gap-share must be between 0 and 1.")
        training.ADAPT_LONG_GAP_SHARE = args.adapt_gap_share  # read at each tuning
    labels = [
        label_of(c)
        + (f"+adapt{args.adapt_steps}" if args.adapt_steps else "")
        + (f"+ep{args.field_episodes}" if args.field_episodes is not None else "")
        + (f"+crop{args.field_crop}" if args.field_crop is not None else "")
        + (f"+{args.blend_by}" if args.blend_by is not None else "")
        + ("+screen" if args.screen_haze else "")
        + ("+nearby" if args.screen_haze and args.haze_nearby else "")
        + ("+scenes" if args.screen_scenes else "")
        + ("+cleantruth" if args.screened_truth else "")
        + ("+alone" if args.network_alone else "")
        + (f"+views{args.views}" if args.views > 1 else "")
        + (f"+gaps{args.adapt_gap_share:g}" if args.adapt_gap_share is not None else "")
        for c in checkpoints
    ]
    seeds = parse_seeds(args.seeds)
    names = [n for n, _ in cubes]
    earlier = {} if args.against is None else earlier_maes(args.against, names, seeds, labels)
    # maes[label][seed][(task, method)]
    maes: dict[str, dict[int, dict[tuple[str, str], float]]] = {label: {} for label in labels}
    ndvi: dict[str, dict[int, dict[tuple[str, str], float]]] = {label: {} for label in labels}
    cover: dict[str, dict[int, dict[tuple[str, str], float]]] = {label: {} for label in labels}
    ndvi_cover: dict[str, dict[int, dict[tuple[str, str], float]]] = {x: {} for x in labels}
    curve_cover: dict[str, dict[int, dict[tuple[str, str], float]]] = {x: {} for x in labels}
    ndvi_score: dict[str, dict[int, dict[tuple[str, str], float]]] = {x: {} for x in labels}
    ndvi_misses: dict[str, dict[int, dict[tuple[str, str], float]]] = {x: {} for x in labels}
    curve_score: dict[str, dict[int, dict[tuple[str, str], float]]] = {x: {} for x in labels}
    curve_mae: dict[str, dict[int, dict[tuple[str, str], float]]] = {x: {} for x in labels}
    settings = "the network alone (K = 1)" if args.network_alone else "the app's settings"
    scored = "scored on (seen ones too)" if args.include_seen else "held out"
    print(f"{scored}: {', '.join(n for n, _ in cubes)}; {settings}; pooled ratio per seed")
    print(f"{'seed':>4s} {'checkpoint':16s} " + " ".join(f"{t:>8s}" for t in TASKS) + "   s")
    for seed in seeds:
        for label, checkpoint in zip(labels, checkpoints, strict=True):
            began = time.perf_counter()
            options = ReconstructOptions(
                samples=1 if args.network_alone else 8,
                calibrate_field=not args.network_alone,
                blend_field=not args.network_alone,
                checkpoint=checkpoint,
                adapt_steps=args.adapt_steps,
                screen_haze=args.screen_haze,
                screen_scenes=args.screen_scenes,
                screen_haze_nearby=args.haze_nearby,
                views=args.views,
            )
            protocol = Protocol(seed=seed, screened_truth=args.screened_truth)
            evaluation = evaluate(
                cubes,
                ["linear", "whittaker", "model"],
                protocol,
                options,
                exclude_seen=not args.include_seen,
            )
            maes[label][seed] = pooled_figures(evaluation, "mae")
            ndvi[label][seed] = pooled_figures(evaluation, "ndvi_mae")
            cover[label][seed] = pooled_figures(evaluation, "coverage")
            ndvi_cover[label][seed] = pooled_figures(evaluation, "ndvi_coverage")
            ndvi_score[label][seed] = pooled_figures(evaluation, "ndvi_interval_score")
            ndvi_misses[label][seed] = pooled_figures(evaluation, "ndvi_band_misses_estimate")
            curve_score[label][seed] = pooled_figures(evaluation, "field_ndvi_interval_score")
            curve_cover[label][seed] = pooled_figures(evaluation, "field_ndvi_coverage")
            curve_mae[label][seed] = pooled_figures(evaluation, "field_ndvi_mae")
            ratios = [ratio(maes[label][seed], task) for task in TASKS]
            print(
                f"{seed:4d} {label:16s} "
                + " ".join(f"{r:8.3f}" for r in ratios)
                + f" {time.perf_counter() - began:5.0f}",
                flush=True,
            )
    summary: dict[str, object] = {"seeds": seeds, "cubes": names, "ratios": {}}
    print("\nover the seeds: median [min - max]; ratio of the MAEs summed over the seeds")
    for label in labels:
        for task in TASKS:
            per_seed = np.array([ratio(maes[label][s], task) for s in seeds])
            total = sum_ratio(maes[label], seeds, task)
            summary["ratios"][f"{label} {task}"] = {  # type: ignore[index]
                "per_seed": per_seed.round(4).tolist(),
                "median": float(np.median(per_seed)),
                "summed": total,
            }
            print(
                f"{label:16s} {task:8s} {np.median(per_seed):.3f} "
                f"[{per_seed.min():.3f} - {per_seed.max():.3f}]  summed {total:.3f}"
            )
    print("\nthe model's p10-p90 coverage (target 70-90 %) and NDVI MAE against both baselines")
    print("(NDVI: the cubes with red and NIR only) per seed: median [min - max]")
    for label in labels:
        for task in TASKS:
            covers = np.array([cover[label][s].get((task, "model"), np.nan) for s in seeds])
            model_ndvi = np.array([ndvi[label][s].get((task, "model"), np.nan) for s in seeds])
            best = np.array(
                [min(ndvi[label][s].get((task, m), np.nan) for m in BASELINES) for s in seeds]
            )
            inside = int(((covers >= 0.7) & (covers <= 0.9)).sum())
            pixel_ndvi = np.array(
                [ndvi_cover[label][s].get((task, "model"), np.nan) for s in seeds]
            )
            curve_ndvi = np.array(
                [curve_cover[label][s].get((task, "model"), np.nan) for s in seeds]
            )
            pixel_score, misses, curve_is = (
                np.array([figures[label][s].get((task, "model"), np.nan) for s in seeds])
                for figures in (ndvi_score, ndvi_misses, curve_score)
            )
            summary["ratios"][f"{label} {task}"].update(  # type: ignore[index]
                coverage=covers.round(3).tolist(),
                ndvi_coverage=pixel_ndvi.round(3).tolist(),
                field_ndvi_coverage=curve_ndvi.round(3).tolist(),
                ndvi_interval_score=pixel_score.round(4).tolist(),
                ndvi_band_misses_estimate=misses.round(4).tolist(),
                field_ndvi_interval_score=curve_is.round(4).tolist(),
                ndvi_model=model_ndvi.round(4).tolist(),
                ndvi_best_baseline=best.round(4).tolist(),
            )
            band = (
                "no band (K = 1)"
                if np.isnan(covers).all()
                else f"coverage {np.median(covers):.2f} [{covers.min():.2f} - {covers.max():.2f}], "
                f"inside 70-90 % on {inside}"
            )
            print(
                f"{label:16s} {task:8s} {band}; "
                f"NDVI {np.median(model_ndvi):.4f} vs the better baseline {np.median(best):.4f}, "
                f"below both on {int((model_ndvi < best).sum())} of {len(seeds)} seeds"
            )
            if not np.isnan(pixel_ndvi).all():
                print(
                    f"{'':16s} {task:8s} per-pixel NDVI band coverage "
                    f"{np.nanmedian(pixel_ndvi):.2f} "
                    f"[{np.nanmin(pixel_ndvi):.2f} - {np.nanmax(pixel_ndvi):.2f}]; the curve's "
                    f"band (field means) {np.nanmedian(curve_ndvi):.2f} "
                    f"[{np.nanmin(curve_ndvi):.2f} - {np.nanmax(curve_ndvi):.2f}]"
                )
                print(
                    f"{'':16s} {task:8s} per-pixel NDVI band interval score "
                    f"{np.nanmedian(pixel_score):.4f} (summed over the seeds "
                    f"{np.nansum(pixel_score):.4f}), estimate outside its band "
                    f"{np.nanmedian(misses):.3f}; the curve band's interval score "
                    f"{np.nanmedian(curve_is):.4f} (summed {np.nansum(curve_is):.4f})"
                )
    print("\nthe curve's figure: MAE of each scored frame's field-mean NDVI (fNDVI), per method")
    print("(the cubes with red and NIR only), summed over the seeds; seeds where the model is best")
    for label in labels:
        for task in TASKS:
            per_method = {
                m: np.array([curve_mae[label][s].get((task, m), np.nan) for s in seeds])
                for m in (*BASELINES, "model")
            }
            summary["ratios"][f"{label} {task}"]["field_ndvi_mae"] = {  # type: ignore[index]
                m: v.round(4).tolist() for m, v in per_method.items()
            }
            if np.isnan(per_method["model"]).all():
                continue
            best = np.minimum(*(per_method[m] for m in BASELINES))
            wins = [str(int((per_method["model"] < per_method[m]).sum())) for m in BASELINES]
            print(
                f"{label:16s} {task:8s} "
                + ", ".join(f"{m} {np.nansum(v):.4f}" for m, v in per_method.items())
                + f"; the model below both on {int((per_method['model'] < best).sum())} of "
                f"{len(seeds)}, below {', '.join(BASELINES)} on " + " / ".join(wins)
            )
    labels = [*earlier, *labels]
    maes.update(earlier)
    if len(labels) > 1:
        print(f"\npaired against {labels[0]}: median difference of the ratio, seeds won / lost")
        for label in labels[1:]:
            for task in TASKS:
                diff = np.array(
                    [ratio(maes[label][s], task) - ratio(maes[labels[0]][s], task) for s in seeds]
                )
                print(
                    f"{label:16s} {task:8s} {np.median(diff):+.3f}  "
                    f"better on {int((diff < 0).sum())}, worse on {int((diff > 0).sum())}"
                )
    if args.json is not None:
        summary["maes"] = {
            label: {str(s): {f"{t} {m}": v for (t, m), v in d.items()} for s, d in runs.items()}
            for label, runs in maes.items()
            if label not in earlier
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


def earlier_maes(
    path: Path, cubes: list[str], seeds: list[int], labels: list[str]
) -> dict[str, dict[int, dict[tuple[str, str], float]]]:
    """An earlier run's pooled MAEs (``--against``), checked to hold these cubes and seeds and
    no run named as one of ``labels``, before anything is evaluated."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data["cubes"] != cubes or set(seeds) - {int(s) for s in data["seeds"]}:
        raise SystemExit(f"{path} does not hold these cubes and seeds.")
    runs = {
        name: {int(s): {tuple(k.split(" ", 1)): v for k, v in d.items()} for s, d in per.items()}
        for name, per in data["maes"].items()
    }
    clash = set(runs) & set(labels)
    if clash:
        raise SystemExit(f"{path} has a run named {', '.join(clash)} too: rename one.")
    return runs  # type: ignore[return-value]


def label_of(checkpoint: Path | None) -> str:
    """A checkpoint's name in the table: its file's stem, or "shipped" for the default."""
    if checkpoint is None or checkpoint.resolve() == DEFAULT_CHECKPOINT.resolve():
        return "shipped"
    return checkpoint.stem


def ratio(maes: dict[tuple[str, str], float], task: str) -> float:
    """The model's MAE over the better baseline's, for one seed's pooled figures."""
    best = min(maes.get((task, m), np.inf) for m in BASELINES)
    return maes.get((task, "model"), np.nan) / best


def sum_ratio(runs: dict[int, dict[tuple[str, str], float]], seeds: list[int], task: str) -> float:
    """The ratio of the MAEs summed over the seeds (each seed weighs alike)."""
    total = {m: sum(runs[s].get((task, m), np.nan) for s in seeds) for m in BASELINES}
    model = sum(runs[s].get((task, "model"), np.nan) for s in seeds)
    return float(model / min(total.values()))


if __name__ == "__main__":
    raise SystemExit(main())
