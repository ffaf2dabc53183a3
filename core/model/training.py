"""Self-supervised training on real series: hide what we know, learn to bring it back.

Each episode is a random crop and time window of a real cube in which clear observations are
hidden the three ways the product meets them: whole frames (missing acquisitions / anytime
queries), real cloud masks borrowed from other dates (cloud removal), and every frame of a
20-60 day window (long gaps). The loss is taken only on hidden pixels whose truth is clear:
L1 on reflectance, L1 on NDVI (so a better reflectance does not come with a worse red/NIR
ratio), and flow matching of the residual (truth - mean) by the flow head, which sees the
trunk's features detached so the point estimate never pays for the sampling noise. With a
scale head, a Laplace likelihood teaches it each value's residual scale b (features detached
too), and the flow matches residual / b.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import torch
import xarray as xr

from core.cube import has_s1, read_cube, without_empty_s1
from core.errors import InputError
from core.grid import LonLatBounds, bounds_latitude, cube_lonlat_bounds
from core.indices import NIR, NIR_NARROW, RED
from core.model.calibration import coverage, fit_spread
from core.model.config import ModelConfig, TrainConfig
from core.model.features import (
    REFL_SCALE,
    S1_MARGIN_DAYS,
    Frames,
    WindowInputs,
    s1_anomalies,
    series_inputs,
    times_to_days_and_doy,
    window_inputs,
)
from core.model.flow import path_point, sample_tau, velocity_target
from core.model.network import FieldFlowNet
from core.progress import beat
from core.screening import screen_cube
from core.storage import signals_deferred

Progress = Callable[[int, int, dict[str, float]], None]
CONTEXT_FRAMES = 12


@dataclass(frozen=True)
class SeriesData:
    """A cube's arrays as training needs them (clear reflectance only)."""

    site: str
    clear_s2: np.ndarray
    """(T, 10, H, W): reflectance where valid, NaN elsewhere."""
    clear_fraction: np.ndarray
    """(T,) fraction of the series' footprint (pixels it ever covers) that is clear."""
    days: np.ndarray
    doy: np.ndarray
    band_present: np.ndarray
    s1: np.ndarray
    """(T1, 2, H, W) S1 VV, VH in dB; an episode takes the anomalies of its crop
    (:func:`core.model.features.s1_anomalies`, per pixel: the same as the whole field's cut to
    the crop, without computing them for a large field's every pixel)."""
    s1_days: np.ndarray
    s1_doy: np.ndarray
    s1_ascending: np.ndarray
    bounds: LonLatBounds | None = None
    """Where the cube lies (west, south, east, north in degrees), recorded in a checkpoint so
    that a field fetched there is known to be one the model was trained on; None where the cube
    cannot say."""
    floored: str = ""
    """What the red-floor screen took out of the cube's clear pixels, in words
    (:func:`load_series`); "" where it took nothing."""

    @property
    def clear_acquisitions(self) -> int:
        """Acquisitions with a clear pixel (:data:`core.model.config.MIN_CLEAR_ACQUISITIONS`)."""
        return int((self.clear_fraction > 0).sum())


def footprints_of(series: Sequence[SeriesData]) -> list[dict[str, object]]:
    """``[{"site": ..., "bounds": [west, south, east, north]}]`` of the series that know where
    they lie, once each, for a checkpoint's record (:attr:`Checkpoint.seen_footprints`)."""
    seen: list[dict[str, object]] = []
    for s in series:
        entry = {"site": s.site, "bounds": [round(v, 6) for v in s.bounds]} if s.bounds else None
        if entry is not None and entry not in seen:
            seen.append(entry)
    return seen


def merged_footprints(*groups: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The entries of several :func:`footprints_of` lists, once each, in order."""
    merged: list[dict[str, object]] = []
    for entry in (e for group in groups for e in group):
        if entry not in merged:
            merged.append(entry)
    return merged


def held_out_inside(
    sites: Sequence[str], footprints: Sequence[dict[str, object]], folders: Sequence[Path]
) -> list[str]:
    """Which of the held-out ``sites`` a training on ``footprints`` (:func:`footprints_of` of
    its cubes) has seen a part of: a site whose cube, found in ``folders`` by its ``site``
    attribute, overlaps one of them (a field fetched inside a held-out cube's area, under
    another name). Sites whose cube is not found there cannot be told and are not listed."""
    wanted, places = set(sites), {}
    for folder in dict.fromkeys(Path(f).resolve() for f in folders):
        for path in sorted(folder.glob("*.nc")) if folder.is_dir() else []:
            try:  # signals held: an interrupt inside netCDF4 can be lost (core.storage)
                with signals_deferred(), xr.open_dataset(path) as cube:
                    site = str(cube.attrs.get("site", path.stem))
                    bounds = cube_lonlat_bounds(cube) if site in wanted else None
            except (OSError, ValueError):
                continue
            if bounds is not None:
                places.setdefault(site, bounds)
    boxes = [shapely.box(*entry["bounds"]) for entry in footprints if len(entry["bounds"]) == 4]
    return sorted(
        site
        for site, bounds in places.items()
        if any(shapely.box(*bounds).intersection(box).area > 0 for box in boxes)
    )


def load_series(path: Path) -> SeriesData:
    """Read a cube file into :class:`SeriesData`, with the screen every reconstruction has
    (:func:`core.screening.red_floor`): clear-labelled pixels whose red sits at the
    reflectance floor, NDVI 1 whatever grows there, are neither context nor truth (until
    2026-12-06 training took them as both; the shipped model was trained so, on one such
    scene of be-flanders-a). The haze screen, an option of a reconstruction, is not applied."""
    cube, screening = screen_cube(read_cube(path), haze=False)
    series = series_from_cube(cube, str(cube.attrs.get("site", path.stem)))
    if screening.floored_count:
        series = dataclasses.replace(series, floored=screening.summary())
    return series


def series_from_cube(cube: xr.Dataset, site: str) -> SeriesData:
    """A cube (or a method's observations of one) as :class:`SeriesData`."""
    cube = without_empty_s1(cube)
    s2 = cube["s2"].values
    valid = cube["valid"].values.astype(bool)
    clear = np.where(valid[:, None], s2, np.float32(np.nan)).astype(np.float32, copy=False)
    # Of the pixels the series ever covers (the field), not of each frame's: a method's
    # observations are NaN wherever a frame is not clear, so per frame every fraction would be 1
    # and per-field tuning and calibration would find no real cloud mask to borrow.
    footprint = np.isfinite(s2).any(axis=(0, 1))
    fraction = valid.sum(axis=(1, 2)) / max(int(footprint.sum()), 1)
    bounds = cube_lonlat_bounds(cube)
    latitude = bounds_latitude(bounds)
    days, doy = times_to_days_and_doy(cube["time_s2"].values, latitude)
    if has_s1(cube):
        s1 = np.asarray(cube["s1"].values, dtype=np.float32)
        s1_days, s1_doy = times_to_days_and_doy(cube["time_s1"].values, latitude)
        if "orbit_state" in cube.coords:
            asc = np.char.lower(cube["orbit_state"].values.astype(str)) == "ascending"
        else:
            asc = np.ones(len(s1_days), dtype=bool)
    else:
        h, w = s2.shape[2:]
        s1, s1_days, s1_doy, asc = (
            np.zeros((0, 2, h, w), np.float32),
            np.zeros(0),
            np.zeros(0),
            np.zeros(0, bool),
        )
    return SeriesData(
        site=site,
        clear_s2=clear,
        clear_fraction=fraction,
        days=days,
        doy=doy,
        band_present=np.isfinite(s2).any(axis=(0, 2, 3)),
        s1=s1,
        s1_days=s1_days,
        s1_doy=s1_doy,
        s1_ascending=asc,
        bounds=bounds,
    )


LONG_GAP_SHARE = 0.3
"""Share of episodes that hide a long gap as well (whole frames and cloud masks are in all)."""


@dataclass(frozen=True)
class Episode:
    """One training example: network inputs of a window with hidden pixels, and the truth."""

    inputs: WindowInputs
    truth: np.ndarray
    """(T, 10, H, W) clear reflectance of hidden pixels, NaN elsewhere."""
    smoother: np.ndarray | None = None
    """(T, 10, H, W) the Whittaker smoother of the visible observations at the window's dates,
    in reflectance (only with ``make_episode(with_smoother=True)``; see core.model.blend)."""
    distance: np.ndarray | None = None
    """(T, H, W) days from each pixel to its nearest visible clear observation (ditto)."""
    span: np.ndarray | None = None
    """(T, H, W) the span of the gap each pixel's hidden value lies in, days between its visible
    clear observations before and after (with the smoother; see core.model.blend)."""
    unseen: np.ndarray | None = None
    """(T,) bool: frames the other frames may not attend to (see ``make_episode``)."""

    @property
    def target(self) -> np.ndarray:
        """(T, 10, H, W) bool: the values scored, hidden, clear and of a band present; the
        order of their flattening is the order of :func:`residual_draws`' arrays."""
        return np.isfinite(self.truth) & self.inputs.band_present[None, :, None, None]


EPISODE_ATTEMPTS = 50
"""Tries per episode of a batch before training gives up on its cubes (each try cuts a random
window and crop; a cube with clear pixels gives one within a few)."""


MIN_CLEAR_FRAMES = 4
"""Sentinel-2 frames with a clear pixel a series needs before episodes are cut from it (some
are hidden, the rest are what the network learns to reconstruct them from)."""


def unusable_reason(series: SeriesData, patch: int) -> str:
    """Why training cannot cut episodes from ``series`` (``"SITE is 3 x 3 px"``), or "" when
    it can: it needs :data:`MIN_CLEAR_FRAMES` S2 frames with a clear pixel and one patch."""
    frames = int(np.isfinite(series.clear_s2).any(axis=(1, 2, 3)).sum())
    height, width = series.clear_s2.shape[2:]
    if frames < MIN_CLEAR_FRAMES:
        return f"{series.site} has {frames} Sentinel-2 frame(s) with clear pixels"
    if min(height, width) < patch:
        return f"{series.site} is {height} x {width} px"
    return ""


def trainable_series(series: Sequence[SeriesData], patch: int) -> list[SeriesData]:
    """The series training can cut episodes from (:func:`unusable_reason`).

    Raises:
        InputError: none is, with what each one lacks.
    """
    usable, why = [], []
    for s in series:
        reason = unusable_reason(s, patch)
        if reason:
            why.append(reason)
        else:
            usable.append(s)
    if not usable:
        raise InputError(
            f"Nothing to train on: a cube needs at least {MIN_CLEAR_FRAMES} Sentinel-2 frames "
            f"with clear pixels and {patch} x {patch} pixels (one patch), and "
            f"{'; '.join(why) or 'none was given'}. Train on longer or larger cubes."
        )
    return usable


def make_episode(
    series: SeriesData,
    n_frames: int,
    crop: int,
    rng: np.random.Generator,
    s1_dropout: float,
    max_s1_frames: int = 24,
    band_dropout: float = 0.0,
    smooth_features: bool = False,
    spectral_jitter: float = 0.0,
    long_gap: bool | None = None,
    patch: int = 4,
    with_smoother: bool = False,
    smoother_lambda: float | None = None,
    with_distance: bool = False,
    unseen_share: float = 0.0,
    date_jitter: float = 0.0,
    whittaker_features: bool = False,
    season_dropout: float = 0.0,
) -> Episode | None:
    """Cut a random window and crop of ``series`` and hide observations (see module docstring).

    ``long_gap``: also hide every frame of a 20-60 day window (None: in a share
    :data:`LONG_GAP_SHARE` of episodes, at random). ``patch``: the model's patch side; the crop
    is cut to a multiple of it, so a field smaller than ``crop`` whose side is not one still
    gives episodes (None if it is smaller than one patch). ``with_smoother``: also give the
    Whittaker smoother (``smoother_lambda``; None: GCV) and the distances that a per-field blend
    is fitted on; ``with_distance``: the distances alone (for a band fitted by distance).
    ``unseen_share``: the probability that the window's frames left with no observation at all
    are marked unseen by the other frames (:attr:`Episode.unseen`), as inference marks dates
    asked for with no acquisition. ``date_jitter``: the probability that a frame left with no
    observation at all is moved 1 or 2 days (earlier or later, never past its neighbours), so
    that hidden frames do not all lie on Sentinel-2's 5-day cadence, as most dates a daily curve
    asks for do not; its truth is then the acquisition 1-2 days off. ``season_dropout``: the
    probability that the episode's day of year is withheld (NaN, so its channels are 0) on
    every S2 and S1 frame; at 0 no random number is drawn for it. ``smooth_features``,
    ``whittaker_features``: the model's optional input channels (:class:`ModelConfig`).

    As at inference, the interpolation features come from the whole (subsampled) series, not
    only the window. Returns None when the window holds no usable target.
    """
    total, _, height, width = series.clear_s2.shape
    crop = min(crop, height, width) // patch * patch
    if crop == 0:
        return None
    y0, x0 = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
    ys, xs = slice(y0, y0 + crop), slice(x0, x0 + crop)
    keep = np.flatnonzero(rng.random(total) > 0.15)  # temporal subsampling
    if keep.size < n_frames:
        keep = np.arange(total)
    n_frames = min(n_frames, keep.size)
    start = int(rng.integers(0, keep.size - n_frames + 1))
    # Interpolation context: the window plus CONTEXT_FRAMES on each side (at inference it is
    # the whole series; beyond a dozen frames the difference is negligible and costs time).
    lo = max(0, start - CONTEXT_FRAMES)
    keep = keep[lo : start + n_frames + CONTEXT_FRAMES]
    start -= lo
    window = slice(start, start + n_frames)
    s2 = series.clear_s2[:, :, ys, xs][keep]  # crop first: a large field's frames are not copied
    if spectral_jitter > 0:  # brightness and colour of this episode (see TrainConfig)
        log_gain = rng.normal(0.0, spectral_jitter) + rng.normal(0.0, spectral_jitter / 2, 10)
        s2 = s2 * np.exp(log_gain).astype(s2.dtype)[None, :, None, None]
    days = series.days[keep]
    clear = np.isfinite(s2[window]).any(axis=1)
    fraction = clear.mean(axis=(1, 2))
    targets = np.flatnonzero(fraction >= 0.5)
    if targets.size == 0:
        return None
    hidden = np.zeros(clear.shape, dtype=bool)
    order = rng.permutation(targets)
    n_task = max(1, round(0.2 * targets.size))
    for t in order[:n_task]:  # whole frames
        hidden[t] = True
    cloudy = np.flatnonzero((series.clear_fraction > 0.1) & (series.clear_fraction < 0.9))
    for t in order[n_task : 2 * n_task]:  # real cloud masks from other dates
        if cloudy.size == 0:
            break
        donor = series.clear_s2[rng.choice(cloudy)][:, ys, xs]
        hidden[t] |= ~np.isfinite(donor).any(axis=0)
    if (rng.random() < LONG_GAP_SHARE) if long_gap is None else long_gap:
        span = rng.uniform(20, 60)
        centre = rng.uniform(days[window][0], days[window][-1])
        hidden[np.abs(days[window] - centre) <= span / 2] = True
    hidden &= clear
    if not hidden.any():
        return None
    truth = np.where(hidden[:, None], s2[window], np.nan).astype(np.float32)
    inputs = s2.copy()
    inputs[window] = np.where(hidden[:, None], np.nan, s2[window])
    days, doy = days.copy(), series.doy[keep].copy()
    if date_jitter > 0:
        # A child generator: the episode's other draws (crop, masks, rotation) stay as without.
        jitter_blank_dates(days, doy, inputs, window, date_jitter, rng.spawn(1)[0])
    no_calendar = season_dropout > 0 and rng.random() < season_dropout
    if no_calendar:
        doy[:] = np.nan
    band_present = series.band_present
    if rng.random() < band_dropout:  # drop some bands, so unseen band sets still work
        present = np.flatnonzero(band_present)
        if present.size > 2:
            drop = rng.choice(present, int(rng.integers(1, present.size - 1)), replace=False)
            band_present = band_present.copy()
            band_present[drop] = False
            inputs[:, drop] = np.nan
            truth[:, drop] = np.nan
    use_s1 = series.s1.shape[0] > 0 and rng.random() >= s1_dropout
    s1_keep = np.arange(series.s1_days.size) if use_s1 else np.zeros(0, dtype=np.int64)
    frames = Frames(
        s2=inputs,
        days=days,
        doy=doy,
        band_present=band_present,
        s1=s1_anomalies(series.s1[:, :, ys, xs])[s1_keep],
        s1_days=series.s1_days[s1_keep],
        s1_doy=np.full(s1_keep.size, np.nan) if no_calendar else series.s1_doy[s1_keep],
        s1_ascending=series.s1_ascending[s1_keep],
    )
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    frames = _augment(frames, k, flip)
    view = window_inputs(
        series_inputs(frames, smooth_features, whittaker_features),
        start,
        start + n_frames,
        S1_MARGIN_DAYS,
    )
    if view.s1.shape[0] > max_s1_frames:
        pick = np.sort(rng.choice(view.s1.shape[0], max_s1_frames, replace=False))
        view = dataclasses.replace(view, s1=view.s1[pick], s1_days=view.s1_days[pick])
    unseen = None
    if unseen_share > 0 and rng.random() < unseen_share:
        blank = ~np.isfinite(inputs[window]).any(axis=(1, 2, 3))
        unseen = blank if blank.any() else None
    episode = Episode(inputs=view, truth=_spatial(truth, k, flip), unseen=unseen)
    if with_smoother:
        from core.model.blend import blend_inputs, blend_key

        smoother, distance = blend_inputs(frames.s2, days, days[window], smoother_lambda)
        span = blend_key(frames.s2, days, days[window], "span")
        episode = dataclasses.replace(episode, smoother=smoother, distance=distance, span=span)
    elif with_distance:
        from core.model.blend import days_to_clear

        distance = days_to_clear(frames.s2, days, days[window])
        episode = dataclasses.replace(episode, distance=distance)
    return episode


JITTER_DAYS = np.array([-2, -1, 1, 2])
"""The day shifts a hidden frame's date may get (``make_episode(date_jitter=...)``)."""


def jitter_blank_dates(
    days: np.ndarray,
    doy: np.ndarray,
    s2: np.ndarray,
    window: slice,
    share: float,
    rng: np.random.Generator,
) -> None:
    """Move, in place, each frame of ``window`` with no observation left in ``s2`` by a day
    shift from :data:`JITTER_DAYS` with probability ``share``, keeping the dates strictly
    increasing (a shift that would reach a neighbour's date is not made)."""
    blank = np.flatnonzero(~np.isfinite(s2[window]).any(axis=(1, 2, 3))) + window.start
    for i in blank:
        if rng.random() >= share:
            continue
        shift = float(rng.choice(JITTER_DAYS))
        before = days[i - 1] if i > 0 else -np.inf
        after = days[i + 1] if i + 1 < days.size else np.inf
        if before < days[i] + shift < after:
            days[i] += shift
            doy[i] += shift


def _spatial(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(-2, -1))
    return np.ascontiguousarray(a[..., ::-1] if flip else a)


def _augment(frames: Frames, k: int, flip: bool) -> Frames:
    return dataclasses.replace(
        frames, s2=_spatial(frames.s2, k, flip), s1=_spatial(frames.s1, k, flip)
    )


@dataclass
class Batch:
    """Tensors of a batch of episodes of equal T and crop (S1 padded)."""

    s2: torch.Tensor
    s2_days: torch.Tensor
    s1: torch.Tensor
    s1_days: torch.Tensor
    base: torch.Tensor
    truth: torch.Tensor
    """(E, T, 10, H, W) in model units, 0 where not a target."""
    target: torch.Tensor
    """(E, T, 10, H, W) bool: hidden, clear and band present."""
    unseen: torch.Tensor | None = None
    """(E, T) bool: frames the others may not attend to; None: none."""


def collate(episodes: Sequence[Episode], device: str = "cpu") -> Batch:
    """Stack episodes (same T and size) into a :class:`Batch`."""
    s2, base, s1_list, truth, target = [], [], [], [], []
    for ep in episodes:
        s2.append(ep.inputs.s2)
        base.append(ep.inputs.base)
        s1_list.append(ep.inputs.s1)
        finite = ep.target
        truth.append(np.where(finite, ep.truth, 0.0) * REFL_SCALE)
        target.append(finite)
    t1 = max(x.shape[0] for x in s1_list)
    e = len(episodes)
    h, w = s2[0].shape[2:]
    s1 = np.zeros((e, t1, s1_list[0].shape[1], h, w), np.float32)
    s1_days = np.zeros((e, t1), np.float32)
    for i, (ep, x) in enumerate(zip(episodes, s1_list, strict=True)):
        n = x.shape[0]
        s1[i, :n] = x  # frames beyond n stay all-zero: data flag 0, i.e. "no S1 here"
        s1_days[i, :n] = ep.inputs.s1_days - ep.inputs.days[0]
        s1_days[i, n:] = (ep.inputs.days[-1] - ep.inputs.days[0]) / 2
    s2_days = np.stack([ep.inputs.days - ep.inputs.days[0] for ep in episodes]).astype(np.float32)

    def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

    unseen = None
    if any(ep.unseen is not None for ep in episodes):
        n = s2[0].shape[0]
        unseen = t(
            np.stack([np.zeros(n, bool) if ep.unseen is None else ep.unseen for ep in episodes]),
            torch.bool,
        )
    return Batch(
        unseen=unseen,
        s2=t(np.stack(s2)),
        s2_days=t(s2_days),
        s1=t(s1),
        s1_days=t(s1_days),
        base=t(np.stack(base)),
        truth=t(np.stack(truth)),
        target=t(np.stack(target), torch.bool),
    )


def losses(
    model: FieldFlowNet, batch: Batch, config: TrainConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Reflectance L1, NDVI L1 and flow-matching loss of one batch (and, with
    ``config.field_ndvi_weight``, the L1 of each hidden frame's mean NDVI)."""
    features = model.encode(batch.s2, batch.s2_days, batch.s1, batch.s1_days, batch.unseen)
    h, w = batch.s2.shape[-2:]
    pred = batch.base + model.mean_correction(features, h, w)
    mask = batch.target
    n = mask.sum().clamp_min(1)
    l1 = ((pred - batch.truth).abs() * mask).sum() / n

    nir_band = NIR if bool(mask[:, :, NIR].any()) else NIR_NARROW
    red_ok = mask[:, :, RED] & mask[:, :, nir_band]
    if red_ok.any():

        def nd(x: torch.Tensor) -> torch.Tensor:
            r, n_ = x[:, :, RED], x[:, :, nir_band]
            return (n_ - r) / (n_ + r).clamp_min(1e-2)

        ndvi_l1 = ((nd(pred) - nd(batch.truth)).abs() * red_ok).sum() / red_ok.sum()
        field_ndvi_l1 = field_mean_l1(nd(pred), nd(batch.truth), red_ok)
    else:
        ndvi_l1 = field_ndvi_l1 = pred.new_zeros(())

    # The residual's scale (Laplace negative log likelihood, on detached features: it does not
    # pull the trunk away from the best estimate), then flow matching on residual / scale, per
    # patch token, where the patch holds targets.
    residual = (batch.truth - pred.detach()) * mask
    log_b = model.log_scale(features.detach(), h, w)
    if log_b is not None:
        nll = ((log_b + residual.abs() * torch.exp(-log_b)) * mask).sum() / n
        residual = residual * torch.exp(-log_b.detach())
    else:
        nll = pred.new_zeros(())
    r_tok = model.patchify(residual)  # (E, T, P, 10*p*p) in (c, py, px) order
    m_tok = model.patchify(mask.float())
    flat_r = r_tok.reshape(-1, r_tok.shape[-1])
    flat_m = m_tok.reshape(-1, m_tok.shape[-1])
    flat_f = features.detach().reshape(-1, features.shape[-1])
    rows = flat_m.sum(1) > 0
    if rows.any():
        data = flat_r[rows]
        noise = torch.randn(data.shape, generator=generator, device=data.device)
        tau = sample_tau(data.shape[0], generator, device=str(data.device))
        v = model.flow_head(path_point(noise, data, tau), tau, flat_f[rows])
        err = (v - velocity_target(noise, data)) ** 2 * flat_m[rows]
        flow = err.sum() / flat_m[rows].sum()
    else:
        flow = pred.new_zeros(())
    total = l1 + config.ndvi_weight * ndvi_l1 + config.flow_weight * flow + nll
    parts = {"loss": total, "l1": l1, "ndvi": ndvi_l1, "flow": flow, "scale_nll": nll}
    if config.field_ndvi_weight > 0:
        parts["loss"] = total + config.field_ndvi_weight * field_ndvi_l1
        parts["field_ndvi"] = field_ndvi_l1
    return parts


MIN_FIELD_PIXELS = 16
"""Hidden pixels with an NDVI a frame needs for its mean to enter the field-mean NDVI term."""


def field_mean_l1(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over (episode, frame) of |mean of ``pred`` - mean of ``truth``| over the frame's
    ``mask`` pixels ((E, T, H, W) each), for frames with :data:`MIN_FIELD_PIXELS` at least;
    0 when no frame has that many."""
    weight = mask.float()
    count = weight.sum(dim=(-2, -1))
    enough = count >= MIN_FIELD_PIXELS
    if not bool(enough.any()):
        return pred.new_zeros(())
    diff = ((pred - truth) * weight).sum(dim=(-2, -1)) / count.clamp_min(1)
    return diff.abs()[enough].mean()


def load_initial_weights(model: FieldFlowNet, init: FieldFlowNet) -> None:
    """Copy ``init``'s weights into ``model``; ``model`` may add a scale head ``init`` lacks."""
    adds_head = not init.config.scale_head and model.config.scale_head
    if init.config != model.config and not (
        adds_head and dataclasses.replace(init.config, scale_head=True) == model.config
    ):
        raise ValueError("The initial network's config differs from the model config.")
    model.load_state_dict(init.state_dict(), strict=not adds_head)


def train(
    series: Sequence[SeriesData],
    model_config: ModelConfig,
    config: TrainConfig,
    device: str = "cpu",
    progress: Progress | None = None,
    init: FieldFlowNet | None = None,
) -> tuple[FieldFlowNet, dict[str, object]]:
    """Train a model on ``series``; return the EMA model and a training record.

    ``init``: start from this network's weights instead of a fresh initialisation; its config
    must equal ``model_config``, except that ``model_config`` may add a scale head (which then
    starts from its own initialisation). The schedule (warm-up, cosine decay to 0) starts afresh.
    ``config.heads_only``: only the scale and flow heads learn.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    model = FieldFlowNet(model_config).to(device)
    if init is not None:
        load_initial_weights(model, init)
    ema = FieldFlowNet(model_config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    if config.heads_only:
        model.requires_grad_(False)
        model.flow_head.requires_grad_(True)
        if model.scale_head is not None:
            model.scale_head.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    warmup = max(1, config.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        progress_frac = (step - warmup) / max(1, config.steps - warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress_frac))

    started = time.time()
    history: list[dict[str, float]] = []
    usable = trainable_series(series, model_config.patch)
    for step in range(config.steps):
        n_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
        episodes: list[Episode] = []
        attempts = 0
        while len(episodes) < config.batch_size:
            attempts += 1
            if attempts > EPISODE_ATTEMPTS * config.batch_size:
                raise InputError(
                    f"No training episode could be cut from {', '.join(s.site for s in usable)} "
                    f"in {attempts - 1} tries: each needs a clear pixel to hide in a window of "
                    "its frames. Train on cubes with more clear observations."
                )
            s = usable[rng.integers(0, len(usable))]
            ep = make_episode(
                s,
                min(n_frames, s.clear_s2.shape[0]),
                config.crop,
                rng,
                config.s1_dropout,
                config.max_s1_frames,
                config.band_dropout,
                model_config.smooth_features,
                config.spectral_jitter,
                patch=model_config.patch,
                whittaker_features=model_config.whittaker_features,
                unseen_share=config.unseen_share,
                date_jitter=config.date_jitter,
                season_dropout=config.season_dropout,
            )
            if ep is not None and (
                not episodes or ep.inputs.s2.shape == episodes[0].inputs.s2.shape
            ):
                episodes.append(ep)
        batch = collate(episodes, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        parts = losses(model, batch, config, generator)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                if pm.requires_grad:  # frozen weights stay bit-identical (heads_only)
                    pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        figures = {k: float(v.detach()) for k, v in parts.items()}
        if not math.isfinite(figures["loss"]):
            raise InputError(
                f"The training diverged at step {step + 1} of {config.steps}: its loss became "
                f"{figures['loss']}, so its weights are no longer numbers. Nothing was saved. "
                f"Train at a lower --lr (this one peaked at {config.lr:g})."
            )
        history.append(figures)
        if progress is not None:
            progress(step + 1, config.steps, figures)
    ema.eval()
    if not all(bool(torch.isfinite(p).all()) for p in ema.parameters()):
        raise InputError(
            f"The training diverged in its last step ({config.steps}): the model's weights are "
            f"no longer all numbers. Nothing was saved. Train at a lower --lr (this one peaked "
            f"at {config.lr:g})."
        )
    tail = history[-max(1, len(history) // 10) :]
    record = {
        "seen_sites": sorted({s.site for s in usable}),
        "seen_footprints": footprints_of(usable),
        "steps": config.steps,
        "seconds": round(time.time() - started, 1),
        "device": device,
        "final_losses": {k: float(np.mean([h[k] for h in tail])) for k in tail[0]},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return ema, record


EPISODE_TRIES = 20
"""Attempts in a row without an episode after which :func:`validation_episodes` gives up a
series that has others beside it."""


def validation_episodes(
    series: Sequence[SeriesData],
    count: int,
    config: TrainConfig,
    seed: int,
    smooth_features: bool = False,
    stratified: bool = False,
    patch: int = 4,
    with_smoother: bool = False,
    smoother_lambda: float | None = None,
    with_distance: bool = False,
    whittaker_features: bool = False,
) -> list[Episode]:
    """A fixed set of episodes (deterministic for ``seed``) for calibration and validation.

    ``stratified``: exactly a share :data:`LONG_GAP_SHARE` of them (rounded) hide a long gap,
    instead of each at random; a few episodes then give a steadier figure, because the long-gap
    ones have the largest errors.
    """
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    usable = [s for s in series if s.clear_s2.shape[0] >= 4]
    failed = [0] * len(usable)  # attempts in a row that gave no episode, per series
    n_gap = round(LONG_GAP_SHARE * count)
    attempts = 0
    while usable and len(episodes) < count and attempts < count * 20:
        attempts += 1
        turn = len(episodes) % len(usable)
        s = usable[turn]
        n_frames = min((config.min_frames + config.max_frames) // 2, s.clear_s2.shape[0])
        ep = make_episode(
            s,
            n_frames,
            config.crop,
            rng,
            0.0,
            config.max_s1_frames,
            0.0,
            smooth_features,
            long_gap=len(episodes) < n_gap if stratified else None,
            patch=patch,
            with_smoother=with_smoother,
            smoother_lambda=smoother_lambda,
            with_distance=with_distance,
            whittaker_features=whittaker_features,
        )
        if ep is not None:
            episodes.append(ep)
            failed[turn] = 0
        else:  # a series that keeps giving none leaves the turn (review 18: a 3 x 3 px cube
            failed[turn] += 1  # in the folder took every later turn: 1 episode of 48, or none)
            if failed[turn] >= EPISODE_TRIES and len(usable) > 1:  # alone, it keeps its
                del usable[turn], failed[turn]  # turns (a field's own episodes, as before)
    return episodes


@torch.no_grad()
def residual_draws(
    model: FieldFlowNet,
    episode: Episode,
    samples: int,
    steps: int,
    generator: torch.Generator,
    device: str = "cpu",
    views: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, interpolation base, residual samples and truth at an episode's target values.

    ``generator`` is a CPU generator (the noise is drawn on the CPU, then moved to ``device``,
    so a seed gives the same draws on every device). Returns 1-D arrays over target (frame,
    band, pixel) values: mean (M,), base (M,), draws (K, M), truth (M,), in model units.
    ``samples`` 0 skips the flow head (draws (0, M)): the best estimate alone. ``views``: the
    mean averaged over this many views of the episode (:meth:`FieldFlowNet.estimate`).
    """
    from core.model.flow import euler_solve

    batch = collate([episode], device)
    h, w = batch.s2.shape[-2:]
    frames = batch.target[0].flatten(1).any(dim=1)  # only frames with targets are generated
    features, correction = model.estimate(
        batch.s2, batch.s2_days, batch.s1, batch.s1_days, frames=frames, views=views
    )
    mean = batch.base[:, frames] + correction
    target = batch.target[0][frames]
    values = (
        mean[0][target].cpu().numpy(),
        batch.base[0][frames][target].cpu().numpy(),
        batch.truth[0][frames][target].cpu().numpy(),
    )
    if samples == 0:
        return values[0], values[1], np.zeros((0, values[0].size), np.float32), values[2]
    res = model.sample_residuals(features, h, w, samples, steps, generator, euler_solve)
    return values[0], values[1], res[:, target].cpu().numpy(), values[2]


def episode_predictions(
    model: FieldFlowNet,
    episodes: Sequence[Episode],
    samples: int = 8,
    steps: int = 8,
    seed: int = 0,
    device: str = "cpu",
    report: bool = True,
    views: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`residual_draws` of every episode, concatenated: mean, base (the linear
    interpolation of the visible values), draws, truth. ``report``: a :data:`MEASURE_BEAT`
    per episode. ``views``: see :func:`residual_draws`."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for i, ep in enumerate(episodes):
        parts.append(residual_draws(model, ep, samples, steps, generator, device, views))
        if report:
            beat(MEASURE_BEAT, i + 1, len(episodes))
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts], axis=1),
        np.concatenate([p[3] for p in parts]),
    )


def target_distances(episodes: Sequence[Episode]) -> np.ndarray:
    """Days to the nearest visible clear observation of every target value of episodes made
    with distances, in the order of :func:`episode_predictions`' arrays."""
    out = []
    for ep in episodes:
        if ep.distance is None:
            raise ValueError("target_distances needs episodes made with distances")
        out.append(np.broadcast_to(ep.distance[:, None], ep.target.shape)[ep.target])
    return np.concatenate(out)


def target_bands(episodes: Sequence[Episode]) -> np.ndarray:
    """Band index of every target value of ``episodes``, in the order of
    :func:`episode_predictions`' arrays."""
    out = []
    for ep in episodes:
        target = ep.target
        bands = np.arange(target.shape[1])[None, :, None, None]
        out.append(np.broadcast_to(bands, target.shape)[target])
    return np.concatenate(out) if out else np.zeros(0, np.intp)


def calibrate(
    model: FieldFlowNet,
    episodes: Sequence[Episode],
    samples: int = 8,
    steps: int = 8,
    target_coverage: float = 0.8,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """Fit the spread scale so the p10-p90 band covers ``target_coverage`` of held-out targets,
    and measure the point estimate against the interpolation on the same targets."""
    mean, base, draws, truth = episode_predictions(model, episodes, samples, steps, seed, device)
    scale = fit_spread(mean, draws, truth, target_coverage)
    mae_model = float(np.mean(np.abs(mean - truth)) / REFL_SCALE)
    mae_interp = float(np.mean(np.abs(base - truth)) / REFL_SCALE)
    return {
        "spread_scale": scale,
        "coverage_uncalibrated": coverage(mean, draws, truth, 1.0),
        "coverage_calibrated": coverage(mean, draws, truth, scale),
        "mae_model": mae_model,
        "mae_interpolation": mae_interp,
        "mae_ratio": mae_model / max(mae_interp, 1e-9),
        "n_values": int(truth.size),
    }


def blend_targets(
    episodes: Sequence[Episode], measure: str = "distance"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoother (model units), band index and ``measure`` (distance to clear data or the gap's
    span, core.model.blend.MEASURES) of every target value of episodes made ``with_smoother``,
    in the order of :func:`episode_predictions`' arrays."""
    smoother, band, key = [], [], []
    for ep in episodes:
        days = ep.span if measure == "span" else ep.distance
        if ep.smoother is None or days is None:
            raise ValueError("blend_targets needs episodes made with_smoother=True")
        target = ep.target
        smoother.append(ep.smoother[target] * REFL_SCALE)
        band.append(target_bands([ep]))
        key.append(np.broadcast_to(days[:, None], target.shape)[target])
    return np.concatenate(smoother), np.concatenate(band), np.concatenate(key)


def target_episodes(episodes: Sequence[Episode]) -> np.ndarray:
    """The index of the episode of every target value of ``episodes``, in the order of
    :func:`episode_predictions`' arrays."""
    sizes = [int(ep.target.sum()) for ep in episodes]
    return np.repeat(np.arange(len(episodes)), sizes)


ADAPT_BEAT = "tuning the model to this field"
"""What :func:`adapt` reports to :func:`core.progress.beat`, a step at a time."""
MEASURE_BEAT = "measuring the model's error on this field"
"""What :func:`episode_predictions` reports, an episode at a time (the field's band and blend
are fitted from these)."""

ADAPT_BATCH_SIZE = 4
"""Episodes per step of per-field adaptation."""
ADAPT_LONG_GAP_SHARE: float | None = None
"""Share of per-field adaptation's episodes that hide a long gap; None: :data:`LONG_GAP_SHARE`,
as training. A trial setting (``benchmarks/seed_spread.py --adapt-gap-share``), read at each
adaptation."""


def adapt(
    model: FieldFlowNet,
    series: SeriesData,
    steps: int,
    config: TrainConfig,
    *,
    seed: int = 0,
    lr: float = 1e-4,
    device: str = "cpu",
    batch_size: int = ADAPT_BATCH_SIZE,
) -> FieldFlowNet:
    """Per-field adaptation: ``steps`` steps of the training objective on the user's own series.

    Episodes come in batches of ``batch_size``, not the checkpoint's training batch, so that a
    step costs the same for every checkpoint.

    A copy of ``model`` is tuned on episodes cut from ``series`` (its clear observations only:
    pixels a caller wants reconstructed are not clear, so they are never a training target)
    at a low constant learning rate; ``model`` itself is left unchanged.

    Returns:
        The adapted copy, in eval mode.
    """
    beat(ADAPT_BEAT, 0, steps)
    tuned = copy.deepcopy(model).to(device)
    tuned.train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    n_total = series.clear_s2.shape[0]
    done = 0
    attempts = 0
    while done < steps and attempts < steps * 20:
        n_frames = min(int(rng.integers(config.min_frames, config.max_frames + 1)), n_total)
        episodes: list[Episode] = []
        while len(episodes) < batch_size and attempts < steps * 20:
            attempts += 1
            share = ADAPT_LONG_GAP_SHARE
            ep = make_episode(
                series,
                n_frames,
                config.crop,
                rng,
                config.s1_dropout,
                config.max_s1_frames,
                0.0,
                tuned.config.smooth_features,
                long_gap=None if share is None else bool(rng.random() < share),
                patch=tuned.config.patch,
                whittaker_features=tuned.config.whittaker_features,
            )
            if ep is not None and (
                not episodes or ep.inputs.s2.shape == episodes[0].inputs.s2.shape
            ):
                episodes.append(ep)
        if not episodes:
            break
        parts = losses(tuned, collate(episodes, device), config, generator)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
        optimizer.step()
        done += 1
        beat(ADAPT_BEAT, done, steps)
    return tuned.eval()
