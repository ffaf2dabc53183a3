"""The reconstruction contract: cloud-free S2 reflectance of a cube at any dates.

One function, :func:`reconstruct`, serves the CLI (``python -m core reconstruct``), the app,
the NDVI curve and the evaluation, whatever the method (``linear``, ``whittaker``, ``model``).

What every method may rely on, and what the contract guarantees:

* Methods see :func:`observations` of the cube: reflectance set to NaN wherever ``valid`` is 0.
  A cloudy pixel's value never reaches a method, so a method cannot be fooled by bright clouds
  and a hidden evaluation pixel cannot leak.
* The output holds ``s2`` (time, band, y, x) at exactly the requested dates on the input grid,
  NaN for bands the input lacks, ``ndvi`` (time, y, x) and ``observed`` (time, y, x: 1 where the
  value is a kept clear observation). With ``samples > 1`` it also holds ``s2_p10``, ``s2_p90``,
  ``ndvi_p10`` and ``ndvi_p90``, never below 0 reflectance nor outside NDVI's range where the
  estimate is not. The NDVI band always holds the estimate's NDVI, and so does the reflectance
  band fitted on the field's errors (the app's); the samples' reflectance band (no field fit,
  or ``error_band`` off) is their p10-p90, which leaves the estimate out on about 3 % of values.
* With ``keep_observed`` (the default), clear pixels of an acquisition on a requested calendar
  day are returned as observed.
* A pixel that no acquisition images (reflectance NaN in every band of every acquisition,
  cloudy or clear: past the edge of the imagery, or in a strip no swath of the period covers)
  is NaN in every output, whatever the method: the model could invent it from its neighbours,
  but nothing was ever seen there. A pixel imaged only under cloud is the method's to fill.
* The output's attributes name the method and its settings, and whatever the method records
  of how it made this result (:attr:`Prediction.attrs`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr

from core.config import DEFAULT_CHECKPOINT, checkpoint_version
from core.cube import NETCDF_LOCK, S2_BANDS, bands_present, validate_cube
from core.errors import FieldError, InputError
from core.indices import ndvi
from core.model.config import VIEW_COUNTS
from core.screening import Screening, screen_cube
from core.storage import atomic_output
from core.timeline import calendar_day

HAZE_SCREEN_ATTR = "haze_screen"
"""A reconstruction's attribute saying what the haze screen took out (``screen_haze`` only)."""
QUANTILES = (10, 90)


@dataclass(frozen=True)
class ReconstructOptions:
    """How to reconstruct; every method reads the fields it understands and ignores the rest."""

    samples: int = 1
    """Number of generated samples K; K > 1 adds the p10/p90 band (methods without a
    generative part return K identical samples, i.e. a zero-width band)."""
    steps: int | None = None
    """ODE solver steps of the model (None: the model's default; see
    :func:`core.model.inference.default_steps`)."""
    device: str = "auto"
    """"auto", "cpu" or "cuda" (model only)."""
    seed: int = 0
    """Random seed of the samples, for reproducible output."""
    keep_observed: bool = True
    """Return clear observed pixels unchanged at requested observed dates."""
    whittaker_lambda: float | None = None
    """Smoothing of the Whittaker baseline; None chooses it per series (see core.baselines)."""
    checkpoint: Path | None = None
    """Model checkpoint (None: the shipped one in assets/)."""
    keep_samples: bool = False
    """Also return the K samples as ``s2_samples`` (sample, time, band, y, x), e.g. for CRPS."""
    adapt_steps: int = 0
    """Model only: steps of per-field self-supervised adaptation on the cube's own clear
    observations before reconstructing (0: none)."""
    calibrate_field: bool = False
    """Model only, K > 1: refit the width of the p10-p90 band on the cube's own clear
    observations (hidden in turn) instead of using the checkpoint's, fitted on its training
    sites."""
    fit_curve_band: bool = True
    """Model only, with ``calibrate_field``: also fit how wide the band of a field-mean NDVI is
    (``FIELD_NDVI_SCALE_ATTR``; the NDVI curve's band), on the field's own hidden frames.
    False: the field means of the per-pixel NDVI bands, the band of a field whose pixels all
    err together."""
    curve_band_by_distance: bool = True
    """Model only, with ``fit_curve_band``: fit that factor per bucket of a day's distance to
    clear data too (<= 8, 8-20, > 20 days; ``FIELD_NDVI_SCALE_BY_DISTANCE_ATTR``), so that the
    curve's band is narrower next to a clear observation and wider a month from one; a day's
    factor is read off the line through the buckets' factors at their frames' median days
    (``FIELD_NDVI_SCALE_DAYS_ATTR``). False: one factor for every day."""
    band_by_distance: bool = False
    """Model only, with ``calibrate_field``: fit the band's width per bucket of days to the
    pixel's nearest clear observation (<= 8, 8-20, > 20) instead of once for the field, so
    that the band holds 80 % far from clear data as well as near it."""
    error_band: bool = True
    """Model only, with ``calibrate_field``: the reflectance band s2_p10 / s2_p90 from the
    field's own errors instead of the samples: the estimate +- the 80th percentile of its
    absolute error on the field's hidden clear pixels, per band and bucket of days to the
    nearest clear observation (split conformal; :func:`core.model.calibration.fit_error_band`).
    The samples, the NDVI bands and the curve band are unchanged. On by default: on the
    held-out cubes its interval score was 9-24 % lower than the samples' band's at the same
    coverage (README, "The uncertainty band"); False gives the samples' p10-p90 (never below
    0 reflectance unless the estimate is)."""
    ndvi_error_band: bool = False
    """Model only, with ``calibrate_field`` and ``error_band``: the per-pixel NDVI band
    (ndvi_p10 / ndvi_p90, the app's uncertainty map) from the field's own NDVI errors too, per
    bucket of days to the nearest clear observation, and the curve band fitted on it. Off by
    default: held out it lowered the NDVI band's interval score by 13-40 % but over-covered
    (0.95 in the long gap; README, "The uncertainty band")."""
    fit_ndvi_band: bool = False
    """Model only, with ``calibrate_field`` (and not ``ndvi_error_band``): the per-pixel NDVI
    band (the samples' p10-p90 moved onto the estimate, the app's uncertainty map) scaled per
    bucket of days to the nearest clear observation (<= 8, 8-20, > 20) by factors fitted on the
    field's hidden pixels to hold 80 % of them (``NDVI_BAND_FACTORS_ATTR``;
    :func:`core.model.calibration.fit_pixel_ndvi_factors`), and the curve band fitted on it.
    Off by default: held out (hu-alfold, ten draws) it lowered the NDVI band's interval score
    by 20 / 16 % for missing frames and cloud removal but raised it by 11 % in the long gap,
    whose coverage fell to 0.68, and the curve band's by 13-34 % (README, "The uncertainty
    band"; benchmarks/candidates/ndvi_band_fitted_rule.txt)."""
    smooth_days: int = 2
    """Model only: a date off the acquisitions' cadence (not a whole number of 5 days from an
    acquisition) is the triangular-weighted mean of the network's estimates at it and up to
    this many days either side (acquisitions' clear pixels as observed; see
    :func:`core.model.inference.query_kernel`); 0: the network's own estimate at every date.
    Dates on the cadence, acquisitions among them, are never mixed."""
    blend_field: bool = True
    """Model only: blend the model's estimate with the Whittaker smoother, per band and distance
    to the nearest clear observation, with weights fitted on the cube's own clear observations
    (hidden in turn; see core.model.blend). On by default: it lowered every held-out error
    (README, "The field blend"); False gives the network alone."""
    screen_haze: bool = False
    """Every method: before reconstructing, treat as cloudy the clear-labelled pixels that
    look like haze the scene mask missed (:mod:`core.screening`). Off by default. A cube is
    screened once and marked (:data:`core.screening.SCREENED_ATTR`): a Run screens its cube up
    front (:func:`core.season.compute_season`), and its later calls on that cube leave it as
    it is, so its curve, frames, fits and downloads agree."""
    screen_scenes: bool = False
    """Every method: before reconstructing, treat as cloudy every clear-labelled pixel of an
    acquisition under :data:`core.screening.SPARSE_SCENE_SHARE` clear (after the haze screen,
    when that is on; :func:`core.screening.sparse_scenes`). Off by default. Screened once with
    ``screen_haze``, as that is (:func:`screened`)."""
    screen_haze_nearby: bool = False
    """With ``screen_haze``: the screen takes the clear pixels left around the haze it found
    too (:func:`core.screening.haze_nearby`). Off by default: it failed its rule
    (``benchmarks/candidates/haze_nearby_rule.txt``: the model's long gap on pt-santarem rose
    1.0 %, and its curve's NDVI erred up to 17 % more in four cube-tasks of six)."""
    views: int = 1
    """Model only: the network's estimate averaged over this many views of its input (1, 2, 4
    or 8 of the square's turns and mirror images; :meth:`core.model.network.FieldFlowNet.
    estimate`), in the reconstruction and in the field's fits; 1: the input as given. Each
    view costs the network's trunk once more."""
    checkpoint_version: str | None = None
    """Model only: the version of the checkpoint file this call must use
    (:func:`core.config.checkpoint_version`); None: the file as it is now. A computation made
    of several calls (a Run's chunks, a batch field's curve and frames, on any Dask worker) pins
    it at its start (:func:`pinned`), so a checkpoint replaced at the same path meanwhile stops
    it with a message instead of giving it chunks from two models."""


def pinned(options: ReconstructOptions, method: str) -> ReconstructOptions:
    """``options`` with the model's checkpoint file pinned to the version on disk now (see
    :attr:`ReconstructOptions.checkpoint_version`); unchanged for another method or when it is
    pinned already."""
    if method != "model" or options.checkpoint_version is not None:
        return options
    return replace(options, checkpoint_version=checkpoint_version(options.checkpoint))


FIELD_NDVI_SCALE_ATTR = "model_field_ndvi_band_scale"
"""Attribute of a reconstruction whose method fitted how wide a field-mean NDVI band is: the
factor on the distances from the field's mean NDVI to the field means of the per-pixel NDVI p10
and p90 (see :func:`core.curve.field_ndvi_band`)."""

FIELD_NDVI_SCALE_BY_DISTANCE_ATTR = "model_field_ndvi_band_scale_by_distance"
"""Attribute of a reconstruction whose method fitted that factor per bucket of days to clear data
too (``ReconstructOptions.curve_band_by_distance``): the factors fitted on the hidden frames
<= 8, 8-20 and > 20 days from clear data (a frame's median over its hidden pixels). A day's
factor is read off the line through them at ``FIELD_NDVI_SCALE_DAYS_ATTR``
(:func:`core.curve.band_scale`)."""

FIELD_NDVI_SCALE_FRAMES_ATTR = "model_field_ndvi_band_scale_frames"
"""Attribute written with ``FIELD_NDVI_SCALE_BY_DISTANCE_ATTR``: the hidden frames each factor's
bucket held (a bucket with under 10 takes the field's one factor)."""

FIELD_NDVI_SCALE_DAYS_ATTR = "model_field_ndvi_band_scale_days"
"""Attribute written with ``FIELD_NDVI_SCALE_BY_DISTANCE_ATTR``: where each of its factors stands
on the days axis (the median days to clear data of the hidden frames it was fitted on); a day's
factor is read off the line through those points (:func:`core.curve.band_scale`)."""


ERROR_BAND_ATTR = "model_error_band_half_width"
"""Attribute of a reconstruction whose reflectance band came from the field's own errors
(``ReconstructOptions.error_band``): the half widths, reflectance, per band (S2_BANDS order)
and within it per bucket of days to the nearest clear observation (<= 8, 8-20, > 20)."""


NDVI_ERROR_BAND_ATTR = "model_ndvi_error_band_half_width"
"""Attribute of a reconstruction whose per-pixel NDVI band came from the field's own NDVI errors:
the half widths per bucket of days to the nearest clear observation (<= 8, 8-20, > 20)."""

NDVI_BAND_FACTORS_ATTR = "model_ndvi_band_factors"
"""Attribute of a model reconstruction whose per-pixel NDVI band was fitted on the field
(``ReconstructOptions.fit_ndvi_band``): the factors on the band's distances from the estimate
within 8 days of a clear observation, at 8-20 days and further away."""


@dataclass(frozen=True)
class Prediction:
    """What a method returns for Q query dates of a cube of B bands and H x W pixels.

    The arrays are handed over: :func:`reconstruct` writes into them (absent bands, observed
    pixels) rather than copy a large field's samples, so a method returns arrays that nothing
    else holds (a read-only array is copied)."""

    mean: np.ndarray
    """Best estimate, (Q, B, H, W) float32."""
    samples: np.ndarray | None = None
    """Generated samples, (K, Q, B, H, W) float32, or None for deterministic methods."""
    band_half: np.ndarray | None = None
    """Half width of the reflectance band around ``mean``, (Q, B, H, W) float32, where the
    method fits its band apart from the samples (None: the samples' p10-p90)."""
    ndvi_factor: np.ndarray | None = None
    """Factor on the per-pixel NDVI band's distances from the estimate to its edges (the
    samples' band moved onto it, :func:`samples_band_on`), (Q, H, W) float32, where the method
    fitted one (None: 1)."""
    ndvi_half: np.ndarray | None = None
    """Half width of the per-pixel NDVI band around the NDVI of ``mean``, (Q, H, W) float32,
    where the method fits it apart from the samples (None: the p10-p90 of the samples' NDVI,
    moved onto the estimate, :func:`samples_band_on`)."""
    attrs: dict[str, object] = field(default_factory=dict)
    """How the method made it, for the output's attributes (numbers, strings or 1-D number
    arrays, as NetCDF holds them): e.g. the model's per-field fits."""


Method = Callable[[xr.Dataset, np.ndarray, ReconstructOptions], Prediction]
"""A method: (observations, query times datetime64[ns] (Q,), options) -> Prediction."""

Reconstructor = Callable[..., xr.Dataset]
"""Anything with :func:`reconstruct`'s signature ``(cube, dates, method, options)``: the function
itself, or one that runs it on a Dask cluster (:func:`core.distributed.reconstructor`)."""

# name -> "module:function"; imported only when used, so the baselines never load torch.
METHODS: dict[str, str] = {
    "linear": "core.baselines:linear_method",
    "whittaker": "core.baselines:whittaker_method",
    "model": "core.model.inference:model_method",
}

MIN_CALIBRATION_SAMPLES = 8
"""Fewest samples with which the model's band is fitted on the field
(``ReconstructOptions.calibrate_field``): the fit widens the band until 80 % of the field's
hidden values fall in it, and with fewer samples the p10-p90 of each value is too noisy for
that (README, "The uncertainty band")."""
MAX_STEPS = 1000
"""Most ODE steps of the flow head a request may ask for."""
MAX_ADAPT_STEPS = 5000
"""Most steps of per-field tuning (50 by default; 5,000 take about an hour on 2 CPU cores: a
model of one's own for a region is the train command's job)."""
MAX_SMOOTH_DAYS = 30
"""Widest smoothing of the network's estimate at dates with no acquisition, in days each side
(2 by default; the cadence of Sentinel-2 is 5 days, so a month each side is already a seasonal
mean)."""
SEED_LIMIT = 2**63
"""Seeds must lie below this (torch's generators take a signed 64-bit integer)."""
MAX_SAMPLES = 256
"""Most samples one reconstruction draws. From 256 samples the p10 is known to within about
2 percentage points of probability (binomial error sqrt(0.1 x 0.9 / 256)); more only cost time
and memory (each sample is a full copy of the reconstruction)."""

PIXELWISE_METHODS = frozenset({"linear", "whittaker"})
"""Methods that fill a pixel from its own clear observations only: a pixel never seen clear
stays NaN. The model also borrows from the pixels around it."""


def available_methods() -> list[str]:
    """Names of the methods whose implementation is installed."""
    return [name for name, target in METHODS.items() if _importable(target.split(":")[0])]


def _importable(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


def method_choices(checkpoint: Path | None = None) -> list[str]:
    """Methods a user can pick: the installed ones, ``model`` only where ``checkpoint`` (None:
    the shipped one) exists."""
    path = DEFAULT_CHECKPOINT if checkpoint is None else Path(checkpoint)
    return [m for m in available_methods() if m != "model" or path.is_file()]


def default_method(checkpoint: Path | None = None) -> str:
    """``model`` when it is installed and ``checkpoint`` (None: the shipped one) exists, else
    ``linear``."""
    return "model" if "model" in method_choices(checkpoint) else "linear"


def resolve_method(name: str) -> Method:
    """The method called ``name``; InputError listing the choices if unknown."""
    if name not in available_methods():
        choices = ", ".join(available_methods())
        raise InputError(f"Unknown reconstruction method '{name}'; choose one of {choices}.")
    module_name, func_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def observations(cube: xr.Dataset) -> xr.Dataset:
    """The cube as methods see it: ``s2`` is NaN wherever ``valid`` is 0 (clouds never trusted)."""
    cube = validate_cube(cube)
    clear = cube["valid"].values.astype(bool)[:, None, :, :]
    masked = cube.copy()
    masked["s2"] = cube["s2"].where(clear)
    return masked


def reconstruct(
    cube: xr.Dataset,
    dates: np.ndarray,
    method: str = "linear",
    options: ReconstructOptions | None = None,
) -> xr.Dataset:
    """Reconstruct cloud-free S2 frames of ``cube`` at ``dates``.

    Args:
        cube: a cube (see core.cube); pixels whose ``valid`` is 0 are treated as missing.
        dates: query times (Q,), datetime64; sorted and de-duplicated here. Each must lie
            within the cube's S2 period (calendar days of its first and last acquisition).
        method: a name from :func:`available_methods`.
        options: see :class:`ReconstructOptions`.

    Returns:
        The reconstruction dataset described in the module docstring.
    """
    options = options or ReconstructOptions()
    check_options(method, options)
    query = _check_dates(cube, dates)
    check_memory(cube, query.size, options.samples)
    cube, screening = screened(cube, options)
    imaged = imaged_pixels(cube)
    observed = observations(cube)
    require_clear_pixels(observed)
    prediction = resolve_method(method)(observed, query, options)
    out = _assemble(observed, query, prediction, method, options, imaged)
    if screening is not None:  # what was taken out, in words (the command prints it)
        out.attrs[HAZE_SCREEN_ATTR] = screening.summary()
    return out


def screened(cube: xr.Dataset, options: ReconstructOptions) -> tuple[xr.Dataset, Screening | None]:
    """``cube`` through the screens ``options`` ask for and the red-floor screen, always on
    (:func:`core.screening.screen_cube`), and what they took out; None when none was asked
    for and the floor screen found nothing."""
    out, screening = screen_cube(
        cube,
        haze=options.screen_haze,
        scenes=options.screen_scenes,
        nearby=options.screen_haze_nearby,
    )
    if options.screen_haze or options.screen_scenes or screening.count:
        return out, screening
    return cube, None  # unmarked, as it came


def check_options(method: str, options: ReconstructOptions) -> None:
    """InputError for options no reconstruction with ``method`` can run with."""
    if options.samples < 1:
        raise InputError(f"--samples must be at least 1, not {options.samples}.")
    if options.samples > MAX_SAMPLES:
        raise InputError(
            f"--samples {options.samples} is more than FieldFlow draws (at most {MAX_SAMPLES}): "
            "the p10-p90 band is steady from a few dozen samples, and each sample is a full "
            "copy of the reconstruction in memory. Draw 8 to 64."
        )
    if options.steps is not None and not 1 <= options.steps <= MAX_STEPS:
        raise InputError(
            f"--steps must be between 1 and {MAX_STEPS}, not {options.steps}; leave it out for "
            "the model's default (8, or 4 with the band fitted on the field)."
        )
    for name, value, most in (
        ("--adapt-steps", options.adapt_steps, MAX_ADAPT_STEPS),
        ("--smooth-days", options.smooth_days, MAX_SMOOTH_DAYS),
    ):
        if not 0 <= value <= most:
            raise InputError(f"{name} must be between 0 and {most}, not {value}.")
    if options.views not in VIEW_COUNTS:
        raise InputError(f"--views must be 1, 2, 4 or 8, not {options.views}.")
    if not 0 <= options.seed < SEED_LIMIT:
        raise InputError(f"--seed must be between 0 and {SEED_LIMIT - 1}, not {options.seed}.")
    lam = options.whittaker_lambda
    if lam is not None and not (np.isfinite(lam) and lam > 0):
        raise InputError(
            f"--whittaker-lambda must be a positive number, not {lam:g}; leave it out to "
            "choose it per pixel."
        )
    fits_band = method == "model" and options.calibrate_field
    if fits_band and 1 < options.samples < MIN_CALIBRATION_SAMPLES:
        raise InputError(
            f"Fitting the band to the field needs at least {MIN_CALIBRATION_SAMPLES} "
            f"samples, not {options.samples}: with fewer, each value's p10-p90 is so noisy "
            "that the fit widens every band (held out, 4 samples gave 4 x the CRPS of 8 "
            "and 2 samples 60 x). Draw 8 or more, or 1 without a band, or do not fit "
            "the band to the field (--calibrate-field off)."
        )


def check_memory(cube: xr.Dataset, n_dates: int, samples: int) -> None:
    """InputError when the reconstruction of ``n_dates`` dates with ``samples`` samples would
    need more memory than the machine has free, before any of it is allocated.

    Counts only what the returned reconstruction holds per date (mean, samples, their
    quantiles: 10 bands per pixel, float32), not the method's working copies: a floor, so that
    a request that could still fit is never refused (the NDVI curve sizes its chunks of dates
    to :data:`core.curve.CHUNK_BYTES` of the same count).
    """
    pixels = len(S2_BANDS) * cube.sizes["y"] * cube.sizes["x"]
    need = 4 * pixels * n_dates * (samples + 6)
    free = available_memory_bytes()
    if free is not None and need > free:
        raise InputError(
            f"Reconstructing {n_dates} date(s) of {cube.sizes['y']} x {cube.sizes['x']} pixels "
            f"with {samples} sample(s) needs at least {need / 2**30:.1f} GiB of memory; this "
            f"machine has {free / 2**30:.1f} GiB free. Ask for fewer dates (the NDVI curve "
            "splits them by itself), fewer samples, or a smaller field."
        )


def available_memory_bytes() -> int | None:
    """Memory the system could give this process now (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def imaged_pixels(cube: xr.Dataset, *, clear: bool = False) -> np.ndarray:
    """(y, x) bool: the pixels some Sentinel-2 acquisition holds reflectance for, clear or not
    (``clear=True``: clear, the pixels a method of :data:`PIXELWISE_METHODS` gives a value).
    Frame by frame: the whole cube's test would double a large field's memory."""
    s2, valid = cube["s2"].values, cube["valid"].values
    imaged = np.zeros((cube.sizes["y"], cube.sizes["x"]), dtype=bool)
    for t, frame in enumerate(s2):
        held = np.isfinite(frame).any(axis=0)
        imaged |= (held & valid[t].astype(bool)) if clear else held
    return imaged


OUTSIDE_NOTED = 0.01
"""Share of a field outside the imagery from which the page and the command line say so."""


def imaged_part(mask: np.ndarray, cube: xr.Dataset) -> tuple[np.ndarray, float]:
    """The pixels of ``mask`` that some Sentinel-2 acquisition images, and the share of
    ``mask`` that none does (a swath or tile edge, or the edge of the data): field figures
    are measured over the first; measured over the whole field, a field largely outside the
    imagery had no day "mostly clear". Where none is imaged, ``mask`` itself and 1."""
    covered = mask & imaged_pixels(cube)
    if not covered.any():
        return mask, 1.0
    return covered, 1.0 - float(covered.sum()) / float(max(int(mask.sum()), 1))


def require_imaged(outside: float, name: str) -> None:
    """FieldError when ``outside``, the share of the field no Sentinel-2 acquisition images
    (:func:`imaged_part`), is all of it: the field lies outside the imagery. With linear it
    read as clouds ("choose a longer period, or the model"), and the model made an "ok" curve
    of blank days (review 15)."""
    if outside >= 1.0:
        raise FieldError(
            f"No Sentinel-2 acquisition of the period images any pixel of the field '{name}': "
            "it lies outside the imagery (past the edge of the data, or of a swath or tile). "
            "Check that the outline is where the field is."
        )


def clear_pixels(cube: xr.Dataset, mask: np.ndarray | None = None) -> np.ndarray:
    """Per acquisition, how many pixels (of ``mask``, default all) are clear and hold data."""
    clear = cube["valid"].values.astype(bool) & np.isfinite(cube["s2"].values).any(axis=1)
    if mask is not None:
        clear = clear[:, mask]
    return clear.reshape(clear.shape[0], -1).sum(axis=1)


def require_clear_pixels(cube: xr.Dataset) -> None:
    """InputError when not one pixel of any acquisition is clear: nothing to reconstruct from.

    Frame by frame, stopping at the first clear pixel with data: every call of
    :func:`reconstruct` asks, and a large field's cube is gigabytes."""
    valid, s2 = cube["valid"].values, cube["s2"].values
    for t in range(valid.shape[0]):
        clear = valid[t].astype(bool)
        if clear.any() and np.isfinite(s2[t][:, clear]).any():
            return
    first, last = calendar_day(cube["time_s2"].values[[0, -1]])
    n = cube.sizes["time_s2"]
    which = (
        f"its one acquisition ({first}) is"
        if n == 1
        else f"all {n} acquisitions from {first} to {last} are"
    )
    raise InputError(
        f"Not one clear Sentinel-2 pixel: {which} cloud, shadow, snow or nodata here, so "
        "there is nothing to reconstruct from. Choose a longer period or another season."
    )


def _check_dates(cube: xr.Dataset, dates: np.ndarray) -> np.ndarray:
    query = np.unique(np.asarray(dates, dtype="datetime64[ns]"))
    if query.size == 0:
        raise InputError("No query dates given: pass at least one date.")
    first, last = calendar_day(cube["time_s2"].values[[0, -1]])
    outside = [str(d) for d in calendar_day(query) if d < first or d > last]
    if outside:
        raise InputError(
            f"Date(s) {', '.join(outside[:3])} lie outside the cube's period {first} to {last}; "
            "fetch a longer period or pick dates inside it."
        )
    return query


def _assemble(
    observed: xr.Dataset,
    query: np.ndarray,
    prediction: Prediction,
    method: str,
    options: ReconstructOptions,
    imaged: np.ndarray,
) -> xr.Dataset:
    n_query, n_bands = query.size, len(S2_BANDS)
    height, width = observed.sizes["y"], observed.sizes["x"]
    expected = (n_query, n_bands, height, width)
    mean = _writable(prediction.mean)
    if mean.shape != expected:
        raise RuntimeError(f"method {method} returned shape {mean.shape}, expected {expected}")
    samples = prediction.samples
    if options.samples > 1 and samples is None:
        samples = np.broadcast_to(mean, (options.samples, *expected))
    if samples is not None:
        samples = _writable(samples)  # before the mean is written into: a broadcast is copied

    absent = ~bands_present(observed)
    mean[:, absent] = np.nan
    if samples is not None:
        samples[:, :, absent] = np.nan
    unseen = ~imaged  # no acquisition images them: nothing to reconstruct from
    if unseen.any():
        mean[:, :, unseen] = np.nan
        if samples is not None:
            samples[:, :, :, unseen] = np.nan

    half = ndvi_half = ndvi_factor = None
    if prediction.ndvi_factor is not None and samples is not None:
        ndvi_factor = np.asarray(prediction.ndvi_factor, np.float32)
        if ndvi_factor.shape != (n_query, height, width):
            shape = ndvi_factor.shape
            raise RuntimeError(f"method {method} returned NDVI factors of shape {shape}")
    if prediction.band_half is not None and samples is not None:
        half = _writable(prediction.band_half)
        if half.shape != expected:
            raise RuntimeError(f"method {method} returned a band of shape {half.shape}")
    if prediction.ndvi_half is not None and samples is not None:
        ndvi_half = _writable(prediction.ndvi_half)
        if ndvi_half.shape != (n_query, height, width):
            raise RuntimeError(f"method {method} returned an NDVI band of shape {ndvi_half.shape}")

    kept = np.zeros((n_query, height, width), dtype=np.uint8)
    if options.keep_observed:
        obs_days = calendar_day(observed["time_s2"].values)
        obs_s2 = observed["s2"].values
        obs_valid = observed["valid"].values.astype(bool)
        for qi, day in enumerate(calendar_day(query)):
            for ti in np.flatnonzero(obs_days == day):
                # Clear and holding data: a pixel flagged clear without reflectance (a nodata
                # value the mask missed) keeps the method's estimate.
                clear = obs_valid[ti] & np.isfinite(obs_s2[ti]).any(axis=0)
                seen = obs_s2[ti][:, clear]
                mean[qi][:, clear] = np.where(np.isfinite(seen), seen, mean[qi][:, clear])
                if samples is not None:
                    samples[:, qi][:, :, clear] = np.where(
                        np.isfinite(seen)[None], seen[None], samples[:, qi][:, :, clear]
                    )
                if half is not None:
                    half[qi][:, clear] = 0.0
                if ndvi_half is not None:
                    ndvi_half[qi][clear] = 0.0
                kept[qi] |= clear

    dims3, dims4 = ("time", "y", "x"), ("time", "band", "y", "x")
    mean_ndvi = ndvi(mean, band_axis=1)
    data_vars: dict[str, tuple] = {
        "s2": (dims4, mean),
        "ndvi": (dims3, mean_ndvi),
        "observed": (dims3, kept),
    }
    if samples is not None:
        if half is not None:  # around the estimate; reflectance is never below 0
            low, high = band_around(mean, half, 0.0, np.inf)
        elif samples.shape[0] > 1:
            low, high = _nan_percentiles(samples, QUANTILES)
            floor = np.minimum(mean, 0.0)  # nor here, unless the estimate is
            low, high = np.maximum(low, floor), np.maximum(high, floor)
        else:
            low, high = samples[0], samples[0]
        if ndvi_half is not None:  # around the estimate's NDVI, within NDVI's range
            nlow, nhigh = band_around(mean_ndvi, ndvi_half, -1.0, 1.0)
        else:
            sample_ndvi = ndvi(samples, band_axis=2)
            nlow, nhigh = samples_band_on(
                mean_ndvi,
                *_nan_percentiles(sample_ndvi, (10, 50, 90)),
                -1.0,
                1.0,
                1.0 if ndvi_factor is None else ndvi_factor,
            )
        if options.keep_samples:
            data_vars["s2_samples"] = (("sample", *dims4), samples)
        data_vars.update(
            s2_p10=(dims4, low.astype(np.float32)),
            s2_p90=(dims4, high.astype(np.float32)),
            ndvi_p10=(dims3, nlow.astype(np.float32)),
            ndvi_p90=(dims3, nhigh.astype(np.float32)),
        )
    attrs = {
        key: observed.attrs[key]
        for key in ("crs", "resolution_m", "site", "source", "license")
        if key in observed.attrs
    }
    attrs.update(
        method=method, samples=int(options.samples), keep_observed=int(options.keep_observed)
    )
    attrs["options_json"] = options_json(options)  # every setting, to make it again
    attrs.update(prediction.attrs)
    coords = {
        "time": query,
        "band": list(S2_BANDS),
        "y": observed["y"].values,
        "x": observed["x"].values,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _writable(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 to write into: a method's own array as it is (see
    :class:`Prediction`), a copy when it is read-only (a broadcast, a view of shared data) or
    of another type."""
    out = np.asarray(values, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def band_around(
    centre: np.ndarray,
    half: np.ndarray,
    lowest: float,
    highest: float,
    above: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The band ``centre`` - ``half`` .. ``centre`` + ``half`` (+ ``above`` instead where
    given: a band wider on one side), cut to [``lowest``, ``highest``] (a quantity's range) but
    never so far that it leaves out ``centre`` itself."""
    low = np.maximum(centre - half, np.minimum(centre, lowest))
    high = np.minimum(centre + (half if above is None else above), np.maximum(centre, highest))
    return low, high


def samples_band_on(
    centre: np.ndarray,
    low: np.ndarray,
    median: np.ndarray,
    high: np.ndarray,
    lowest: float,
    highest: float,
    factor: float | np.ndarray = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The samples' band ``low``..``high`` moved so that their ``median`` sits at ``centre``
    (the estimate): ``centre`` - (median - low) .. ``centre`` + (high - median), both
    distances times ``factor`` (one per value where fitted on the field), cut to
    [``lowest``, ``highest``] but never so far that it leaves out ``centre``.

    The per-pixel NDVI band: the estimate is the NDVI of the best estimate of reflectance, not
    the median of the samples' NDVI, and the samples' own p10-p90 left it out on 2-3 % of
    pixel-dates (review 9; up to 15 % on a field with one clear acquisition). Moved, the band
    keeps its width and holds its estimate; held out its interval score was lower (README,
    "The uncertainty band")."""
    below = factor * np.maximum(median - low, 0.0)
    above = factor * np.maximum(high - median, 0.0)
    return band_around(centre, below, lowest, highest, above)


def _nan_percentiles(samples: np.ndarray, percents: tuple[int, ...]) -> list[np.ndarray]:
    """``np.nanpercentile(samples, percents, axis=0)`` (linear method), vectorised.

    numpy's own falls back to a Python loop over every slice that holds a NaN (absent bands,
    never-observed pixels), which takes minutes on a year of daily frames.
    """
    ordered = np.sort(samples, axis=0)  # NaN sorts last
    # Usually every slice is all numbers or all NaN (NaN only for an absent band or a pixel
    # without data): then the positions are the same everywhere and need no gathering; NaN
    # stays NaN.
    uniform = not (np.isnan(ordered[-1]) & ~np.isnan(ordered[0])).any()
    if uniform:
        last = np.intp(samples.shape[0] - 1)
    else:
        count = (~np.isnan(ordered)).sum(axis=0)
        last = np.maximum(count - 1, 0)
    out = []
    for percent in percents:
        position = last * (percent / 100.0)
        below = np.floor(position).astype(np.intp)
        above = np.minimum(below + 1, last)
        if uniform:
            low, high = ordered[below], ordered[above]
        else:
            low = np.take_along_axis(ordered, below[None], axis=0)[0]
            high = np.take_along_axis(ordered, above[None], axis=0)[0]
        value = low + (position - below) * (high - low)
        if not uniform:
            value = np.where(count > 0, value, np.nan)
        out.append(value.astype(samples.dtype))
    return out


def options_json(options: ReconstructOptions) -> str:
    """Every field of ``options`` as JSON (paths as text), sorted: what made an output."""
    fields = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in asdict(options).items()}
    return json.dumps(fields, sort_keys=True, default=str)


VARIABLE_WORDS: dict[str, tuple[str, str]] = {
    "s2": ("1", "surface reflectance, Sentinel-2 L2A (0-1)"),
    "s2_p10": ("1", "surface reflectance, lower edge of the p10-p90 band"),
    "s2_p90": ("1", "surface reflectance, upper edge of the p10-p90 band"),
    "s2_samples": ("1", "surface reflectance, generated samples"),
    "ndvi": ("1", "NDVI, (NIR - red) / (NIR + red)"),
    "ndvi_p10": ("1", "NDVI, lower edge of the p10-p90 band"),
    "ndvi_p90": ("1", "NDVI, upper edge of the p10-p90 band"),
}
"""Units (CF: "1", dimensionless) and long names of a reconstruction's variables."""


def described(result: xr.Dataset) -> xr.Dataset:
    """``result`` with CF words a reader needs (review 6): units and long names, the band
    order in every band variable's ``band_names`` (GDAL shows no string coordinate, so B04 and
    B08 could not be told apart there), and ``observed`` as a flag."""
    out = result.copy()
    bands = " ".join(str(b) for b in out["band"].values) if "band" in out.coords else ""
    for name, (units, long_name) in VARIABLE_WORDS.items():
        if name in out.data_vars:
            out[name].attrs.update(units=units, long_name=long_name)
            if bands and "band" in out[name].dims:
                out[name].attrs["band_names"] = bands
    if "observed" in out.data_vars:
        out["observed"].attrs.update(
            long_name="pixel kept as acquired (clear), else reconstructed",
            flag_values=np.array(  # of the variable's own type, as CF asks
                [0, 1], dtype=np.int8 if out["observed"].dtype == bool else out["observed"].dtype
            ),
            flag_meanings="reconstructed observed_clear",
        )
    return out


def georeferenced(result: xr.Dataset) -> xr.Dataset:
    """``result`` with CF georeferencing a GIS reads (GDAL, QGIS, rioxarray): a ``spatial_ref``
    grid-mapping variable holding the CRS (WKT) and the GeoTransform of pixel edges, named by
    every (y, x) variable's ``grid_mapping``, and projected-coordinate attributes on x and y.
    Without them GDAL opened the frames at (0, 0) with no CRS (review 5). Unchanged without a
    ``crs`` attribute or on a single pixel column or row."""
    crs = result.attrs.get("crs")
    if not crs or result.sizes.get("x", 0) < 2 or result.sizes.get("y", 0) < 2:
        return result
    import pyproj

    wkt = pyproj.CRS.from_user_input(crs).to_wkt()
    x, y = result["x"].values.astype(np.float64), result["y"].values.astype(np.float64)
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
    transform = f"{x[0] - dx / 2} {dx} 0 {y[0] - dy / 2} 0 {dy}"
    out = result.copy()
    out["spatial_ref"] = xr.DataArray(
        np.int32(0), attrs={"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": transform}
    )
    for name, var in out.data_vars.items():
        if name != "spatial_ref" and {"y", "x"} <= set(var.dims):
            out[name].attrs["grid_mapping"] = "spatial_ref"
    if pyproj.CRS.from_user_input(crs).is_geographic:  # degrees, not metres (review 6)
        out["x"].attrs.update(standard_name="longitude", units="degrees_east", axis="X")
        out["y"].attrs.update(standard_name="latitude", units="degrees_north", axis="Y")
    else:
        out["x"].attrs.update(standard_name="projection_x_coordinate", units="m", axis="X")
        out["y"].attrs.update(standard_name="projection_y_coordinate", units="m", axis="Y")
    return out


def write_reconstruction(result: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write a reconstruction dataset to NetCDF atomically (float32, compressed), georeferenced
    for GIS (:func:`georeferenced`), its variables described (:func:`described`)."""
    result = described(georeferenced(result))
    # CF's name for what it follows, and no fill value on the coordinates (review 24: a GIS
    # reads x and y with _FillValue NaN as coordinates that may be missing)
    result.attrs["Conventions"] = "CF-1.8"
    encoding: dict[str, dict] = {
        name: {"zlib": True, "complevel": 4} for name in result.data_vars if name != "spatial_ref"
    }
    encoding.update({name: {"_FillValue": None} for name in ("x", "y") if name in result.coords})
    target = Path(path)
    with atomic_output(target, defer_signals=True) as tmp, NETCDF_LOCK:
        result.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return target


def with_samples(options: ReconstructOptions, samples: int) -> ReconstructOptions:
    """Copy of ``options`` with another sample count."""
    return replace(options, samples=samples)
