"""``python -m core train``: train the reconstruction model on real cubes."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from core.config import Settings
from core.errors import InputError
from core.model.config import BAND_TARGET, NARROW_BAND_COVERAGE, ModelConfig, TrainConfig
from core.reconstruct import SEED_LIMIT
from core.storage import claimed

TINY_MODEL = {"width": 16, "depth": 1, "heads": 2, "flow_hidden": 32, "flow_layers": 1}
"""The network of ``--tiny`` (smoke tests: trains in seconds)."""
TINY_TRAINING = {"steps": 10, "batch_size": 2, "crop": 16, "min_frames": 6, "max_frames": 8}

FINE_TUNE_STEPS = 600
"""Default ``--steps`` with ``--init``: the README's fine-tuning on a region (5-6 minutes on 2
CPU cores); from scratch the default is :class:`TrainConfig`'s (3000: review 18 found a fine-tune
without ``--steps`` running half an hour)."""
FINE_TUNE_LR = 3e-4
"""Default peak learning rate with ``--init``: m5 (from m4) and the regional fine-tuning of the
README were trained at it; the from-scratch default (1e-3) for 3 steps on one small cube
collapsed the shipped model's sample spread."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, help="folder of cube .nc files (default: shared cubes)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the checkpoint to write, NAME.pt (its training record goes beside it as NAME.json); "
        "a file in the models folder is offered by the app",
    )
    parser.add_argument(
        "--holdout", default="", help="comma-separated sites never used (for honest evaluation)"
    )
    parser.add_argument(
        "--release-holdout",
        default="",
        help="with --init: comma-separated sites the checkpoint held out that this training may "
        "use on purpose (the new record no longer counts them as held out)",
    )
    parser.add_argument(
        "--calibrate-on",
        default="",
        help="comma-separated sites, not trained on, used to fit the uncertainty spread and to "
        "validate (default: the training sites)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimizer steps (default {TrainConfig.steps}; with --init {FINE_TUNE_STEPS})",
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default {TrainConfig.lr:g}; with --init {FINE_TUNE_LR:g}: "
        "a trained model's weights are a start to keep)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this checkpoint's weights and model config (fine-tuning); the record "
        "keeps its sites and steps",
    )
    parser.add_argument("--width", type=int, default=None, help="token width")
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks")
    parser.add_argument(
        "--smooth-features",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="feed the leave-one-out kernel smoother as input channels (default: on)",
    )
    parser.add_argument(
        "--whittaker-features",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="feed the Whittaker smoother's curve (GCV) as input channels (default: off)",
    )
    parser.add_argument(
        "--scale-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="predict a per-pixel residual scale so the band follows the expected error "
        "(default: off; with --init, adds one to a checkpoint that has none)",
    )
    parser.add_argument(
        "--heads-only",
        action="store_true",
        help="train only the scale and flow heads (with --init: the best estimate stays the "
        "initial checkpoint's)",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny config for smoke tests")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--log-every", type=int, default=50, metavar="N", help="print a step line every N steps"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--validation-episodes", type=int, default=48)
    parser.add_argument(
        "--band-dropout", type=float, default=None, help="probability of hiding bands in training"
    )
    parser.add_argument(
        "--ndvi-weight",
        type=float,
        default=None,
        help="weight of the per-pixel NDVI L1 term beside the reflectance L1 "
        f"(default {TrainConfig.ndvi_weight:g})",
    )
    parser.add_argument(
        "--field-ndvi-weight",
        type=float,
        default=None,
        help="weight of an L1 term on each hidden frame's mean NDVI (the curve's figure; 0: off)",
    )
    parser.add_argument(
        "--unseen-share",
        type=float,
        default=None,
        help="share of episodes whose blank frames enter unseen by the others, as dates asked "
        "for with no acquisition do at inference (0: never)",
    )
    parser.add_argument(
        "--date-jitter",
        type=float,
        default=None,
        help="probability that a hidden frame with no observation left is moved 1-2 days, off "
        "Sentinel-2's 5-day cadence, where most days of a daily curve lie (0: never)",
    )
    parser.add_argument(
        "--season-dropout",
        type=float,
        default=None,
        help="probability that a training episode's day of year is withheld, so that the "
        "network also learns to read a series without its training sites' calendars (0: never)",
    )
    parser.add_argument(
        "--spectral-jitter",
        type=float,
        default=None,
        help="std of the random log gain on each training episode's reflectance (0: off)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from core.storage import check_output_path

    check_numbers(args)
    data = args.data or settings.cubes_dir
    if not Path(data).exists():
        raise InputError(f"--data {data} does not exist; pass the folder that holds the cubes.")
    if not Path(data).is_dir():
        raise InputError(f"--data {data} is a file; pass the folder that holds the cubes (*.nc).")
    paths = sorted(Path(data).glob("*.nc"))
    if not paths:
        raise InputError(f"No cube files (*.nc) in {data}; pass --data with a folder of cubes.")
    inputs = [*paths, *([args.init] if args.init is not None else [])]
    check_output_path(args.out, inputs=inputs)
    record = check_output_path(args.out.with_suffix(".json"), inputs=inputs)  # the record
    if record.is_file() and not args.out.exists() and not _is_record(record):
        raise InputError(  # review 18: an evaluation report there was replaced without a word
            f"{record} exists and is not a model's training record (where this training writes "
            f"its own, beside {args.out.name}): move it, or choose another --out."
        )
    if args.log_every < 1:
        raise InputError(f"--log-every must be 1 or more, not {args.log_every}.")
    # One training at a time writes a given file: a second one started meanwhile (another
    # terminal, the app's region button) moved the first one's result, or the model that was
    # there, out of the way and said it was kept (review 13).
    with training_claim(args.out):
        return _train_and_save(args, settings, data, paths)


def _train_and_save(
    args: argparse.Namespace, settings: Settings, data: str | Path, paths: list[Path]
) -> int:
    from dataclasses import replace

    from core.grid import bounds_latitude
    from core.model.checkpoint import Checkpoint, replace_checkpoint, training_total
    from core.model.features import in_southern_seasons
    from core.model.inference import resolve_device
    from core.model.training import (
        MIN_CLEAR_FRAMES,
        calibrate,
        footprints_of,
        held_out_inside,
        load_series,
        merged_footprints,
        train,
        trainable_series,
        unusable_reason,
        validation_episodes,
    )

    device = resolve_device(args.device)
    model_config, train_config = ModelConfig(), TrainConfig(seed=args.seed, threads=args.threads)
    if args.tiny:
        model_config = replace(model_config, **TINY_MODEL)
        train_config = replace(train_config, **TINY_TRAINING)
    init = None
    if args.init is not None:
        from core.model.checkpoint import load_checkpoint

        init = load_checkpoint(args.init)
        if (
            args.tiny
            or args.width
            or args.depth
            or args.smooth_features is not None
            or args.whittaker_features is not None
        ):
            raise InputError(
                "--init takes the model config from the checkpoint; drop "
                "--tiny/--width/--depth/--smooth-features/--whittaker-features."
            )
        model_config = init.config
        if init.config.scale_head and args.scale_head is False:
            raise InputError(f"{args.init} has a scale head; it cannot be dropped (--scale-head).")
    overrides = {
        "width": args.width,
        "depth": args.depth,
        "smooth_features": args.smooth_features,
        "whittaker_features": args.whittaker_features,
        "scale_head": args.scale_head,
    }
    model_config = replace(model_config, **{k: v for k, v in overrides.items() if v is not None})
    if args.steps is not None:
        train_config = replace(train_config, steps=args.steps)
    elif init is not None and not args.tiny:
        train_config = replace(train_config, steps=FINE_TUNE_STEPS)
    if args.batch_size is not None:
        train_config = replace(train_config, batch_size=args.batch_size)
    if args.lr is not None:
        train_config = replace(train_config, lr=args.lr)
    elif init is not None:
        train_config = replace(train_config, lr=FINE_TUNE_LR)
    if args.heads_only:
        if init is None:
            raise InputError(
                "--heads-only trains the heads on top of a trained trunk; give it with --init."
            )
        train_config = replace(train_config, heads_only=True)
    if args.band_dropout is not None:
        train_config = replace(train_config, band_dropout=args.band_dropout)
    if args.spectral_jitter is not None:
        if not 0 <= args.spectral_jitter <= 1:
            raise InputError(
                f"--spectral-jitter must be between 0 and 1, not {args.spectral_jitter}."
            )
        train_config = replace(train_config, spectral_jitter=args.spectral_jitter)

    if args.unseen_share is not None:
        if not 0 <= args.unseen_share <= 1:
            raise InputError(f"--unseen-share must be between 0 and 1, not {args.unseen_share}.")
        train_config = replace(train_config, unseen_share=args.unseen_share)

    if args.date_jitter is not None:
        if not 0 <= args.date_jitter <= 1:
            raise InputError(f"--date-jitter must be between 0 and 1, not {args.date_jitter}.")
        train_config = replace(train_config, date_jitter=args.date_jitter)

    if args.season_dropout is not None:
        if not 0 <= args.season_dropout <= 1:
            raise InputError(
                f"--season-dropout must be between 0 and 1, not {args.season_dropout}."
            )
        train_config = replace(train_config, season_dropout=args.season_dropout)

    if args.ndvi_weight is not None:
        train_config = replace(train_config, ndvi_weight=args.ndvi_weight)

    if args.field_ndvi_weight is not None:
        train_config = replace(train_config, field_ndvi_weight=args.field_ndvi_weight)

    from core.cli.evaluate import check_cubes

    folder = Path(data) if Path(data).is_dir() else None
    check_cubes(paths, folder, "or train on a folder of the good ones")  # every bad one at once
    all_series = [load_series(p) for p in paths]
    for series in all_series:
        if series.floored:
            print(f"note: {series.site}: {series.floored}", file=sys.stderr)
    southern = sorted(s.site for s in all_series if in_southern_seasons(bounds_latitude(s.bounds)))
    for site in southern:
        print(
            f"note: {site} lies south of the Tropic of Capricorn: its dates are read half a year "
            "on, so its seasons line up with the north's (README, the seasons south of the "
            "tropics)",
            file=sys.stderr,
        )
    sites = {s.site for s in all_series}
    init_holdout = set(init.record.get("holdout_sites", [])) if init is not None else set()
    if absent := sorted(
        {r.strip() for r in args.release_holdout.split(",") if r.strip()} & init_holdout - sites
    ):  # review 18: "names unknown sites" of the checkpoint's own held-out site
        raise InputError(
            f"--release-holdout names {absent}, which {args.init} held out but which is not in "
            f"--data ({sorted(sites)}): there is nothing of it to train on, so nothing to release."
        )
    release = _site_list(args.release_holdout, sites, "--release-holdout")
    if release and init is None:
        raise InputError(
            "--release-holdout names sites a checkpoint held out; give it with --init."
        )
    if release - init_holdout:
        raise InputError(
            f"--release-holdout names {sorted(release - init_holdout)}, which {args.init} did not "
            f"hold out; it held out {sorted(init_holdout)}."
        )
    # A site the checkpoint held out that is not in this data stays unseen by itself, and may be
    # named in --holdout all the same (the shipped model's, fine-tuned on one's own cubes).
    holdout = _site_list(args.holdout, sites | (init_holdout - release), "--holdout") & sites
    unseen_before = init_holdout - release
    leaking = (unseen_before & sites) - holdout
    if leaking:
        raise InputError(
            f"{args.init} held out {sorted(leaking)}, which are in {data}; hold them out again "
            "(--holdout) or the fine-tuned model will have seen them (--release-holdout trains "
            "on them on purpose)."
        )
    calibration_sites = _site_list(args.calibrate_on, sites, "--calibrate-on")
    if holdout & calibration_sites:
        raise InputError("A site cannot be both held out and used for calibration.")
    training = [s for s in all_series if s.site not in holdout | calibration_sites]
    if not training:
        raise InputError(
            "No site is left to train on: every site is held out (--holdout) or kept for "
            "calibration (--calibrate-on); keep at least one for training."
        )
    # Cubes training cannot cut an episode from (a few pixels, a season of cloud) are named
    # and left out of training, calibration and the record alike; review 18: kept in the
    # calibration, one left it 1 episode of 48, or none and a traceback after the training.
    reasons = {id(s): unusable_reason(s, model_config.patch) for s in all_series}
    calibration = [s for s in all_series if s.site in calibration_sites]
    if unfit := [reasons[id(s)] for s in calibration if reasons[id(s)]]:
        raise InputError(
            f"Cannot calibrate on these cubes: {'; '.join(unfit)}. A calibration cube needs "
            f"{MIN_CLEAR_FRAMES} Sentinel-2 frames with clear pixels and at least "
            f"{model_config.patch} x {model_config.patch} px. Give --calibrate-on larger or "
            "longer cubes."
        )
    if left_out := [reasons[id(s)] for s in training if reasons[id(s)]]:
        print(f"warning: left out, too little to train on: {'; '.join(left_out)}", file=sys.stderr)
    training = trainable_series(training, model_config.patch)  # InputError if none is left
    validation = calibration or training
    print(
        f"training on {[s.site for s in training]}; calibrating on "
        f"{[s.site for s in validation]}; never used: {sorted(holdout | unseen_before)}; "
        f"device {device}",
        file=sys.stderr,
    )
    # Cut before the training, so that a set that gives none stops it before, not after.
    episodes = validation_episodes(
        validation,
        args.validation_episodes,
        train_config,
        seed=1234,
        smooth_features=model_config.smooth_features,
        whittaker_features=model_config.whittaker_features,
        patch=model_config.patch,
    )
    if not episodes:
        raise InputError(
            f"Not one validation episode could be cut from {[s.site for s in validation]} "
            f"(crops of {train_config.crop} px with hidden clear pixels): give larger cubes, "
            "or others with --calibrate-on."
        )
    started = time.time()

    def progress(step: int, total: int, figures: dict[str, float]) -> None:
        if step == 1 or step % args.log_every == 0 or step == total:
            shown = " ".join(f"{k}={v:.4f}" for k, v in figures.items())
            print(f"step {step}/{total} {shown} ({time.time() - started:.0f}s)", file=sys.stderr)

    model, record = train(
        training,
        model_config,
        train_config,
        device=device,
        progress=progress,
        init=init.model if init is not None else None,
    )
    if init is not None:
        record.update(
            initialised_from=str(args.init),
            seen_sites=sorted(set(record["seen_sites"]) | set(init.seen_sites)),
            seen_footprints=merged_footprints(record["seen_footprints"], init.seen_footprints),
            # what the checkpoint had been trained for, its own fine-tunings included
            steps_before=training_total(init.record, "steps"),
            seconds_before=training_total(init.record, "seconds"),
        )
    model = model.cpu()
    figures = calibrate(model, episodes, target_coverage=BAND_TARGET, seed=train_config.seed)
    for warning in _training_warnings(figures):
        print(f"warning: {warning}", file=sys.stderr)
    # A cube of one's own (a field fetched, a Run's cube) may lie inside a held-out site's
    # cube under another name: that site is then no longer unseen, whatever the names say.
    seen_now = merged_footprints(record["seen_footprints"], footprints_of(validation))
    folders = [Path(data), settings.cubes_dir]
    overlapped = held_out_inside(sorted(holdout | unseen_before), seen_now, folders)
    if overlapped:
        print(
            f"warning: the training cubes overlap those of the held-out sites {overlapped}: "
            "the model has seen part of them, so its record no longer holds them out (evaluate "
            "scores it elsewhere)",
            file=sys.stderr,
        )
    record.update(
        data=str(Path(data).resolve()),
        holdout_sites=sorted((holdout | unseen_before) - set(overlapped)),
        seen_inside_holdout=overlapped,
        tuned_sites=sorted({s.site for s in validation}),
        red_floor_screened={s.site: s.floored for s in [*training, *validation] if s.floored},
        southern_season_sites=southern,
        seen_footprints=seen_now,
        validation=figures,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    checkpoint = Checkpoint(
        model=model, train_config=train_config, spread_scale=figures["spread_scale"], record=record
    )
    kept = replace_checkpoint(checkpoint, args.out)
    if kept is not None:
        print(
            f"The checkpoint that was at {args.out} is kept as {kept} (with its record); to "
            f"put it back: mv {kept} {args.out} && mv {kept.with_suffix('.json')} "
            f"{args.out.with_suffix('.json')}"
        )
    print(
        f"saved {args.out} ({record['parameters']} parameters, {record['seconds']} s); validation "
        f"MAE {figures['mae_model']:.4f} vs interpolation {figures['mae_interpolation']:.4f} "
        f"(ratio {figures['mae_ratio']:.3f}); p10-p90 coverage "
        f"{figures['coverage_uncalibrated']:.2f}"
        f" -> {figures['coverage_calibrated']:.2f} with spread scale {figures['spread_scale']:.2f}"
    )
    return 0


def _is_record(path: Path) -> bool:
    """Is ``path`` a checkpoint's training record (what ``train`` writes beside NAME.pt)?"""
    import json

    try:
        text = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(text, dict) and {"model_config", "record"} <= set(text)


@contextlib.contextmanager
def training_claim(out: Path) -> Iterator[None]:
    """Hold ``out`` for this training while inside (:func:`core.storage.claimed`: a lock on
    ``.NAME.pt.lock`` beside it).

    Raises:
        InputError: another training holds it now.
    """
    busy = (
        f"Another training is writing {out} now; wait until it has ended, or choose another --out."
    )
    with claimed(out.with_name(f".{out.name}.lock"), busy, where="--out"):
        yield


MAX_VALIDATION_EPISODES = 1000
"""Most ``--validation-episodes``: review 16 measured 1.1 MB and 10 ms per episode with the tiny
model, taken after the whole training, so a slip of a few zeros lost an hour's training."""


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse, before any cube is read, numbers the training cannot run with.

    Raises:
        InputError: which option, what it was, and what it must be.
    """
    if args.out.suffix != ".pt":
        raise InputError(
            f"--out {args.out} must be a .pt file: the checkpoint (its training record is "
            f"written beside it as {args.out.with_suffix('.json').name})."
        )
    at_least_one = {
        "--steps": args.steps,
        "--batch-size": args.batch_size,
        "--depth": args.depth,
        "--validation-episodes": args.validation_episodes,
    }
    for flag, value in at_least_one.items():
        if value is not None and value < 1:
            raise InputError(f"{flag} must be 1 or more, not {value}.")
    if args.validation_episodes > MAX_VALIDATION_EPISODES:  # held in memory after training
        raise InputError(
            f"--validation-episodes must be at most {MAX_VALIDATION_EPISODES}, not "
            f"{args.validation_episodes}: they are cut once the training has run and held in "
            "memory before the checkpoint is saved (about 1 MB each with the tiny model, more "
            "with a full one); the default is 48."
        )
    if args.threads < 0:
        raise InputError(f"--threads must be 0 (torch's default) or more, not {args.threads}.")
    if not 0 <= args.seed < SEED_LIMIT:
        raise InputError(f"--seed must be between 0 and {SEED_LIMIT - 1}, not {args.seed}.")
    if args.width is not None:
        heads = TINY_MODEL["heads"] if args.tiny else ModelConfig.heads
        step = 2 * heads  # each attention head's rotary pairs need an even width
        if args.width < step or args.width % step:
            raise InputError(
                f"--width must be a multiple of {step} (the model's {heads} attention heads, "
                f"each of an even width), not {args.width}; e.g. {8 * step} or {12 * step}."
            )
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise InputError(f"--lr must be a positive number, not {args.lr}.")
    for flag, value in (
        ("--ndvi-weight", args.ndvi_weight),
        ("--field-ndvi-weight", args.field_ndvi_weight),
    ):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputError(f"{flag} must be 0 or more, not {value}.")
    if args.band_dropout is not None and not 0 <= args.band_dropout <= 1:
        raise InputError(f"--band-dropout must be between 0 and 1, not {args.band_dropout}.")


def _training_warnings(figures: dict[str, float]) -> list[str]:
    """What the calibration figures say went wrong: the model erring more than the
    interpolation it starts from, or a band that cannot cover the target at any width."""
    said = []
    if figures["mae_ratio"] > 1:
        said.append(
            f"on the calibration values the model errs {figures['mae_ratio']:.2f} x as much as "
            "the linear interpolation it starts from: this training made it worse. Train at a "
            f"lower --lr (with --init the default is {FINE_TUNE_LR:g}) or for more steps."
        )
    if figures["coverage_calibrated"] < NARROW_BAND_COVERAGE:
        said.append(
            f"the p10-p90 band holds only {figures['coverage_calibrated']:.0%} of the calibration "
            f"values at its widest ({BAND_TARGET:.0%} wanted). Train at a lower --lr or for more "
            "steps; the app fits the band on each field (Settings), so its bands stay usable."
        )
    return said


def _site_list(text: str, sites: set[str], flag: str) -> set[str]:
    chosen = {s.strip() for s in text.split(",") if s.strip()}
    unknown = chosen - sites
    if unknown:
        raise InputError(f"{flag} names unknown sites {sorted(unknown)}; sites: {sorted(sites)}.")
    return chosen
