"""The ``model`` method of the reconstruction contract: windows, tiles, trunk once, K samples.

A request is cut into temporal windows of at most ``s2_window`` S2 acquisitions (each query
goes to the window where it sits most centrally; dates asked for with no acquisition join
their window's pass, unseen by the other frames, see :func:`plan_passes`) and spatial tiles of
``tile`` pixels that overlap by ``tile_overlap``; their estimates are blended with linear
ramps. Per pass and tile the trunk runs once; the flow head then integrates K residual samples
for the query frames' tokens only, and only for the tokens whose pixels the tile owns (each
pixel's samples come from one tile). With the field blend (the default), each tile's estimate
and samples then move toward the Whittaker smoother by the weights fitted on the field
(:mod:`core.model.blend`). A date off the acquisitions' cadence is the weighted mean of the
network's estimates up to ``ReconstructOptions.smooth_days`` days either side (see
:func:`query_kernel`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from core.config import checkpoint_version, usable_cpus
from core.cube import has_s1, without_empty_s1
from core.errors import CheckpointChanged, InputError
from core.grid import cube_latitude
from core.model.blend import blend_inputs, days_to_clear, distance_bucket
from core.model.checkpoint import Checkpoint, load_checkpoint, training_overlap
from core.model.config import CALIBRATED_STEPS, MIN_CLEAR_ACQUISITIONS, ModelConfig
from core.model.features import (
    HALF_YEAR_DAYS,
    N_BANDS,
    REFL_SCALE,
    Frames,
    WindowInputs,
    frames_for_query,
    in_southern_seasons,
    s1_anomalies,
    select_frames,
    series_inputs,
    times_to_days_and_doy,
    whittaker_at_frames,
)
from core.model.flow import SOLVERS
from core.model.network import flow_in_bf16
from core.progress import beat, part
from core.reconstruct import (
    ERROR_BAND_ATTR,
    FIELD_NDVI_SCALE_ATTR,
    FIELD_NDVI_SCALE_BY_DISTANCE_ATTR,
    FIELD_NDVI_SCALE_DAYS_ATTR,
    FIELD_NDVI_SCALE_FRAMES_ATTR,
    NDVI_BAND_FACTORS_ATTR,
    NDVI_ERROR_BAND_ATTR,
    Prediction,
    ReconstructOptions,
)
from core.timeline import calendar_day, to_days


def cuda_visible() -> bool:
    """Whether this process sees a CUDA GPU the model can run on."""
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; refuse "cuda" without one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "The device cuda was asked for (--device, or the app's Settings > Device), but no "
            "CUDA GPU is visible here; use auto or cpu."
        )
    if device not in ("cpu", "cuda"):
        raise InputError(f"Unknown device '{device}'; choose auto, cpu or cuda.")
    return device


def cached_checkpoint(path: str | None, device: str, version: str | None = None) -> Checkpoint:
    """The checkpoint at ``path`` (None: the shipped one), loaded once per process (and per
    worker under Dask) and per version of the file: one replaced at the same path (retrained,
    fine-tuned) while the app or a worker runs is loaded anew at its next use, not served from
    the old copy (:func:`core.config.checkpoint_version`).

    ``version``: the version the caller pinned (:func:`core.reconstruct.pinned`); a copy of it
    already loaded is used even if the file has been replaced since, and a file that is no
    longer that version raises instead of being used in its place.

    Raises:
        InputError: the file is no longer the pinned version (names the fix).
    """
    file = Path(path) if path else None
    return loaded_checkpoint(path, device, version or checkpoint_version(file))


@functools.lru_cache(maxsize=4)
def loaded_checkpoint(path: str | None, device: str, version: str | None) -> Checkpoint:
    """:func:`cached_checkpoint`'s cache, keyed by the file's version: what is cached under a
    version was read from that version (checked before and after reading), so a file replaced
    while it loads is not kept under the old version's key."""
    file = Path(path) if path else None
    if checkpoint_version(file) == version:
        checkpoint = load_checkpoint(path, device=device)
        if checkpoint_version(file) == version:
            return checkpoint
    what = f"The model checkpoint {path or 'shipped in assets/'}"
    here = _this_worker()
    if checkpoint_version(file) is None:
        raise InputError(
            f"{what} was replaced or removed while this computation was using it, or is not at "
            f"that path {here or 'on this machine'}. On a Dask cluster every worker must see the "
            "app's models folder at the same path (shared storage, or the same folder on each "
            "machine); once it is there, run it again."
        )
    raise CheckpointChanged(
        f"{what} was replaced or removed while this computation was using it (retrained, copied "
        "over or deleted at that path), so its remaining parts cannot be made with the same "
        "model; or the file at that path "
        f"{here or 'here'} is another model than the one the computation began with (a Dask "
        "worker with another install of FieldFlow, or another copy of the models folder: give "
        "every worker the app's models). Run it again: it will use the checkpoint as it is then "
        "from the start."
    )


def _this_worker() -> str | None:
    """ "on the cluster's worker NAME" inside a Dask worker's task, else None."""
    try:
        from distributed import get_worker

        return f"on the cluster's worker {get_worker().name}"
    except (ImportError, ValueError):
        return None


@dataclass(frozen=True)
class SeriesInputs:
    """The whole request's inputs, before windowing and tiling."""

    frames: Frames
    """All S2 frames (acquisitions + query-only dates) and S1 frames of the cube."""
    query_frame: np.ndarray
    """(Q,) index of each query's frame."""
    acquired: np.ndarray
    """(N,) bool: the frame is an acquisition (False: a query-only date with no observation)."""


def prepare_series(observed: xr.Dataset, query: np.ndarray, use_s1: bool = True) -> SeriesInputs:
    """Frames of the full series for the query dates (see core.model.features)."""
    observed = without_empty_s1(observed)
    s2, times, query_frame = frames_for_query(
        observed["s2"].values, observed["time_s2"].values, query
    )
    latitude = cube_latitude(observed)
    days, doy = times_to_days_and_doy(times, latitude)
    height, width = s2.shape[2:]
    if use_s1 and has_s1(observed):
        s1 = s1_anomalies(observed["s1"].values)
        s1_days, s1_doy = times_to_days_and_doy(observed["time_s1"].values, latitude)
        if "orbit_state" in observed.coords:
            ascending = np.char.lower(observed["orbit_state"].values.astype(str)) == "ascending"
        else:
            ascending = np.ones(s1.shape[0], dtype=bool)
    else:
        s1 = np.zeros((0, 3, height, width), np.float32)
        s1_days = s1_doy = np.zeros(0)
        ascending = np.zeros(0, dtype=bool)
    present = np.isfinite(observed["s2"].values).any(axis=(0, 2, 3))
    frames = Frames(s2, days, doy, present, s1, s1_days, s1_doy, ascending)
    acquired = np.isin(calendar_day(times), calendar_day(observed["time_s2"].values))
    return SeriesInputs(frames, query_frame, acquired)


def temporal_windows(
    n_frames: int, query_frame: np.ndarray, size: int
) -> list[tuple[int, int, np.ndarray]]:
    """Windows [start, stop) of at most ``size`` frames covering the queries.

    Returns (start, stop, query indices) for every window that holds queries; each query is
    assigned to the window whose centre is nearest its frame.
    """
    if n_frames <= size:
        return [(0, n_frames, np.arange(query_frame.size))]
    stride = max(1, size // 2)
    starts = list(range(0, n_frames - size + 1, stride))
    if starts[-1] != n_frames - size:
        starts.append(n_frames - size)
    centres = np.array([s + (size - 1) / 2 for s in starts])
    owner = np.abs(query_frame[:, None] - centres[None, :]).argmin(axis=1)
    return [
        (starts[w], starts[w] + size, np.flatnonzero(owner == w))
        for w in range(len(starts))
        if np.any(owner == w)
    ]


@dataclass(frozen=True)
class Pass:
    """One trunk pass: a set of frames seen together and the queries predicted from it."""

    frames: np.ndarray
    """Sorted indices of the series frames in this pass."""
    queries: np.ndarray
    """Indices of the queries it answers."""
    targets: np.ndarray
    """Position of each of those queries' frames within ``frames``."""


def plan_passes(acquired: np.ndarray, query_frame: np.ndarray, size: int) -> list[Pass]:
    """Cut a series into trunk passes that cover every query.

    Acquisitions are cut into windows of at most ``size`` as :func:`temporal_windows` does;
    query-only frames (dates with no acquisition) are *added* to the window they fall in, at
    most ``size`` of them per pass (one pass more per further ``size``). The network lets no
    other frame attend to a query-only frame (:func:`frames_unseen`,
    :meth:`core.model.network.FieldFlowNet.encode`), so an acquisition's estimate is the one
    it gets with no query-only date asked for, and each query-only date's is the one it gets
    asked for alone: neither depends on how many other dates are asked for or how they are
    grouped, and a daily curve reconstructed in chunks is the curve reconstructed in one call.

    Args:
        acquired: (N,) bool, True for acquisition frames.
        query_frame: (Q,) frame index of each query.
        size: the model's window (``ModelConfig.s2_window``).
    """
    acquisitions = np.flatnonzero(acquired)
    only = ~acquired[query_frame]  # queries on a date with no acquisition
    if acquisitions.size == 0 or not only.any():
        return [
            Pass(np.arange(start, stop), queries, query_frame[queries] - start)
            for start, stop, queries in temporal_windows(len(acquired), query_frame, size)
        ]
    # Each query's position on the acquisition axis (a query-only frame sits between two).
    position = np.searchsorted(acquisitions, query_frame).astype(float)
    position = np.where(only, position - 0.5, position)
    passes: list[Pass] = []
    for start, stop, queries in temporal_windows(
        acquisitions.size, np.clip(position, 0, None), size
    ):
        context = acquisitions[start:stop]
        on_acquisition = queries[~only[queries]]
        extra = np.unique(query_frame[queries[only[queries]]])
        groups = [extra[i : i + size] for i in range(0, extra.size, size)] or [extra]
        for i, group in enumerate(groups):
            frames = np.union1d(context, group)
            answered = queries[only[queries] & np.isin(query_frame[queries], group)]
            if i == 0:
                answered = np.concatenate([on_acquisition, answered])
            if answered.size:
                targets = np.searchsorted(frames, query_frame[answered])
                passes.append(Pass(frames, answered, targets))
    return passes


def frames_unseen(acquired: np.ndarray) -> np.ndarray | None:
    """(T,) bool of a pass's frames that no other frame may attend to: its query-only dates
    (``acquired`` False); None when it has none (the network's plain attention)."""
    unseen = ~np.asarray(acquired, dtype=bool)
    return unseen if unseen.any() else None


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``length`` pixels with ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    origins = list(range(0, length - tile + 1, stride))
    if origins[-1] != length - tile:
        origins.append(length - tile)
    return origins


def blend_weights(size_y: int, size_x: int, overlap: int) -> np.ndarray:
    """(H, W) linear-ramp weights that fall towards a tile's edges over ``overlap`` pixels."""

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, dtype=np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            edge = (np.arange(k, dtype=np.float32) + 1) / (k + 1)
            r[:k] = edge
            r[n - k :] = edge[::-1]
        return r

    return np.outer(ramp(size_y), ramp(size_x))


def tile_owners(
    height: int, width: int, tiles: list[tuple[int, int]], tile: int, overlap: int
) -> np.ndarray:
    """(H, W) index into ``tiles`` (origins (y0, x0)) of the tile each pixel's samples come
    from: the one whose blend ramp is highest there, i.e. that holds it deepest inside (the
    first on ties)."""
    best = np.full((height, width), -1.0, np.float32)
    owner = np.zeros((height, width), np.int32)
    for index, (y0, x0) in enumerate(tiles):
        ys, xs = slice(y0, min(y0 + tile, height)), slice(x0, min(x0 + tile, width))
        ramp = blend_weights(ys.stop - ys.start, xs.stop - xs.start, overlap)
        deeper = ramp > best[ys, xs]
        owner[ys, xs] = np.where(deeper, index, owner[ys, xs])
        best[ys, xs] = np.maximum(ramp, best[ys, xs])
    return owner


def patches_touched(pixels: np.ndarray, patch: int) -> np.ndarray:
    """(P,) bool, row-major over the patch grid of ``pixels`` (H, W) padded to a multiple of
    ``patch``: the patches holding at least one True pixel."""
    height, width = pixels.shape
    padded = np.pad(pixels, ((0, (-height) % patch), (0, (-width) % patch)))
    rows, cols = padded.shape[0] // patch, padded.shape[1] // patch
    return padded.reshape(rows, patch, cols, patch).any(axis=(1, 3)).ravel()


def tile_frames(frames: Frames, ys: slice, xs: slice) -> Frames:
    """The whole series of one spatial tile."""
    return dataclasses.replace(frames, s2=frames.s2[:, :, ys, xs], s1=frames.s1[:, :, ys, xs])


def pad_to_multiple(frames: Frames, multiple: int) -> tuple[Frames, int, int]:
    """Pad H and W with missing pixels up to a multiple of the patch size."""
    height, width = frames.s2.shape[2:]
    pad_y, pad_x = (-height) % multiple, (-width) % multiple
    if pad_y == 0 and pad_x == 0:
        return frames, height, width
    spec = ((0, 0), (0, 0), (0, pad_y), (0, pad_x))
    padded = Frames(
        s2=np.pad(frames.s2, spec, constant_values=np.nan),
        days=frames.days,
        doy=frames.doy,
        band_present=frames.band_present,
        s1=np.pad(frames.s1, spec, constant_values=np.nan),
        s1_days=frames.s1_days,
        s1_doy=frames.s1_doy,
        s1_ascending=frames.s1_ascending,
    )
    return padded, height, width


FEATURE_THREADS_ENV = "FIELDFLOW_FEATURE_THREADS"
"""Environment variable: threads that prepare the next tiles' input features while the network
runs on the current one (0: none, each tile's features are prepared in turn). Default: on a GPU
half the CPUs this process may use, 1 to 4; on the CPU none (there the network needs the cores:
with a thread, 128 px took the same time and 250 MiB more memory on 2 cores)."""


def feature_threads(device_type: str = "cpu") -> int:
    """Threads of :func:`tile_inputs` for a network on ``device_type``: :data:`FEATURE_THREADS_ENV`
    if set, else 0 on the CPU and half the usable CPUs (1 to 4) on a GPU."""
    text = os.environ.get(FEATURE_THREADS_ENV, "").strip()
    if text:
        try:
            return max(0, int(text))
        except ValueError:
            raise InputError(
                f"{FEATURE_THREADS_ENV} must be a whole number of threads, not {text!r}."
            ) from None
    if device_type == "cpu":
        return 0
    return min(4, max(1, usable_cpus() // 2))


def tile_inputs(
    frames: Frames, tiles: list[tuple[int, int]], config: ModelConfig, threads: int = 0
) -> Iterator[tuple[int, int, WindowInputs]]:
    """Each tile's unpadded height and width and its network inputs, in the order of ``tiles``.

    The inputs (interpolations, smoothers, gap lengths: numpy, per pixel) are worked out by
    ``threads`` threads a few tiles ahead (see :func:`feature_threads`), so that on a GPU the
    CPU prepares the next tiles while the network runs, several at once on many cores; 0: in
    turn, in the calling thread. They depend on nothing random, so the output is the same with
    any number of threads. The Whittaker channels (``config.whittaker_features``) are worked out
    once for the field, not per tile: tiles overlap, and each pixel's smoother is its own."""
    field_curve = whittaker_at_frames(frames.s2, frames.days) if config.whittaker_features else None

    def prepare(origin: tuple[int, int]) -> tuple[int, int, WindowInputs]:
        y0, x0 = origin
        height, width = frames.s2.shape[2:]
        ys = slice(y0, min(y0 + config.tile, height))
        xs = slice(x0, min(x0 + config.tile, width))
        tile, tile_h, tile_w = pad_to_multiple(tile_frames(frames, ys, xs), config.patch)
        curve = None
        if field_curve is not None:
            curve = field_curve[:, :, ys, xs]
            pad = ((0, 0), (0, 0), (0, tile.s2.shape[2] - tile_h), (0, tile.s2.shape[3] - tile_w))
            curve = np.pad(curve, pad, constant_values=np.nan)
        return (
            tile_h,
            tile_w,
            series_inputs(tile, config.smooth_features, config.whittaker_features, curve),
        )

    if threads == 0:
        yield from map(prepare, tiles)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tile-inputs") as pool:
        ahead: deque[Future] = deque()
        for origin in tiles:
            ahead.append(pool.submit(prepare, origin))
            if len(ahead) > threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def thin_s1(window: WindowInputs, most: int) -> WindowInputs:
    """Keep at most ``most`` S1 frames of a window, evenly spread in time."""
    n = window.s1.shape[0]
    if n <= most:
        return window
    pick = np.unique(np.linspace(0, n - 1, most).round().astype(int))
    return dataclasses.replace(window, s1=window.s1[pick], s1_days=window.s1_days[pick])


@torch.no_grad()
def predict_window(
    checkpoint: Checkpoint,
    window: WindowInputs,
    targets: np.ndarray,
    samples: int,
    steps: int,
    generator: torch.Generator,
    device: str,
    solver: str = "euler",
    sampled_tokens: np.ndarray | None = None,
    unseen: np.ndarray | None = None,
    sampled_targets: np.ndarray | None = None,
    views: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and samples at frames ``targets`` of one window of one (patch-aligned) tile.

    ``sampled_tokens`` (P,) bool, row-major patches: generate samples for these tokens only
    (the others' samples equal the mean); None: all of them. ``unseen`` (T,) bool: frames no
    other frame attends to (see :func:`frames_unseen`); None: none. ``sampled_targets`` (Q,)
    bool: generate samples for these targets only; None: all of them. ``views``: the mean
    averaged over this many views of the window (:meth:`FieldFlowNet.estimate`).

    Returns:
        mean (Q, 10, H, W) and samples (K, S, 10, H, W) of the S sampled targets (None when
        K = 1 or none is sampled), in reflectance units.
    """
    model = checkpoint.model
    origin = window.days[0]
    as_tensor = functools.partial(torch.as_tensor, device=device, dtype=torch.float32)
    features, correction = model.estimate(
        as_tensor(window.s2)[None],
        as_tensor(window.days - origin)[None],
        as_tensor(window.s1)[None],
        as_tensor(window.s1_days - origin)[None],
        None if unseen is None else torch.as_tensor(unseen, device=device)[None],
        frames=torch.as_tensor(targets, device=device),
        views=views,
    )  # features (1, Q, P, D)
    height, width = window.s2.shape[2:]
    correction = correction[0]
    mean = as_tensor(window.base[targets]) + correction  # (Q, 10, H, W) model units
    mean_np = mean.cpu().numpy() / REFL_SCALE
    if sampled_targets is not None and not sampled_targets.all():
        if not sampled_targets.any():
            return mean_np, None
        chosen = torch.as_tensor(np.flatnonzero(sampled_targets), device=device)
        features, mean = features[:, chosen], mean[chosen]
    if samples <= 1:
        return mean_np, None
    if sampled_tokens is not None and sampled_tokens.all():
        sampled_tokens = None  # all of them: no gather and scatter
    tokens = None if sampled_tokens is None else torch.as_tensor(sampled_tokens, device=device)
    residual = model.sample_residuals(
        features, height, width, samples, steps, generator, SOLVERS[solver], tokens
    )
    draws = mean[None] + checkpoint.spread_scale * residual
    return mean_np, draws.cpu().numpy() / REFL_SCALE


FIELD_CACHE_SIZE = 2
"""Per-field tuned or calibrated checkpoints kept per process: a Run asks for frames and for the
curve in many calls on the same cube, and each must not tune or calibrate again."""
_field: OrderedDict[tuple, tuple[Checkpoint, Checkpoint]] = OrderedDict()
_field_lock = threading.Lock()

FIELD_CALIBRATION_EPISODES = 24
"""Self-supervised episodes (hidden clear pixels) on which per-field calibration fits the spread."""
FIELD_EPISODE_CROP: int | None = None
"""Side in pixels of those episodes' crops; None: the checkpoint's training crop (32 px)."""


def observed_fingerprint(observed: xr.Dataset) -> str:
    """A digest of everything per-field tuning reads: the clear reflectance (NaN elsewhere), the
    S2 dates, where present the S1 series, and whether the dates are read half a year on (south
    of the Tropic of Capricorn). Hidden or cloudy pixels' values are not in it."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(b"south" if in_southern_seasons(cube_latitude(observed)) else b"")
    names = ["s2", "time_s2"] + (["s1", "time_s1"] if has_s1(observed) else [])
    for name in names:
        values = np.ascontiguousarray(observed[name].values)
        digest.update(name.encode() + str(values.shape).encode() + str(values.dtype).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def clear_field_cache() -> None:
    """Forget every per-field tuned or calibrated checkpoint (tests; memory)."""
    with _field_lock:
        _field.clear()


def field_checkpoint(
    checkpoint: Checkpoint,
    observed: xr.Dataset,
    options: ReconstructOptions,
    steps: int,
    device: str,
) -> Checkpoint:
    """``checkpoint`` as this field's request asks for it; the cached original is untouched.

    - ``options.adapt_steps`` > 0: its network tuned for that many steps on ``observed``'s own
      clear pixels (see :func:`core.model.training.adapt`).
    - ``options.calibrate_field`` with K > 1 samples: its spread scale refitted so that the
      p10-p90 band of K samples covers 80 % of ``observed``'s clear pixels when they are hidden
      (:data:`FIELD_CALIBRATION_EPISODES` episodes as in training: whole frames, real cloud
      masks, long gaps). A cube with under 4 acquisitions, none at least half clear, or a side
      under one patch keeps the checkpoint's spread. With tuning too, the tuned network is
      calibrated on the field it was tuned on, which could make its band too narrow; on the
      held-out cubes it did not (README, "The uncertainty band").
    - ``options.blend_field``: a :class:`core.model.blend.FieldBlend` fitted on the same
      episodes (how far to move the estimate toward the Whittaker smoother, per band and
      distance to clear data); with calibration, the spread is fitted around the blended
      estimate. Too short a series (as above) gets no blend: the network's estimate alone.
    - ``options.fit_curve_band`` with calibration: the factor on a field-mean NDVI band
      (``field_ndvi_scale``; :func:`core.model.calibration.fit_field_ndvi_scale`), fitted on the
      episodes' hidden frames; None with under 20 of them.
      With ``options.curve_band_by_distance`` too, that factor per bucket of a frame's days
      to clear data as well, and where each stands on the days axis
      (``field_ndvi_scale_by_distance``, ``field_ndvi_scale_days``;
      :func:`core.model.calibration.fit_field_ndvi_scale_by_distance`).
    - ``options.error_band`` with calibration: the reflectance band's half widths from the
      estimate's own errors on the episodes, per band and distance bucket (``error_band``;
      :func:`core.model.calibration.fit_error_band`), fitted around the blended estimate.
      With ``options.ndvi_error_band`` too, the per-pixel NDVI band's half widths per
      distance bucket from the estimate's NDVI errors (``ndvi_error_band``; None without red
      and NIR), and the curve band's factor fitted on them.
    - ``options.band_by_distance`` with calibration: the spread is fitted per bucket of days to
      the nearest clear observation (``spread_by_distance``; a bucket with under 200 hidden
      values takes the field's overall factor).

    All are seeded, so the same checkpoint, cube, options and seed give the same result: it is
    kept (:data:`FIELD_CACHE_SIZE` per process) and reused by later calls on the same cube.
    """
    from core.model import blend as blend_module
    from core.model import training as training_module
    from core.model.blend import cross_fitted_blend, field_scores, fit_blend
    from core.model.calibration import (
        episode_field_ndvi,
        episode_pixel_ndvi,
        field_ndvi_scores,
        fit_error_band,
        fit_field_ndvi_scale,
        fit_field_ndvi_scale_by_distance,
        fit_pixel_ndvi_factors,
        fit_spread,
        fit_spread_by_distance,
    )
    from core.model.training import (
        MEASURE_BEAT,
        adapt,
        blend_targets,
        episode_predictions,
        series_from_cube,
        target_bands,
        target_distances,
        target_episodes,
        validation_episodes,
    )

    calibration_k = options.samples if options.calibrate_field and options.samples > 1 else 0
    by_distance = bool(calibration_k) and options.band_by_distance
    error_band = bool(calibration_k) and options.error_band
    ndvi_error_band = error_band and options.ndvi_error_band
    fits_ndvi_band = bool(calibration_k) and options.fit_ndvi_band and not ndvi_error_band
    fits_curve = bool(calibration_k) and options.fit_curve_band
    curve_by_distance = fits_curve and options.curve_band_by_distance
    if options.adapt_steps == 0 and calibration_k == 0 and not options.blend_field:
        return checkpoint
    key = (
        id(checkpoint),
        observed_fingerprint(observed),
        options.adapt_steps,
        calibration_k,
        steps if calibration_k else 0,  # the blend uses the estimate, which steps do not move
        by_distance,
        error_band,
        ndvi_error_band,
        fits_ndvi_band,
        fits_curve,
        curve_by_distance,
        options.blend_field,
        options.whittaker_lambda if options.blend_field else None,
        blend_module.BLEND_MEASURE if options.blend_field else None,
        FIELD_EPISODE_CROP,
        training_module.ADAPT_LONG_GAP_SHARE if options.adapt_steps else None,
        options.views,
        options.seed,
        device,
    )
    with _field_lock:
        entry = _field.get(key)
        if entry is not None and entry[0] is checkpoint:  # not a new object at a reused id
            _field.move_to_end(key)
            return entry[1]
    series = series_from_cube(observed, "this field")
    # Too few clear acquisitions: not tuned, and the checkpoint's band and no blend (the
    # output says so: field_attrs, core.season.fit_notes).
    clear = series.clear_acquisitions
    result = checkpoint
    if options.adapt_steps > 0 and clear >= MIN_CLEAR_ACQUISITIONS:
        model = adapt(
            checkpoint.model,
            series,
            options.adapt_steps,
            checkpoint.train_config,
            seed=options.seed,
            device=device,
        )
        result = dataclasses.replace(result, model=model)
    if (calibration_k or options.blend_field) and clear >= MIN_CLEAR_ACQUISITIONS:
        beat(MEASURE_BEAT, 0, FIELD_CALIBRATION_EPISODES)  # cutting the episodes takes seconds
        crop = FIELD_EPISODE_CROP or checkpoint.train_config.crop
        episodes = validation_episodes(
            [series],
            FIELD_CALIBRATION_EPISODES,
            dataclasses.replace(checkpoint.train_config, crop=crop),
            seed=options.seed,
            smooth_features=checkpoint.config.smooth_features,
            whittaker_features=checkpoint.config.whittaker_features,
            stratified=True,
            patch=checkpoint.config.patch,
            with_smoother=options.blend_field,
            smoother_lambda=options.whittaker_lambda,
            with_distance=by_distance or error_band or fits_curve or fits_ndvi_band,
        )
        if not episodes:  # a field of a few pixels: nothing to hide and score
            result = dataclasses.replace(result, field_too_small=True)
        else:  # else the checkpoint's spread and no blend (see above)
            mean, linear, draws, truth = episode_predictions(
                result.model, episodes, calibration_k, steps, options.seed, device,
                views=options.views,
            )  # fmt: skip
            if options.blend_field:
                measure = blend_module.BLEND_MEASURE
                smoother, band, blend_at = blend_targets(episodes, measure)
                # Tuning learns from these very pixels: the network before it is scored (the
                # mean needs no samples), so that the figure does not flatter the model.
                network = mean
                if options.adapt_steps > 0:
                    network = episode_predictions(
                        checkpoint.model, episodes, 1, 1, options.seed, device, report=False,
                        views=options.views,
                    )[0]  # fmt: skip
                episode_of = target_episodes(episodes)
                blended = cross_fitted_blend(
                    network, smoother, truth, band, blend_at, episode_of, measure
                )
                scores = field_scores(
                    network, smoother, linear, truth, band, blend_at, episode_of,
                    measure, REFL_SCALE, tuned=options.adapt_steps > 0, blended=blended,
                )  # fmt: skip
                if scores is not None and blended is not None:  # the curve's index too
                    in_ndvi = field_ndvi_scores(episodes, (blended, smoother, linear), truth)
                    scores = dataclasses.replace(scores, ndvi=in_ndvi)
                blend = fit_blend(mean, smoother, truth, band, blend_at, measure)
                mean = mean + blend.delta_values(mean, smoother, band, blend_at)
                result = dataclasses.replace(result, blend=blend, field_scores=scores)
            scale: float | np.ndarray = result.spread_scale
            if calibration_k:
                result = dataclasses.replace(result, band_fitted=True)
            if calibration_k and by_distance:
                days_away = target_distances(episodes)
                overall, scales = fit_spread_by_distance(mean, draws, truth, days_away)
                result = dataclasses.replace(
                    result, spread_scale=overall, spread_by_distance=scales
                )
                scale = scales[distance_bucket(days_away)]
            elif calibration_k:
                result = dataclasses.replace(result, spread_scale=fit_spread(mean, draws, truth))
                scale = result.spread_scale
            ndvi_half = None
            if error_band:  # around the (blended) estimate, from its errors alone
                half = fit_error_band(
                    mean, truth, target_bands(episodes), target_distances(episodes), N_BANDS
                )
                pixels = episode_pixel_ndvi(episodes, mean, truth) if ndvi_error_band else None
                if pixels is not None and pixels["true"].size:
                    no_band = np.zeros(pixels["true"].size, np.intp)
                    ndvi_half = fit_error_band(
                        pixels["estimate"], pixels["true"], no_band, pixels["distance"], 1
                    )[0]
                result = dataclasses.replace(
                    result, error_band=half / REFL_SCALE, ndvi_error_band=ndvi_half
                )
            ndvi_factors = None
            if fits_ndvi_band:  # the samples' NDVI band, moved onto the estimate, per pixel
                pixels = episode_pixel_ndvi(episodes, mean, truth, scale * draws)
                if pixels["true"].size:
                    low, median, high = np.percentile(pixels["samples"], [10, 50, 90], axis=0)
                    ndvi_factors = fit_pixel_ndvi_factors(
                        pixels["true"],
                        pixels["estimate"],
                        median - low,
                        high - median,
                        pixels["distance"],
                    )
                    result = dataclasses.replace(result, ndvi_band_factors=ndvi_factors)
            if fits_curve:  # field means, on hidden frames
                rows = episode_field_ndvi(
                    episodes, mean, draws, truth, scale, ndvi_half, ndvi_factors
                )
                by_days = fit_field_ndvi_scale_by_distance(rows) if curve_by_distance else None
                result = dataclasses.replace(
                    result,
                    field_ndvi_scale=fit_field_ndvi_scale(rows),
                    field_ndvi_scale_by_distance=None if by_days is None else by_days[0],
                    field_ndvi_scale_days=None if by_days is None else by_days[1],
                    field_ndvi_scale_frames=None if by_days is None else by_days[2],
                )
    with _field_lock:
        _field[key] = (checkpoint, result)
        while len(_field) > FIELD_CACHE_SIZE:
            _field.popitem(last=False)
    return result


def default_steps(checkpoint: Checkpoint, options: ReconstructOptions) -> int:
    """Steps of a request that names none: :data:`CALIBRATED_STEPS` when the band is fitted on
    the field (K > 1), else the checkpoint's, at which its spread factor was fitted."""
    if options.calibrate_field and options.samples > 1:
        return CALIBRATED_STEPS
    return checkpoint.config.default_steps


@dataclass(frozen=True)
class QueryKernel:
    """Where the network runs for a request, and how each date asked for is read off it."""

    dates: np.ndarray
    """(E,) datetime64[ns], sorted: the dates the network is run at."""
    index: np.ndarray
    """(Q, M) indices into ``dates`` that each query's estimate mixes."""
    weight: np.ndarray
    """(Q, M) float32 weights of those dates; each row sums to 1 (0 for padding)."""
    direct: np.ndarray
    """(Q,) bool: the query is the network's own estimate at its date (``index[:, 0]``)."""


S2_REVISIT_DAYS = 5
"""Sentinel-2's revisit (two satellites): one orbit's acquisitions over a place lie a whole
number of these days apart."""


def on_cadence(days: np.ndarray, acquisitions: np.ndarray) -> np.ndarray:
    """(Q,) bool: each calendar day lies a whole number of :data:`S2_REVISIT_DAYS` from an
    acquisition's day, i.e. on a day one of the cube's orbits could have acquired."""
    phases = np.unique(calendar_day(acquisitions).astype(np.int64) % S2_REVISIT_DAYS)
    return np.isin(calendar_day(days).astype(np.int64) % S2_REVISIT_DAYS, phases)


def query_kernel(query: np.ndarray, acquisitions: np.ndarray, half_width: int) -> QueryKernel:
    """The dates the network runs at for ``query``, and how each query mixes them.

    A query on the acquisitions' cadence (:func:`on_cadence`: every acquisition, and every date
    a whole number of 5 days from one) is the network's own estimate there; the network was
    trained on hidden frames, which all lie on it. A query off the cadence is the
    triangular-weighted mean of the network's estimates at its own date and at the same time of
    day up to ``half_width`` days either side (weights ``half_width + 1 - |offset|``, those days
    kept within the acquisitions' calendar span and the weights renormalised; acquisitions
    among them with their clear pixels as observed, see :func:`read_off_kernel`). The network's
    estimate off the cadence jitters from day to day (the daily curve turned 13 times a month
    on be-flanders-a, against 1.3 for linear interpolation); the mean removes most of that
    (README, "Dates off the acquisitions' cadence"). A query's estimate depends on the cube
    alone, not on the other dates asked for. ``half_width`` 0: the network's own estimate at
    every date.

    Args:
        query: (Q,) datetime64, each within the acquisitions' calendar span.
        acquisitions: (T,) datetime64 acquisition times.
        half_width: days either side (>= 0).
    """
    if half_width < 0:
        raise InputError(f"--smooth-days must be 0 or more, not {half_width}.")
    query = np.asarray(query, "datetime64[ns]")
    acq_day = calendar_day(acquisitions)
    direct = on_cadence(query, acquisitions) | (half_width == 0)
    offsets = np.arange(-half_width, half_width + 1)
    # Each query's own date first, so that a direct query reads index[:, 0].
    order = np.argsort(np.abs(offsets), kind="stable")
    offsets = offsets[order]
    base = (half_width + 1 - np.abs(offsets)).astype(np.float64)
    around = query[:, None] + offsets[None].astype("timedelta64[D]")
    inside = (calendar_day(around) >= acq_day.min()) & (calendar_day(around) <= acq_day.max())
    use = np.where(direct[:, None], offsets[None] == 0, inside)
    dates = np.unique(around[use])
    index = np.where(use, np.searchsorted(dates, around), 0)
    weight = np.where(use, base[None], 0.0)
    weight /= weight.sum(axis=1, keepdims=True)
    return QueryKernel(dates, index, weight.astype(np.float32), direct)


def read_off_kernel(observed: xr.Dataset, kernel: QueryKernel, mean: np.ndarray) -> np.ndarray:
    """The estimate (Q, ...) at the queries from the network's at ``kernel.dates`` (E, ...). A
    direct query takes the network's own estimate; any other mixes its dates, with an
    acquisition's clear pixels as observed, as the frame a user sees at that date shows them.
    The samples are not mixed: a query's are the network's own at its date, around the mixed
    estimate, so only the queries' own dates are sampled (mixing independent draws of five dates
    would also need five times the samples' memory). One query at a time, so that a large
    field's chunk holds no more than its inputs and outputs."""
    out = np.empty((kernel.direct.size, *mean.shape[1:]), np.float32)
    obs_days = calendar_day(observed["time_s2"].values)
    dates = calendar_day(kernel.dates)

    def at(e: int) -> np.ndarray:
        value = mean[e]
        for t in np.flatnonzero(obs_days == dates[e]):
            obs = observed["s2"].values[t]
            clear = observed["valid"].values[t].astype(bool)[None] & np.isfinite(obs)
            value = np.where(clear, obs, value)
        return value

    for q in range(kernel.direct.size):
        if kernel.direct[q]:
            out[q] = mean[kernel.index[q, 0]]
            continue
        used = np.flatnonzero(kernel.weight[q] > 0)
        out[q] = sum(np.float32(kernel.weight[q, m]) * at(kernel.index[q, m]) for m in used)
    return out


def model_method(
    observed: xr.Dataset, query: np.ndarray, options: ReconstructOptions
) -> Prediction:
    """Reconstruct with the trained model (see the module docstring)."""
    device = resolve_device(options.device)
    path = str(options.checkpoint) if options.checkpoint else None
    checkpoint = cached_checkpoint(path, device, options.checkpoint_version)
    steps = options.steps or default_steps(checkpoint, options)  # checked: core.reconstruct
    kernel = query_kernel(query, observed["time_s2"].values, options.smooth_days)
    base, checkpoint = checkpoint, field_checkpoint(checkpoint, observed, options, steps, device)
    # Each query's own date is the only one sampled. The queries are sorted and unique (see
    # core.reconstruct), so the residuals come back one per query, in the queries' order.
    own = np.zeros(kernel.dates.size, dtype=bool)
    own[kernel.index[:, 0]] = True
    mean, residuals = network_at(
        observed, kernel.dates, options, checkpoint, steps, device, sampled=own
    )
    if not kernel.direct.all():
        mean = read_off_kernel(observed, kernel, mean)
    distance = None
    if residuals is not None and (
        checkpoint.spread_by_distance is not None
        or checkpoint.error_band is not None
        or checkpoint.ndvi_band_factors is not None
    ):
        days = to_days(observed["time_s2"].values)
        distance = days_to_clear(observed["s2"].values, days, to_days(query))
    draws = None
    if residuals is not None:
        if checkpoint.spread_by_distance is not None:
            residuals *= spread_multiplier(checkpoint, distance)[None, :, None]
        residuals += mean[None]
        draws = residuals
    band_half = None
    if draws is not None and checkpoint.error_band is not None:
        half = np.asarray(checkpoint.error_band, np.float32)  # (bands, buckets)
        if np.isnan(half).any():  # a band the episodes never hid: the widest fitted
            half = np.where(np.isnan(half), np.nanmax(half), half)
        band_half = np.moveaxis(half[:, distance_bucket(distance)], 0, 1)  # (Q, B, H, W)
    ndvi_factor = None
    if draws is not None and checkpoint.ndvi_band_factors is not None:
        factors = np.asarray(checkpoint.ndvi_band_factors, np.float32)
        ndvi_factor = factors[distance_bucket(distance)]  # (Q, H, W)
    ndvi_half = None
    if band_half is not None and checkpoint.ndvi_error_band is not None:
        ndvi_half = np.asarray(checkpoint.ndvi_error_band, np.float32)[distance_bucket(distance)]
    attrs = field_attrs(base, checkpoint, options)
    attrs["model_steps"] = int(steps)
    # Which model made it: the file, its weights' digest and what it was trained on.
    attrs["model_checkpoint"] = base.source
    attrs["model_weights_sha256"] = base.weights_sha256
    attrs["model_trained_sites"] = ",".join(base.seen_sites)
    # How the checkpoint's own training measured it (its calibration values): what a Run that
    # leans on it unrefitted should tell (core.season.checkpoint_warnings).
    validation = base.record.get("validation")
    if isinstance(validation, dict):
        for name, key in (("mae_ratio", "mae_ratio"), ("coverage", "coverage_calibrated")):
            if isinstance(validation.get(key), int | float):
                attrs[f"model_checkpoint_{name}"] = round(float(validation[key]), 4)
    attrs["model_samples"] = int(options.samples)
    # A field the network was trained on (the offline demo's cube, or one fetched inside a
    # training cube's footprint): its scores flatter it.
    overlap = training_overlap(base, observed)
    attrs["model_trained_on_site"] = int(overlap.trained_on)
    attrs["model_trained_share"] = round(overlap.share, 4)
    attrs["model_training_site"] = overlap.site or ""
    if overlap.nearest_km is not None:
        attrs["model_nearest_training_km"] = round(overlap.nearest_km, 1)
        attrs["model_nearest_training_site"] = overlap.nearest_site or ""
    latitude = cube_latitude(observed)
    if in_southern_seasons(latitude) and base.config.day_of_year:  # a network without the
        # calendar (ModelConfig.day_of_year False) reads no season: nothing was shifted
        attrs["model_season_shift_days"] = HALF_YEAR_DAYS
        attrs["model_field_latitude"] = round(float(latitude), 2)
    if draws is not None:
        bf16 = flow_in_bf16(torch.device(device).type)
        attrs["model_flow_precision"] = "bfloat16" if bf16 else "float32"
    return Prediction(
        mean=mean,
        samples=draws,
        band_half=band_half,
        ndvi_factor=ndvi_factor,
        ndvi_half=ndvi_half,
        attrs=attrs,
    )


def network_at(
    observed: xr.Dataset,
    query: np.ndarray,
    options: ReconstructOptions,
    checkpoint: Checkpoint,
    steps: int,
    device: str,
    sampled: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The network's (field-blended) estimate (Q, 10, H, W) at ``query`` and, with K > 1, the
    samples' residuals around it (K, S, 10, H, W) at the S dates ``sampled`` marks ((Q,) bool;
    None: all): tiles, passes, trunk once, flow head."""
    config = checkpoint.config
    series = prepare_series(observed, query)
    frames = series.frames
    n_query = query.size
    if sampled is None:
        sampled = np.ones(n_query, dtype=bool)
    slot = np.cumsum(sampled) - 1  # each sampled date's place in the residuals
    height, width = frames.s2.shape[2:]
    mean = np.zeros((n_query, 10, height, width), np.float32)
    # The mean is blended across overlapping tiles with linear ramps. The samples are not: each
    # pixel's residuals (sample - mean) come from the one tile that owns it (see tile_owners),
    # and only owned tokens are sampled. Averaging the tiles' independent draws would shrink
    # their spread in the overlaps (to 0.71 x across a two-tile overlap, 0.5 x where four
    # meet), and sampling every tile's overlap costs the flow head up to 2.25 x the work.
    residuals = (
        np.zeros((options.samples, int(sampled.sum()), 10, height, width), np.float32)
        if options.samples > 1 and sampled.any()
        else None
    )
    weight = np.zeros((height, width), np.float32)
    generator = torch.Generator().manual_seed(options.seed)
    tiles = [
        (y0, x0)
        for y0 in tile_origins(height, config.tile, config.tile_overlap)
        for x0 in tile_origins(width, config.tile, config.tile_overlap)
    ]
    owner = tile_owners(height, width, tiles, config.tile, config.tile_overlap)
    passes = plan_passes(series.acquired, series.query_frame, config.s2_window)
    parts = len(tiles) * len(passes)
    part(0, parts)  # the reconstruction proper starts (the field's fits, if any, are done)
    blend = checkpoint.blend
    key = None
    if blend is not None:  # once for the field: tiles overlap, and each pixel's smoother is its own
        smoother, key = blend_inputs(
            observed["s2"].values,
            to_days(observed["time_s2"].values),
            to_days(query),
            options.whittaker_lambda,
            blend.measure,
        )
    prepared = tile_inputs(frames, tiles, config, feature_threads(torch.device(device).type))
    for index, (y0, x0) in enumerate(tiles):
        ys = slice(y0, min(y0 + config.tile, height))
        xs = slice(x0, min(x0 + config.tile, width))
        ramp = blend_weights(ys.stop - ys.start, xs.stop - xs.start, config.tile_overlap)
        weight[ys, xs] += ramp
        owned = owner[ys, xs] == index
        tile_h, tile_w, inputs = next(prepared)
        tokens = patches_touched(owned, config.patch)
        tile_mean = np.zeros((n_query, 10, tile_h, tile_w), np.float32)
        for done, step in enumerate(passes, start=index * len(passes) + 1):
            window = thin_s1(
                select_frames(inputs, step.frames, config.s1_margin_days), config.max_s1_frames
            )
            m, s = predict_window(
                checkpoint,
                window,
                step.targets,
                options.samples,
                steps,
                generator,
                device,
                sampled_tokens=tokens,
                unseen=frames_unseen(series.acquired[step.frames]),
                sampled_targets=sampled[step.queries],
                views=options.views,
            )
            tile_mean[step.queries] = m[..., :tile_h, :tile_w]
            if residuals is not None and s is not None:
                chosen = sampled[step.queries]
                residual = (s - m[chosen][None])[..., :tile_h, :tile_w]
                residuals[:, slot[step.queries[chosen]], :, ys, xs] += residual * owned
            part(done, parts)  # a Run's bar moves, and a cancelled Run stops, within a chunk
        if blend is not None:  # samples move with their mean: their residuals stay
            tile_mean += blend.delta(tile_mean, smoother[:, :, ys, xs], key[:, ys, xs])
        mean[:, :, ys, xs] += tile_mean * ramp
    mean /= weight
    return mean, residuals


def spread_multiplier(checkpoint: Checkpoint, distance: np.ndarray) -> np.ndarray:
    """(Q, H, W) factor on the residuals that :func:`predict_window` scaled by the overall
    ``spread_scale``, so that they carry the factor of each pixel's distance bucket instead."""
    scales = np.asarray(checkpoint.spread_by_distance, np.float32)
    return scales[distance_bucket(distance)] / np.float32(checkpoint.spread_scale)


def field_attrs(base: Checkpoint, used: Checkpoint, options: ReconstructOptions) -> dict:
    """What a reconstruction records of the model's per-field fits (its output's attributes):
    the spread factor used and the checkpoint's, what was asked, and the field blend's weights
    where it was fitted (per band, then per distance bucket; their mean over the bands the
    field has)."""
    attrs: dict[str, object] = {
        "model_spread_scale": float(used.spread_scale),
        "model_checkpoint_spread_scale": float(base.spread_scale),
        "model_adapt_steps": int(options.adapt_steps),
        # Asked for and not done: too few acquisitions with clear pixels to tune on.
        "model_tuning_skipped": int(options.adapt_steps > 0 and used.model is base.model),
        "model_calibrate_field": int(options.calibrate_field and options.samples > 1),
        # Asked for and done: a field with too few clear acquisitions keeps the checkpoint's.
        "model_band_fitted": int(used.band_fitted),
        "model_blend_field": int(options.blend_field),
        # Asked for, and the field too small (too few clear pixels) to measure anything on.
        "model_field_too_small": int(used.field_too_small),
    }
    if used.field_ndvi_scale is not None:
        attrs[FIELD_NDVI_SCALE_ATTR] = float(used.field_ndvi_scale)
    if used.field_ndvi_scale_by_distance is not None:
        attrs[FIELD_NDVI_SCALE_BY_DISTANCE_ATTR] = np.round(used.field_ndvi_scale_by_distance, 4)
        attrs[FIELD_NDVI_SCALE_DAYS_ATTR] = np.round(used.field_ndvi_scale_days, 2)
        attrs[FIELD_NDVI_SCALE_FRAMES_ATTR] = np.asarray(used.field_ndvi_scale_frames, np.int64)
    if used.spread_by_distance is not None:
        attrs["model_spread_by_distance"] = np.round(used.spread_by_distance, 4)
    if used.error_band is not None:  # band by band, then bucket by bucket
        attrs[ERROR_BAND_ATTR] = np.round(used.error_band.ravel(), 5)
    if used.ndvi_error_band is not None:
        attrs[NDVI_ERROR_BAND_ATTR] = np.round(used.ndvi_error_band, 5)
    if used.ndvi_band_factors is not None:
        attrs[NDVI_BAND_FACTORS_ATTR] = np.round(used.ndvi_band_factors, 4)
    if used.blend is not None:
        attrs.update(used.blend.attrs())
    if used.field_scores is not None:
        attrs.update(used.field_scores.attrs())
    return attrs
