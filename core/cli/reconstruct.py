"""``python -m core reconstruct``: cloud-free S2 frames of a cube at chosen dates, as NetCDF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from core.config import Settings, checkpoint_option
from core.cube import bands_present, ndvi_bands_lacking, read_cube
from core.errors import InputError
from core.model.catalog import named_checkpoint
from core.reconstruct import (
    HAZE_SCREEN_ATTR,
    PIXELWISE_METHODS,
    ReconstructOptions,
    available_methods,
    check_options,
    default_method,
    reconstruct,
    with_samples,
    write_reconstruction,
)
from core.screening import NEARBY_PX, NEARBY_SHARE, SPARSE_SCENE_SHARE
from core.storage import check_output_path
from core.timeline import calendar_day, parse_date, parse_date_list, regular_dates


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's own options (``reconstruct``, ``ndvi``, ``batch`` and ``evaluate``)."""
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="ODE steps of the model (default: the checkpoint's, 8; 4 with --calibrate-field)",
    )
    parser.add_argument(
        "--adapt-steps",
        type=int,
        default=0,
        help="model: steps of self-supervised tuning on this cube's clear pixels first (0: none)",
    )
    parser.add_argument(
        "--calibrate-field",
        action="store_true",
        help="model, K > 1: fit the p10-p90 band's width on this cube's own clear pixels",
    )
    parser.add_argument(
        "--fit-curve-band",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model, with --calibrate-field: fit the NDVI curve's field-mean band on this "
        "cube's hidden frames (default: on; --no-fit-curve-band: field means of the per-pixel "
        "NDVI bands)",
    )
    parser.add_argument(
        "--curve-band-by-distance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model, with the curve band fitted: its factor fitted per distance to clear data "
        "(<= 8, 8-20, > 20 days) and read off a line at each day's distance (default: on; "
        "--no-curve-band-by-distance: one factor for every day)",
    )
    parser.add_argument(
        "--fit-ndvi-band",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="model, with --calibrate-field: scale the per-pixel NDVI p10/p90 (the samples' "
        "band, moved onto the estimate) per distance to clear data to hold 80 %% of this "
        "cube's hidden pixels (default: off; held out it over-narrowed the long gap's band)",
    )
    parser.add_argument(
        "--ndvi-error-band",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="model, with --calibrate-field and the error band: the per-pixel NDVI p10/p90 "
        "from the field's own NDVI errors too (per distance to clear data), not the samples'",
    )
    parser.add_argument(
        "--band-by-distance",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="model, with --calibrate-field: fit the band's width per distance to the nearest "
        "clear observation (<= 8, 8-20, > 20 days) rather than once for the field",
    )
    parser.add_argument(
        "--error-band",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model, with --calibrate-field: the reflectance p10/p90 from the estimate's own "
        "errors on this cube's hidden clear pixels, per band and distance to clear data "
        "(default: on; --no-error-band: the samples' p10/p90)",
    )
    parser.add_argument(
        "--blend-field",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model: blend with the Whittaker smoother where, on this cube's own clear pixels "
        "(hidden in turn), that does better (default: on; --no-blend-field: the network alone)",
    )
    parser.add_argument(
        "--smooth-days",
        type=int,
        default=ReconstructOptions.smooth_days,
        help="model: a date off the acquisitions' 5-day cadence is the weighted mean of the "
        "network's estimates up to N days either side (default: "
        f"{ReconstructOptions.smooth_days}; 0: the network's own estimate at every date)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE|NAME",
        help="model checkpoint: a file, or the name of one in the models folder "
        "(FIELDFLOW_MODELS_DIR; default: FIELDFLOW_CHECKPOINT, else the shipped assets/model.pt)",
    )


def add_screen_arguments(parser: argparse.ArgumentParser) -> None:
    """The screens of what the scene mask calls clear, for every method (``reconstruct``,
    ``ndvi``, ``batch`` and ``evaluate``)."""
    parser.add_argument(
        "--screen-haze",
        action="store_true",
        help="every method: treat as cloudy the clear-labelled pixels that look like haze the "
        "scene mask missed: a spike over the pixel's clear observations on both sides in every "
        "band, blue rising with red (core.screening; imagery without B02 and B04 is not "
        "screened)",
    )
    parser.add_argument(
        "--screen-haze-nearby",
        action="store_true",
        help="with --screen-haze: the clear pixels around the haze it finds too, where it took "
        f"{NEARBY_SHARE * 100:.0f}%% or more of an acquisition's clear pixels within {NEARBY_PX} "
        "pixels (thinner haze, bluer than its series). Off: it lowered reflectance errors on a "
        "hazy site but raised the curve's NDVI error (README, evaluation protocol)",
    )
    parser.add_argument(
        "--screen-scenes",
        action="store_true",
        help="every method: treat as cloudy every clear-labelled pixel of an acquisition under "
        f"{SPARSE_SCENE_SHARE * 100:.0f}%% clear (in such mostly cloudy scenes they read well "
        "below the same pixels on clear days; core.screening)",
    )


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``python -m core ndvi``: method and its settings."""
    parser.add_argument(
        "--method",
        default=None,
        help=f"one of {', '.join(available_methods())} (default: {default_method()})",
    )
    parser.add_argument(
        "--samples", type=int, default=1, help="generated samples K; K > 1 adds p10/p90"
    )
    add_model_arguments(parser)
    add_screen_arguments(parser)
    parser.add_argument(
        "--whittaker-lambda",
        type=float,
        default=None,
        help="fixed Whittaker smoothing (default: chosen per pixel by GCV)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the samples")


BAND_OPTIONS = (
    "error_band",
    "band_by_distance",
    "fit_ndvi_band",
    "ndvi_error_band",
    "fit_curve_band",
    "curve_band_by_distance",
)
"""The model's options that shape the band ``--calibrate-field`` fits (with K >= 8 samples)."""


def _given(args: argparse.Namespace, only: tuple[str, ...] | None = None) -> list[str]:
    """The model's options given away from their defaults (``only`` these dests), as typed."""
    defaults = argparse.ArgumentParser()
    add_model_arguments(defaults)
    given = []
    for action in defaults._actions:
        value = getattr(args, action.dest, action.default)
        if action.dest == "help" or value == action.default:
            continue
        if only is not None and action.dest not in only:
            continue
        negated = value is False and len(action.option_strings) > 1  # --no-... was given
        given.append(action.option_strings[1 if negated else 0])
    return given


def unused_model_options(args: argparse.Namespace, method: str) -> str | None:
    """A note (lines) naming options given that change nothing: the model's own when ``method``
    is not the model, ``--whittaker-lambda`` with linear interpolation, and with the model the
    band's options without ``--calibrate-field``, or ``--calibrate-field`` with one sample
    (review 16: each was ignored without a word); None when there are none."""
    notes = []
    calibrate = getattr(args, "calibrate_field", False)
    if method == "model":
        if calibrate and getattr(args, "samples", 1) == 1:
            notes.append(
                "note: --calibrate-field fits the p10-p90 band to the field, and with one "
                "sample (--samples 1, the default here) there is no band: give --samples 8 "
                "or more for one."
            )
        elif not calibrate and (band := _given(args, BAND_OPTIONS)):
            one = len(band) == 1
            notes.append(
                f"note: {', '.join(band)} {'shapes' if one else 'shape'} the band fitted with "
                f"--calibrate-field (and --samples 8 or more); without it "
                f"{'it changes' if one else 'they change'} nothing."
            )
    else:
        given = _given(args)
        if getattr(args, "samples", 1) > 1:  # one value a pixel: p10 and p90 would equal it
            given.insert(0, "--samples")
        if given:
            one = len(given) == 1
            notes.append(
                f"note: {', '.join(given)} {'is an option' if one else 'are options'} of the "
                f"model; the {method} method ignores {'it' if one else 'them'}."
            )
        if method == "linear" and getattr(args, "whittaker_lambda", None) is not None:
            notes.append(
                "note: --whittaker-lambda sets the Whittaker smoother's (and the model's "
                "blend's) smoothing; linear interpolation ignores it."
            )
    return "\n".join(notes) or None


def chosen_checkpoint(args: argparse.Namespace, settings: Settings) -> Path:
    """The checkpoint a command uses: ``--checkpoint`` (a file, or the name of a model in the
    models folder), else ``FIELDFLOW_CHECKPOINT``, else the shipped one.

    Raises:
        InputError: ``--checkpoint`` names neither a file nor a model of the folder.
    """
    if args.checkpoint is None:
        return settings.checkpoint
    return named_checkpoint(args.checkpoint, settings)


def model_checkpoint(args: argparse.Namespace, settings: Settings, method: str) -> Path | None:
    """:func:`chosen_checkpoint` where ``method`` loads a model; None for linear and
    Whittaker, which never do (review 16: a wrong ``--checkpoint`` or FIELDFLOW_CHECKPOINT
    refused their runs; ``--checkpoint`` with them is named as ignored instead)."""
    return None if method in PIXELWISE_METHODS else chosen_checkpoint(args, settings)


def protected_checkpoint(args: argparse.Namespace, settings: Settings) -> Path | None:
    """The checkpoint no output may overwrite, whatever the method (the one a model run would
    use); None where ``--checkpoint`` names nothing there is."""
    try:
        return chosen_checkpoint(args, settings)
    except InputError:
        return None


def check_model_up_front(device: str, checkpoint: Path) -> None:
    """The device and the checkpoint a model run will use, checked before any work: found
    wrong only when the model first ran, ``evaluate`` had scored other cubes and ``bench`` run
    every baseline case for nothing (review 16).

    Raises:
        InputError: an unknown device, cuda where no GPU is visible, or a checkpoint that
            cannot be read.
    """
    from core.model.checkpoint import load_checkpoint
    from core.model.inference import resolve_device

    resolve_device(device)
    load_checkpoint(checkpoint)


def chosen_method(args: argparse.Namespace, settings: Settings) -> str:
    """``--method``, else the model when its checkpoint is there, else linear interpolation.

    Raises:
        InputError: ``--method`` given empty (an unset shell variable ran the model)."""
    if args.method is not None and not args.method.strip():
        raise InputError(
            "--method is empty (an unset variable in a script?): give linear, whittaker or "
            "model, or leave --method out for the default."
        )
    return args.method or default_method(chosen_checkpoint(args, settings))


def options_from_args(
    args: argparse.Namespace,
    settings: Settings,
    *,
    keep_observed: bool = True,
    method: str | None = None,
) -> ReconstructOptions:
    """The :class:`ReconstructOptions` the method arguments ask for. Given ``method``, a
    baseline's samples are 1, as :func:`unused_model_options` tells the user: K copies of its
    one value would write a zero-width p10-p90 band, read as "no uncertainty" (review 6);
    ``evaluate`` leaves it out, scoring every method with the same K."""
    chosen = model_checkpoint(args, settings, method or "model")  # evaluate: any method
    options = ReconstructOptions(
        checkpoint=None if chosen is None else checkpoint_option(chosen),
        samples=args.samples,
        steps=args.steps,
        adapt_steps=args.adapt_steps,
        calibrate_field=args.calibrate_field,
        fit_curve_band=args.fit_curve_band,
        curve_band_by_distance=args.curve_band_by_distance,
        band_by_distance=args.band_by_distance,
        error_band=args.error_band,
        ndvi_error_band=args.ndvi_error_band,
        fit_ndvi_band=args.fit_ndvi_band,
        blend_field=args.blend_field,
        smooth_days=args.smooth_days,
        device=args.device,
        seed=args.seed,
        keep_observed=keep_observed,
        whittaker_lambda=args.whittaker_lambda,
        screen_haze=args.screen_haze,
        screen_scenes=args.screen_scenes,
        screen_haze_nearby=args.screen_haze_nearby,
    )
    if args.screen_haze_nearby and not args.screen_haze:
        raise InputError(
            "--screen-haze-nearby takes the clear pixels around the haze --screen-haze finds; "
            "give --screen-haze too, or leave it out."
        )
    if method in (None, "model"):
        return options
    check_options(method, options)  # a count out of range is still refused, as for the model
    return with_samples(options, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m core reconstruct``."""
    parser.add_argument("--cube", required=True, help="input cube (.nc, see core.cube)")
    parser.add_argument("--dates", help="query dates YYYY-MM-DD,YYYY-MM-DD,...")
    parser.add_argument("--start", help="first query date (with --end)")
    parser.add_argument("--end", help="last query date (with --start)")
    parser.add_argument(
        "--every-days", type=int, default=None, help="spacing of --start..--end (default 1)"
    )
    parser.add_argument("--out", required=True, help="output NetCDF file")
    parser.add_argument(
        "--no-keep-observed",
        dest="keep_observed",
        action="store_false",
        help="reconstruct clear observed pixels too instead of returning them as observed",
    )
    add_method_arguments(parser)


def query_dates(args: argparse.Namespace) -> np.ndarray:
    """The query dates of ``--dates``, or of ``--start``/``--end``/``--every-days``."""
    if args.dates is not None:
        if args.start or args.end or args.every_days is not None:
            raise InputError("Give either --dates or --start/--end/--every-days, not both.")
        return parse_date_list(args.dates)
    for flag, value in (("--start", args.start), ("--end", args.end)):
        if value is not None and not value.strip():  # review 16: said "give --start" to it
            raise InputError(f"{flag} is empty (an unset variable in a script?): give YYYY-MM-DD.")
    if not (args.start and args.end):
        raise InputError(
            "No query dates: give --dates YYYY-MM-DD,... or --start and --end "
            "(with --every-days N, default 1)."
        )
    every = 1 if args.every_days is None else args.every_days
    return regular_dates(args.start, args.end, every)


def outside_note(left_out: int, asked: int, cube: xr.Dataset) -> str:
    """The note on the days of a period asked for that lie outside ``cube``'s acquisitions."""
    first, last = calendar_day(cube["time_s2"].values[[0, -1]])
    return (
        f"note: {left_out} of the {asked} day(s) asked for lie outside the cube's Sentinel-2 "
        f"acquisitions ({first} to {last}) and were left out; fetch a cube for the whole "
        "period to have them."
    )


def wider_cube_note(cube: xr.Dataset, start: str, end: str, method: str) -> str | None:
    """The note of an ``ndvi`` whose cube holds acquisitions beyond the period and the margin
    a fetch takes either side (:data:`core.fetch.PERIOD_MARGIN_DAYS`), with a method that
    uses all of them: its values then differ from the app's and ``batch``'s for the same
    period, which fetch the period and that margin only (review 22: Whittaker up to 0.052
    NDVI, median 0.016, on a four-month cube for a six-week period; linear, which uses the
    acquisitions either side of a day only, agrees)."""
    if method == "linear":
        return None
    from core.fetch import PERIOD_MARGIN_DAYS

    margin = np.timedelta64(PERIOD_MARGIN_DAYS, "D")
    days = calendar_day(cube["time_s2"].values)
    first, last = np.datetime64(start, "D") - margin, np.datetime64(end, "D") + margin
    if not ((days < first) | (days > last)).any():
        return None
    name = "the Whittaker smoother" if method == "whittaker" else "the model"
    return (
        f"note: the cube's acquisitions run from {days[0]} to {days[-1]}, beyond the period and "
        f"the {PERIOD_MARGIN_DAYS} days either side a fetch for it takes; {name} uses all of "
        "them, so this curve differs from the app's and batch's for the same period (a few "
        "hundredths of NDVI), which fetch those days only. For theirs, fetch the period "
        "(python -m core fetch) and run on that cube."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Reconstruct, write the NetCDF and print a one-line summary."""
    method = chosen_method(args, settings)
    check_output_path(
        args.out,
        inputs=[args.cube],
        model=protected_checkpoint(args, settings),
        writes="NetCDF",
        made_by={"CSV": "`python -m core ndvi`, which writes the NDVI table"},
    )
    dates = query_dates(args)
    cube = read_cube(args.cube)
    left_out = None
    if args.dates is None:  # a period, not dates named one by one: its days within the cube
        first, last = calendar_day(cube["time_s2"].values[[0, -1]])
        days = calendar_day(dates)
        inside = (days >= first) & (days <= last)
        if not inside.any():  # said of the period (review 14: three of its days were listed)
            every = 1 if args.every_days is None else args.every_days
            start, end = calendar_day(np.array([parse_date(args.start), parse_date(args.end)]))
            why = (
                f": its days every {every} from {start} all fall outside it. Use a smaller "
                "--every-days, or --dates."
                if start <= last and end >= first
                else "; pick a period inside it or fetch a cube for that period."
            )
            raise InputError(
                f"No day of the period {start} to {end} lies within the cube's period "
                f"{first} to {last}{why}"
            )
        if not inside.all():
            left_out = outside_note(int((~inside).sum()), dates.size, cube)
            dates = dates[inside]
    options = options_from_args(args, settings, keep_observed=args.keep_observed, method=method)
    result = reconstruct(cube, dates, method=method, options=options)
    path = write_reconstruction(result, args.out)
    kept = int(result["observed"].values.sum())
    height, width = result.sizes["y"], result.sizes["x"]
    print(
        f"Reconstructed {result.sizes['time']} date(s) of {height}x{width} pixels with "
        f"{method} (samples={options.samples}, observed pixels kept: {kept}) -> {path}"
    )
    if left_out:
        print(left_out)
    if lacks := ndvi_bands_lacking(bands_present(cube)):  # review 14: all NaN, without a word
        said = " and no ".join(f"{what} band ({names})" for what, names in lacks)
        print(f"note: the cube has no {said}, so the frames' ndvi layers are empty.")
    from core.season import accuracy_headline, checkpoint_warnings, fit_notes  # the app's words

    screened = result.attrs.get(HAZE_SCREEN_ATTR)
    for note in [screened, accuracy_headline(result.attrs), *fit_notes(result.attrs)]:
        if note:
            print(note)
    for warning in checkpoint_warnings(result.attrs):
        print(f"warning: {warning}", file=sys.stderr)
    if note := unused_model_options(args, method):
        print(note, file=sys.stderr)
    return 0
