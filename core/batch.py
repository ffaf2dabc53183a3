"""Many fields in one run: fetch, reconstruct and write each field's outputs on a Dask cluster.

Every feature of a fields file becomes two tasks: :func:`fetch_task` (I/O: the cube through
the disk cache, :func:`core.cache.fetch_cached`) and :func:`reconstruct_task`, which depends on
it, reconstructs, writes the field's outputs and returns its :class:`FieldRow`. The second task
asks for the ``GPU`` resource when the method needs one and the cluster has GPU workers (see
:mod:`core.distributed`); fetch tasks run on any worker.

Outputs, in ``<out>/<field_id>/`` (written by the worker, so ``<out>`` must be a folder every
worker sees under the same path):

* ``ndvi.csv``: the field's NDVI curve, daily by default (:mod:`core.curve`, field mask from
  the outline);
* ``frames.tif``: cloud-free frames at every acquisition day and every ``every_days`` days, as
  one COG (:mod:`core.cog`); those on the curve's days (all of them with a daily curve) are
  the curve's own reconstruction of that day;
* ``done.json``: written last, atomically: the request, each output's size and SHA-256, and
  the field's summary row. Its presence with a matching request and intact outputs is what
  makes a re-run skip the field (no fetch, no request to the STAC API). Anything less (a run
  killed half-way, an output changed or missing, other dates or method) redoes the field.

and ``<out>/summary.csv``, one row per field in input order (:data:`SUMMARY_COLUMNS`). A field
that fails is a row with status ``failed`` and its message; the other fields carry on.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import json
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from core.admission import PROCESS_GATE, run_bytes
from core.cache import BATCHES_FOLDER, fetch_cached
from core.cog import write_frame_stack
from core.config import DEFAULT_CHECKPOINT, Settings
from core.curve import CURVE_COLUMNS, PARTLY_SEEN_NOTED, ndvi_curve, write_curve_csv
from core.distributed import TaskCancelled, model_task, stop_when_cancelled
from core.errors import ClusterError, FieldError, FieldFlowError, InputError, OutputError
from core.export import safe_file_stem
from core.fetch import FetchResult, clear_fraction, parse_period
from core.field import (
    DEFAULT_MAX_AREA_HA,
    Field,
    FieldFile,
    read_field_file,
    read_field_file_apart,
)
from core.grid import field_mask
from core.model.blend import better_baseline_of, field_ratio
from core.model.features import in_southern_seasons
from core.phenology import SeasonMarks, season_marks
from core.progress import check, listening
from core.reconstruct import (
    OUTSIDE_NOTED,
    PIXELWISE_METHODS,
    ReconstructOptions,
    imaged_part,
    pinned,
    reconstruct,
    require_imaged,
    screened,
)
from core.storage import atomic_output, make_folder, remove_stale_temporaries
from core.timeline import calendar_day, regular_dates, require_acquisitions_around

if TYPE_CHECKING:
    from core.distributed import Cluster

FORMAT_VERSION = 4
"""Bump when the outputs for the same request change; older markers then count as stale (3:
the fetch's margin either side of the period changed every field's ends, 2026-12-05; 4: the
curve's ``band`` column, 2026-12-06)."""
CURVE_FILE = "ndvi.csv"
FRAMES_FILE = "frames.tif"
MARKER_FILE = "done.json"
EARLIER_FOLDER = "earlier"
"""Where a failed field's folder keeps the complete outputs of an earlier request
(:func:`clear_outputs`)."""
SUMMARY_FILE = "summary.csv"
OUTPUT_FILES: tuple[str, ...] = (CURVE_FILE, FRAMES_FILE)
"""Files the marker vouches for."""
DEFAULT_EVERY_DAYS = 5
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
SUMMARY_COLUMNS: tuple[str, ...] = (
    "field_id",
    "name",
    "status",
    "scenes_s2",
    "scenes_s1",
    "s1_status",
    "frames",
    "clear_fraction_mean",
    "outside_imagery",
    "seen_fraction",
    "days_to_clear_max",
    "ndvi_peak_date",
    "ndvi_peak",
    "green_up_date",
    "decline_date",
    "model_vs_baseline",
    "model_ndvi_vs_baseline",
    "model_trained_here",
    "seconds",
    "error",
)
"""Columns of ``summary.csv``; see :class:`FieldRow` for their meaning."""
_GEOJSON_SUFFIXES = (".geojson", ".json")
LISTING_STAGE = "checking the file's fields"
"""The stage :func:`list_fields` reports, with the features checked so far of all."""


# --- value objects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRequest:
    """What to do with every field of a batch."""

    start: str
    """First day, ``YYYY-MM-DD`` (normalised to ISO on construction)."""
    end: str
    """Last day, ``YYYY-MM-DD``."""
    method: str = "linear"
    """Reconstruction method (see :func:`core.reconstruct.available_methods`)."""
    options: ReconstructOptions = field(default_factory=ReconstructOptions)
    """Reconstruction options (samples, seed, checkpoint...)."""
    every_days: int = DEFAULT_EVERY_DAYS
    """Spacing of the regular frames added to the acquisition days in ``frames.tif``."""
    curve_every_days: int = 1
    """Spacing of the days of ``ndvi.csv`` (1: daily, like ``python -m core ndvi``)."""
    include_s1: bool = True
    """Also fetch Sentinel-1 (the model uses it; the baselines ignore it)."""
    max_cloud_cover: float | None = None
    """Skip S2 scenes cloudier than this (percent), or None."""

    def __post_init__(self) -> None:
        if self.every_days < 1 or self.curve_every_days < 1:
            raise InputError(
                "--every-days and --curve-every-days must be 1 or more, not "
                f"{self.every_days} and {self.curve_every_days}."
            )
        if self.options.samples < 1:
            raise InputError(f"--samples must be 1 or more, not {self.options.samples}.")
        first, last = parse_period(self.start, self.end)  # InputError for unreadable dates
        object.__setattr__(self, "start", first.isoformat())
        object.__setattr__(self, "end", last.isoformat())

    def fingerprint(self, field: Field, settings: Settings) -> dict[str, Any]:
        """Everything that determines a field's outputs, as plain JSON (stored in the marker).

        The device is left out: a re-run on a GPU cluster does not redo CPU results.
        """
        options = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(self.options).items()
            if k not in ("device", "checkpoint_version")  # the file's digest is below
        }
        payload = {
            "version": FORMAT_VERSION,
            "field_key": field.key,
            "start": self.start,
            "end": self.end,
            "method": self.method,
            "options": options,
            "every_days": self.every_days,
            "curve_every_days": self.curve_every_days,
            "include_s1": self.include_s1,
            "max_cloud_cover": self.max_cloud_cover,
            "stac_api_url": settings.stac_api_url,
        }
        if self.method == "model":  # retrained in place, the same path is another model
            payload["checkpoint_sha256"] = checkpoint_sha256(
                self.options.checkpoint or DEFAULT_CHECKPOINT
            )
            if in_southern_seasons(field.centroid[1]):  # read half a year on since 2026-12-06
                payload["southern_seasons"] = True
        return json.loads(json.dumps(payload))


def checkpoint_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file's bytes ("" where there is none), read once per version of
    the file however many fields ask."""
    try:
        stat = Path(path).stat()
    except OSError:
        return ""
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # the cache's key: a changed file is read again
    return file_digest(Path(path))["sha256"]


@dataclass(frozen=True)
class BatchField:
    """One feature of the fields file, ready to submit (or already known to be unusable)."""

    index: int
    """Position in the file (0-based, across the layers read)."""
    field_id: str
    """Folder name of its outputs: unique in the batch, file-name safe."""
    name: str
    """The feature's name (or ``"feature <index>"``), for messages."""
    field: Field | None
    """The checked outline, or None when the feature is not a usable field."""
    error: str = ""
    """Why :attr:`field` is None."""


@dataclass(frozen=True)
class FieldRow:
    """One line of the summary: how a field went."""

    field_id: str
    name: str
    status: str
    """``ok``, ``failed`` or ``skipped`` (complete outputs of an earlier run)."""
    scenes_s2: int | None = None
    """S2 items the search found."""
    scenes_s1: int | None = None
    """S1 items the search found (None when not searched)."""
    s1_status: str = ""
    """``loaded``, ``skipped``, ``none``, ``denied`` or ``failed`` (see FetchResult)."""
    frames: int | None = None
    """Frames in ``frames.tif``."""
    clear_fraction_mean: float | None = None
    """Mean over the S2 frames of the field's clear fraction."""
    ndvi_peak_date: str = ""
    """Day of the curve's highest NDVI."""
    ndvi_peak: float | None = None
    """That NDVI."""
    seconds: float = 0.0
    """Work time of the field's tasks in this run (0 when skipped)."""
    error: str = ""
    """Why the field failed."""
    days_to_clear_max: int | None = None
    """The most days any day of the curve lies from the field's clear data (the curve's
    ``days_to_clear``, a field median): half the longest run without a clear view, about.
    None when most of the field is never seen clear."""
    model_vs_baseline: float | None = None
    """With the model: its mean error on the field's own clear pixels, hidden in turn, over
    the better of linear interpolation and the Whittaker smoother's (below 1: the model did
    better on this field; core.model.blend.field_scores). None for a baseline, or where the
    Run could not measure it."""
    model_ndvi_vs_baseline: float | None = None
    """With the model: the same for the mean NDVI of the field's hidden dates, the points of
    its curve (review 30: a model better in reflectance can be worse there). None for a
    baseline, a cube without red or NIR, or too few hidden dates (under 10)."""
    model_trained_here: int | None = None
    """With the model: 1 where it was trained on this field's place (the measure above then
    flatters it), 0 where not; None for a baseline."""
    outside_imagery: float | None = None
    """Share of the field that no Sentinel-2 acquisition images (a swath or tile edge, or the
    edge of the data): the field's figures are over the rest (0 where all is imaged; None
    for a field done by a version that did not record it)."""
    seen_fraction: float | None = None
    """Share of the field (its imaged part) seen clear in at least one acquisition. With
    linear or Whittaker the curve is the mean of those pixels alone: each pixel is filled from
    its own clear observations (the model fills the rest from their neighbours)."""
    method: str = ""
    """The reconstruction method, for :meth:`line`'s words on :attr:`seen_fraction`."""
    green_up_date: str = ""
    """The day the curve, rising to its peak, passes half-way from its low before the peak
    (:func:`core.phenology.season_marks`); empty where it rises less than 0.1 NDVI in the
    period."""
    decline_date: str = ""
    """The day the curve first falls through half-way from its peak to its low after it;
    empty where it falls less than 0.1 NDVI in the period."""

    def record(self) -> dict[str, str]:
        """The row as CSV cells (empty for missing values)."""

        def number(value: float | None, digits: int) -> str:
            if value is None or not math.isfinite(value):
                return ""
            return f"{value:.{digits}f}"

        return {
            "field_id": self.field_id,
            "name": self.name,
            "status": self.status,
            "scenes_s2": "" if self.scenes_s2 is None else str(self.scenes_s2),
            "scenes_s1": "" if self.scenes_s1 is None else str(self.scenes_s1),
            "s1_status": self.s1_status,
            "frames": "" if self.frames is None else str(self.frames),
            "clear_fraction_mean": number(self.clear_fraction_mean, 3),
            "outside_imagery": number(self.outside_imagery, 3),
            "seen_fraction": number(self.seen_fraction, 3),
            "days_to_clear_max": ""
            if self.days_to_clear_max is None
            else str(self.days_to_clear_max),
            "ndvi_peak_date": self.ndvi_peak_date,
            "ndvi_peak": number(self.ndvi_peak, 4),
            "green_up_date": self.green_up_date,
            "decline_date": self.decline_date,
            "model_vs_baseline": number(self.model_vs_baseline, 3),
            "model_ndvi_vs_baseline": number(self.model_ndvi_vs_baseline, 3),
            "model_trained_here": ""
            if self.model_trained_here is None
            else str(self.model_trained_here),
            "seconds": number(self.seconds, 1),
            "error": self.error,
        }

    def line(self) -> str:
        """One line for the terminal, e.g. ``"west: ok in 4.2 s (8 S2 scenes, ...)"``."""
        if self.status == FAILED:
            return f"{self.field_id}: failed after {self.seconds:.1f} s: {self.error}"
        details = [f"{self.scenes_s2} S2 / {self.scenes_s1 or 0} S1 scenes"]
        details.append(f"{self.frames} frames")
        if self.clear_fraction_mean is not None:
            details.append(f"{100 * self.clear_fraction_mean:.0f}% clear")
        if self.outside_imagery is not None and self.outside_imagery > OUTSIDE_NOTED:
            details.append(f"{100 * self.outside_imagery:.0f}% of it outside the imagery")
        partly = self.seen_fraction is not None and self.seen_fraction < PARTLY_SEEN_NOTED
        if partly and self.method in PIXELWISE_METHODS:
            details.append(f"curve from the {100 * self.seen_fraction:.0f}% of it ever seen clear")
        if self.days_to_clear_max is not None:
            details.append(f"at most {self.days_to_clear_max} d from clear data")
        if self.ndvi_peak is not None:
            details.append(f"NDVI peak {self.ndvi_peak:.2f} on {self.ndvi_peak_date}")
        if self.green_up_date:
            details.append(f"green-up {self.green_up_date}")
        if self.decline_date:
            details.append(f"decline {self.decline_date}")
        if self.model_vs_baseline is not None:
            trained = ", trained here" if self.model_trained_here else ""
            curve = (
                ""
                if self.model_ndvi_vs_baseline is None
                else f", {self.model_ndvi_vs_baseline:.2f} x on the NDVI curve"
            )
            details.append(
                f"model {self.model_vs_baseline:.2f} x the better baseline{curve}{trained}"
            )
        if self.status == SKIPPED:
            return f"{self.field_id}: skipped, complete from an earlier run ({', '.join(details)})"
        return f"{self.field_id}: ok in {self.seconds:.1f} s ({', '.join(details)})"


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch_task` hands to :func:`reconstruct_task`."""

    result: FetchResult | None
    """The fetch, or None when it failed."""
    error: str = ""
    """Why it failed."""
    seconds: float = 0.0
    """Time the fetch took."""


# --- fields ------------------------------------------------------------------------------------


def list_fields(
    path: str | Path,
    *,
    id_column: str | None = None,
    layer: str | None = None,
    max_area_ha: float = DEFAULT_MAX_AREA_HA,
    progress: Callable[[str, int, int], None] | None = None,
    reader: Callable[..., FieldFile] = read_field_file,
) -> list[BatchField]:
    """Every feature of a fields file, with its output folder name and checked outline.

    A feature that is not a usable field (a line, a self-crossing outline, too large...) is
    kept with its :class:`~core.errors.FieldError` message, to be reported as failed. The file
    is read once, and each feature checked from what was read (reading it again for each made
    2,000 fields take 100 s: review 12, D8).

    Args:
        path: any file :func:`core.field.field_from_file` reads (GeoPackage, GeoJSON, ...).
        id_column: the attribute that names the output folders (case-insensitive). By default
            the feature's name-like attribute (:data:`core.field.LABEL_KEYS`), else
            ``feature-<index>``.
        layer: read only this layer.
        max_area_ha: largest field accepted.
        progress: told ``(LISTING_STAGE, checked, total)`` as features are checked, from
            ``(LISTING_STAGE, 0, total)`` once the file is read; it may raise to stop the
            listing (a job is stopped at its progress reports, :mod:`core.jobs`).
        reader: reads the file's features (``reader(path, layer=layer)``):
            :func:`core.field.read_field_file`, or for an upload to a shared server
            :func:`core.field.read_field_file_apart`.

    Raises:
        InputError: the file is unreadable, holds no features, or has no column ``id_column``.
    """
    source = reader(path, layer=layer)
    candidates = source.candidates()
    if not candidates:
        raise InputError(f"The fields file {path} holds no features.")
    if id_column is None:
        labels: list[str | None] = [
            None if c.name == f"feature {c.index}" else c.name for c in candidates
        ]
    else:
        labels = column_values(path, id_column, layer=layer)
        if len(labels) != len(candidates):
            raise InputError(
                f"Read {len(labels)} values of column '{id_column}' but {len(candidates)} "
                f"features from {path}; convert the file to GeoPackage or GeoJSON."
            )
    ids = unique_ids(labels)

    def checked(done: int) -> None:
        if progress is not None:
            progress(LISTING_STAGE, done, len(candidates))

    checked(0)
    fields = []
    for candidate, field_id in zip(candidates, ids, strict=True):
        try:
            outline = source.field(index=candidate.index, max_area_ha=max_area_ha)
        except FieldError as exc:
            fields.append(BatchField(candidate.index, field_id, candidate.name, None, str(exc)))
        else:  # called as the summary calls it (an unnamed one took the file's name)
            outline = dataclasses.replace(outline, name=candidate.name)
            fields.append(BatchField(candidate.index, field_id, candidate.name, outline))
        checked(len(fields))
    return fields


def column_values(path: str | Path, column: str, *, layer: str | None = None) -> list[str | None]:
    """The values of attribute ``column`` (any case) of every feature, in file order; None
    where empty. A GeoJSON feature's own ``id`` counts as a column named ``id``.

    Raises:
        InputError: no feature has that column (the message lists the columns found).
    """
    records = _attribute_records(Path(path), layer)
    found: dict[str, str] = {}
    for record in records:
        for key in record:
            found.setdefault(str(key).casefold(), str(key))
    wanted = column.strip().casefold()
    if wanted not in found:
        names = ", ".join(sorted(set(found.values()))) or "none"
        raise InputError(f"The fields file {path} has no column '{column}'; its columns: {names}.")
    values: list[str | None] = []
    for record in records:
        # the column as written wins; else the first whose case differs (review 15: a GeoJSON
        # feature's own "id" member, added as "id", took the place of a column "ID")
        keys = [k for k in record if str(k) == column.strip()] or [
            k for k in record if str(k).casefold() == wanted
        ]
        value = record[keys[0]] if keys else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            values.append(None)
        elif isinstance(value, float) and value.is_integer():
            values.append(str(int(value)))  # an integer column with an empty value reads as float
        else:
            text = str(value).strip()
            values.append(text or None)
    return values


def unique_ids(labels: Sequence[str | None]) -> list[str]:
    """File-name-safe, unique (ignoring case) folder names for features named ``labels``.

    A missing or unusable label gives ``feature-<index>``; a repeated one gets ``-2``, ``-3``...
    in file order, so the same file always gives the same ids (which resuming relies on).
    """
    seen: set[str] = set()
    ids = []
    for index, label in enumerate(labels):
        base = safe_file_stem(label, default="") if label else ""
        base = base or f"feature-{index}"
        candidate, n = base, 2
        while candidate.casefold() in seen:
            candidate, n = f"{base}-{n}", n + 1
        seen.add(candidate.casefold())
        ids.append(candidate)
    return ids


def _attribute_records(path: Path, layer: str | None) -> list[Mapping[str, Any]]:
    """Feature attributes in the order :func:`core.field.candidates_from_file` lists them."""
    if path.suffix.lower() in _GEOJSON_SUFFIXES:
        try:
            doc = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise InputError(f"Cannot read {path} as GeoJSON: {exc}") from None
        kind = doc.get("type") if isinstance(doc, dict) else None
        features = doc.get("features", []) if kind == "FeatureCollection" else [doc]
        records = []
        for feature in features:
            properties = feature.get("properties") if isinstance(feature, dict) else None
            record = dict(properties) if isinstance(properties, dict) else {}
            has_id = any(str(k).casefold() == "id" for k in record)
            if isinstance(feature, dict) and feature.get("id") is not None and not has_id:
                record["id"] = feature["id"]
            records.append(record)
        return records
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    from core.field import outline_sources

    records = []
    try:
        with outline_sources(path) as sources:
            for source in sources:  # in the order the outline reader takes them
                layers = [str(n) for n, kind in pyogrio.list_layers(source) if kind is not None]
                chosen = layers if layer is None else [n for n in layers if n == layer]
                for name in chosen:
                    frame = pyogrio.read_dataframe(source, layer=name, read_geometry=False)
                    records += frame.to_dict("records")
    except (DataSourceError, DataLayerError, OSError) as exc:
        raise InputError(f"Cannot read the attributes of {path}: {exc}") from None
    return records


# --- the two tasks -----------------------------------------------------------------------------


def failure_message(exc: BaseException) -> str:
    """A FieldFlowError's own message; anything else as ``"TypeName: message"``, its first
    paragraph in one line (:func:`core.distributed.paragraph`)."""
    if isinstance(exc, FieldFlowError):
        return str(exc)
    from core.distributed import paragraph

    return paragraph(exc)


def on_worker(message: str, name_worker: bool) -> str:
    """``message``, and with ``name_worker`` the Dask worker it comes from: on a cluster of
    several machines a worker's own trouble (its network, its disk) reads as the user's
    otherwise (review 17)."""
    if not name_worker:
        return message
    from distributed import get_worker

    try:
        address = get_worker().address
    except ValueError:  # not on a worker
        return message
    return f"{message} (on the Dask worker {address})"


def fetch_task(
    item: BatchField, request: BatchRequest, settings: Settings, name_worker: bool = False
) -> Fetched:
    """Fetch one field's cube (through the disk cache); a failure is returned, not raised.
    With ``name_worker`` a failure names the worker it happened on."""
    started = time.perf_counter()
    if item.field is None:
        return Fetched(None, item.error)
    try:
        with stop_when_cancelled():  # a batch stopped meanwhile: nothing more is fetched
            result = fetch_cached(
                item.field,
                request.start,
                request.end,
                settings=settings,
                include_s1=request.include_s1,
                max_cloud_cover=request.max_cloud_cover,
            )
    except TaskCancelled:
        raise
    except Exception as exc:  # reported in the summary; the other fields carry on
        error = on_worker(failure_message(exc), name_worker)
        return Fetched(None, error, time.perf_counter() - started)
    return Fetched(result, "", time.perf_counter() - started)


def reconstruct_task(
    fetched: Fetched,
    item: BatchField,
    request: BatchRequest,
    folder: str,
    fingerprint: Mapping[str, Any],
    name_worker: bool = False,
) -> FieldRow:
    """Reconstruct one fetched field and write its outputs; a failure becomes a failed row
    (naming the worker with ``name_worker``).

    With the model, the memory it freed goes back to the system once the worker has run no
    model task for a while (:func:`core.distributed.model_task`), not between fields. It
    waits its turn among the Runs of the process it runs in (:mod:`core.admission`). A batch
    stopped meanwhile (its futures cancelled: Ctrl-C, or the app's Stop) stops it at the next
    step of the work, before anything is written (:func:`core.distributed.stop_when_cancelled`;
    before review 17 the workers of a cluster went on for minutes and then wrote the outputs
    into the folder the command had said it kept nothing partial in)."""
    started = time.perf_counter()
    result = fetched.result
    if result is None or item.field is None:
        kept = _cleared(Path(folder))
        return FieldRow(
            item.field_id,
            item.name,
            FAILED,
            seconds=fetched.seconds,
            error=_and_kept(fetched.error, kept),
        )
    fetch_stats = _fetch_stats(result)
    idle_trim = model_task() if request.method == "model" else contextlib.nullcontext()
    try:
        # Its turn among the Runs of this process (the app's, when the batch runs in it) by
        # this process's settings: together they must fit its memory (core.admission).
        limits = Settings.from_env(check_checkpoint=False).admission
        with (
            stop_when_cancelled(),
            PROCESS_GATE.admitted(run_bytes(result.cube.sizes), limits),
            idle_trim,
        ):
            row = write_field_outputs(
                item.field, result, request, Path(folder), fingerprint, item.field_id, item.name
            )
    except TaskCancelled:
        raise
    except Exception as exc:  # reported in the summary; the other fields carry on
        kept = _cleared(Path(folder))
        return FieldRow(
            item.field_id,
            item.name,
            FAILED,
            **fetch_stats,
            seconds=fetched.seconds + time.perf_counter() - started,
            error=_and_kept(on_worker(failure_message(exc), name_worker), kept),
        )
    return dataclasses.replace(row, seconds=fetched.seconds + time.perf_counter() - started)


def clear_outputs(folder: Path) -> str:
    """Clear a failed field's folder of outputs; return a sentence for its row's error when
    an earlier run's outputs are kept aside (else "").

    Outputs there were made for another request (its outputs for this one would have been
    skipped as complete): a field redrawn or moved, another period, or, for unnamed fields,
    another field at the same place in the file. Kept in place, its curve went into the
    joined table as the failed field's, and its folder held another outline's frames
    (review 15). Complete ones (with their marker) go to :data:`EARLIER_FOLDER`, where a later
    run of their own request finds them again (:func:`restore_earlier`); a failure, often a
    passing one (a server down, a full disk), no longer deletes a season's results. Partial
    ones, without a marker, are removed."""
    set_aside(folder)
    kept = folder / EARLIER_FOLDER / MARKER_FILE
    if not kept.is_file():
        return ""
    return (
        f" The outputs of an earlier run in its folder, for another request, are kept in "
        f"{folder / EARLIER_FOLDER} (its {MARKER_FILE} says which); a run of that request "
        "takes them back."
    )


def _cleared(folder: Path) -> str:
    """:func:`clear_outputs` for a failed row: a folder it cannot clear (read-only, gone) is
    left as it is, the row's own error said, not this one."""
    try:
        return clear_outputs(folder)
    except OSError:
        return ""


def _and_kept(error: str | None, kept: str) -> str:
    """A failed row's error, then :func:`clear_outputs`' sentence (if any)."""
    if not kept or not error:
        return (error or "") + kept.lstrip()
    return error + ("" if error.rstrip().endswith((".", "!", "?")) else ".") + kept


def set_aside(folder: Path) -> None:
    """Move complete outputs of another request (``done.json`` and its files) into
    :data:`EARLIER_FOLDER`, replacing what it held; remove partial ones (no marker).

    The marker moves first and comes back last (:func:`restore_earlier`): a marker never
    vouches for files that are not beside it (they are checked by size and hash too)."""
    marker = folder / MARKER_FILE
    if not marker.is_file():
        for name in (CURVE_FILE, FRAMES_FILE):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        return
    earlier = folder / EARLIER_FOLDER
    if earlier.exists():
        _remove_earlier(folder)
    earlier.mkdir()
    for name in (MARKER_FILE, CURVE_FILE, FRAMES_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.replace(folder / name, earlier / name)


def restore_earlier(folder: Path, fingerprint: Mapping[str, Any]) -> bool:
    """Put the outputs kept in :data:`EARLIER_FOLDER` back when they are complete for this
    request (a run after a failed one of another request asks for them again); return
    whether it did."""
    earlier = folder / EARLIER_FOLDER
    if completed_row(earlier, fingerprint) is None:
        return False
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER_FILE).unlink()  # a stale one, were there one, vouches for nothing
    for name in (CURVE_FILE, FRAMES_FILE, MARKER_FILE):
        os.replace(earlier / name, folder / name)
    _remove_earlier(folder)
    return True


def _remove_earlier(folder: Path) -> None:
    """Remove :data:`EARLIER_FOLDER`, its marker first."""
    earlier = folder / EARLIER_FOLDER
    with contextlib.suppress(FileNotFoundError):
        (earlier / MARKER_FILE).unlink()
    shutil.rmtree(earlier, ignore_errors=True)


def frame_dates(cube: xr.Dataset, start: str, end: str, every_days: int) -> np.ndarray:
    """Days of the frame stack: every acquisition day and every ``every_days`` days from
    ``start``, within the cube's S2 period; datetime64[ns] at midnight, sorted."""
    acquired = np.unique(calendar_day(cube["time_s2"].values))
    regular = calendar_day(regular_dates(start, end, every_days))
    first, last = np.datetime64(start, "D"), np.datetime64(end, "D")
    days = np.union1d(acquired[(acquired >= first) & (acquired <= last)], regular)
    days = days[(days >= acquired[0]) & (days <= acquired[-1])]
    return days.astype("datetime64[ns]")


def write_field_outputs(
    field: Field,
    fetched: FetchResult,
    request: BatchRequest,
    folder: Path,
    fingerprint: Mapping[str, Any],
    field_id: str,
    name: str,
) -> FieldRow:
    """Reconstruct, then write the frames, the curve and, last, the marker.

    A stale marker is removed first, so a run killed half-way never leaves a marker vouching
    for outputs of another request.

    Raises:
        FieldError: the outline covers no pixel centre of its grid.
        FieldFlowError: as :func:`core.reconstruct.reconstruct` and :func:`core.curve.ndvi_curve`.
    """
    make_folder(folder)
    try:
        set_aside(folder)
    except OSError as exc:  # a folder turned read-only: said in words, not as an errno
        raise OutputError(
            f"Could not write in the folder {folder} ({(exc.strerror or str(exc)).lower()}). "
            "Choose a folder you can write to, then run again."
        ) from exc
    cube = fetched.cube
    mask = field_mask(field, cube)
    if not mask.any():
        raise FieldError(
            f"The field '{name}' covers no pixel centre of its 10 m grid; outline a larger field."
        )
    mask, outside = imaged_part(mask, cube)  # its figures over the part the imagery covers
    require_imaged(outside, name)
    acquired = calendar_day(cube["time_s2"].values)
    require_acquisitions_around(  # a cube from the cache may hold none in the period either
        acquired,
        np.datetime64(request.start, "D"),
        np.datetime64(request.end, "D"),
        "of the field",
    )
    dates = frame_dates(cube, request.start, request.end, request.every_days)
    # The frames that fall on the curve's days are kept from the curve's own reconstruction
    # (the two then agree, and those days are reconstructed once); the others, if any (a
    # curve every few days), are reconstructed on their own.
    wanted = set(calendar_day(dates))
    # the curve and the frames from one model (a checkpoint replaced meanwhile stops the field)
    options = pinned(request.options, request.method)
    # Screened once, here: the curve, the frames and the row's clear fraction all see it (the
    # row's clear_fraction_mean was the unscreened cube's, 0.521 against its CSV's 0.504,
    # review 22); a screened cube is not screened again.
    cube = screened(cube, options)[0]
    kept: list[xr.Dataset] = []
    measured: dict[str, Any] = {}

    def keep(chunk_dates: np.ndarray, result: xr.Dataset) -> None:
        if not measured:  # the first chunk's: the field's fits are made once per Run
            measured.update(model_measures(result.attrs))
        hits = [qi for qi, day in enumerate(calendar_day(chunk_dates)) if day in wanted]
        if hits:
            kept.append(result.isel(time=hits))

    curve = ndvi_curve(
        cube,
        request.start,
        request.end,
        every_days=request.curve_every_days,
        method=request.method,
        options=options,
        field_mask=mask,
        on_chunk=keep,
    )
    covered = {day for part in kept for day in calendar_day(part["time"].values)}
    rest = dates[[day not in covered for day in calendar_day(dates)]]
    if rest.size:
        kept.append(reconstruct(cube, rest, method=request.method, options=options))
    frames = xr.concat(kept, dim="time", combine_attrs="override").sortby("time")
    kept.clear()
    check()  # a batch stopped meanwhile writes nothing (core.distributed.stop_when_cancelled)
    write_frame_stack(
        frames,
        folder / FRAMES_FILE,
        grid=fetched.grid,
        tags={"FIELD_ID": field_id, "FIELD": name},
        field_mask=mask,
        acquired_days=acquired,
    )
    del frames
    write_curve_csv(curve, folder / CURVE_FILE)
    season = season_marks(curve)
    row = FieldRow(
        field_id,
        name,
        OK,
        **_fetch_stats(fetched),
        frames=int(dates.size),
        clear_fraction_mean=_period_mean(clear_fraction(cube, mask), cube, request),
        outside_imagery=round(outside, 4),
        seen_fraction=round(float(curve.attrs["field_seen_share"]), 4),
        method=request.method,
        days_to_clear_max=_most_days(curve["days_to_clear"]),
        **_season_cells(season),
        **measured,
    )
    write_marker(folder, fingerprint, row)
    _remove_earlier(folder)  # the field's outputs are this request's now
    return row


def model_measures(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A model reconstruction's word on the field (its attributes): the ratio of its error on
    the field's own hidden clear pixels to the better baseline's, in reflectance and in the
    NDVI of the hidden dates' means (where it had red and NIR), and whether it was trained
    there; nothing for a baseline's."""
    measures: dict[str, Any] = {}
    if "model_trained_on_site" in attrs:
        measures["model_trained_here"] = int(attrs["model_trained_on_site"])
    compared = field_ratio(attrs)
    if compared is not None and math.isfinite(compared[1]):
        measures["model_vs_baseline"] = round(compared[1], 4)
    curve = attrs.get("model_field_mean_ndvi_mae")
    if curve is not None:
        model, whittaker, linear = (float(v) for v in np.asarray(curve, np.float64))
        ratio = better_baseline_of(model, whittaker, linear)[1]
        if math.isfinite(ratio):
            measures["model_ndvi_vs_baseline"] = round(ratio, 4)
    return measures


def _fetch_stats(result: FetchResult) -> dict[str, Any]:
    return {
        "scenes_s2": result.scenes_found.get("sentinel-2-l2a"),
        "scenes_s1": result.scenes_found.get("sentinel-1-rtc"),
        "s1_status": result.s1_status,
    }


def _period_mean(fractions: np.ndarray, cube: xr.Dataset, request: BatchRequest) -> float | None:
    """Mean of per-acquisition ``fractions`` over the acquisitions within the period (the
    cube also holds the fetch's margin either side, core.fetch.PERIOD_MARGIN_DAYS); None
    when the period holds none (a few days between two passes: it was the margin's mean,
    review 22)."""
    days = calendar_day(cube["time_s2"].values)
    inside = (days >= np.datetime64(request.start, "D")) & (days <= np.datetime64(request.end, "D"))
    return float(np.mean(fractions[inside])) if inside.any() else None


def _most_days(days: Any) -> int | None:
    """The largest of a curve's ``days_to_clear`` column (None when every day is NA)."""
    known = days.dropna()
    return int(known.max()) if len(known) else None


def _season_cells(season: SeasonMarks | None) -> dict[str, Any]:
    """A field row's peak, green-up and decline (nothing where the curve has no value)."""
    if season is None:
        return {}
    return {
        "ndvi_peak_date": season.peak_day.isoformat(),
        "ndvi_peak": season.peak,
        "green_up_date": "" if season.green_up is None else season.green_up.day.isoformat(),
        "decline_date": "" if season.decline is None else season.decline.day.isoformat(),
    }


# --- resuming ----------------------------------------------------------------------------------


def file_digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_marker(folder: Path, fingerprint: Mapping[str, Any], row: FieldRow) -> Path:
    """Write ``done.json`` atomically: the request, each output's size and hash, the row."""
    payload = {
        "request": dict(fingerprint),
        "outputs": {name: file_digest(folder / name) for name in OUTPUT_FILES},
        "row": asdict(row),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    target = folder / MARKER_FILE
    with atomic_output(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return target


def completed_row(folder: Path, fingerprint: Mapping[str, Any]) -> FieldRow | None:
    """The ``skipped`` row of a field whose outputs are complete for this request, else None.

    Complete means: ``done.json`` reads, names the same request, and every output it lists
    exists with the size and SHA-256 it recorded.
    """
    try:
        payload = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
        if payload["request"] != dict(fingerprint):
            return None
        outputs = payload["outputs"]
        if set(outputs) != set(OUTPUT_FILES):
            return None
        for name, recorded in outputs.items():
            path = folder / name
            if path.stat().st_size != recorded["bytes"] or file_digest(path) != recorded:
                return None
        row = FieldRow(**payload["row"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dataclasses.replace(row, status=SKIPPED, seconds=0.0, error="")


# --- the run -----------------------------------------------------------------------------------

RowCallback = Callable[[FieldRow, int, int], None]
"""``(row, done, total)``, called as each field finishes (or is skipped or refused)."""


NoteCallback = Callable[[str], None]
"""A sentence about the batch as a whole while it runs (the cluster has no workers...)."""
WATCH_EVERY_S = 5.0
"""How often :func:`run_batch` looks at the cluster while no field finishes."""
SAY_AGAIN_S = 60.0
"""How often a waiting batch says again that it waits."""
POLL_S = 0.2
"""How often :func:`run_batch` looks for finished fields."""
GPU_GONE_S = 30.0
"""How long the fields sent to GPU workers wait for one to come back (a killed worker's nanny
restarts it within seconds) before they go to the other workers."""


def run_batch(
    fields: Sequence[BatchField],
    request: BatchRequest,
    out_dir: str | Path,
    *,
    cluster: Cluster,
    settings: Settings,
    on_row: RowCallback | None = None,
    on_note: NoteCallback | None = None,
) -> list[FieldRow]:
    """Process every field on ``cluster``; return the rows in the order of ``fields``.

    Fields with complete outputs are skipped before anything is submitted; unusable outlines
    are failed rows at once; the rest become a fetch task and a reconstruct task each, the
    latter with higher priority (a fetched cube is consumed before more are fetched) and the
    GPU resource when :meth:`Cluster.resources_for` says so.

    The paths sent to the workers are absolute (a relative ``--out`` or cache folder was taken
    in each worker's own working folder, where the outputs went while the batch said "ok",
    review 17), and a field is "ok" only once its outputs are seen here (a worker that does not
    share the folder wrote them elsewhere). While no field finishes the cluster is watched:
    with no workers running, or none offering the GPU the fields were sent to, ``on_note``
    hears it (every :data:`SAY_AGAIN_S`); after :data:`GPU_GONE_S` without a GPU worker the
    remaining fields go to the others.

    Raises:
        ClusterError: the scheduler was lost (the fields done are kept; a re-run skips them).
    """
    from distributed import as_completed

    out = make_folder(Path(out_dir).expanduser().absolute())
    remove_stale_temporaries(out)  # hidden leftovers of writers killed over an hour ago
    settings = dataclasses.replace(
        settings, cache_dir=Path(settings.cache_dir).expanduser().absolute()
    )
    request = _absolute_checkpoint(request)
    rows: dict[int, FieldRow] = {}

    def report(item: BatchField, row: FieldRow) -> None:
        rows[item.index] = row
        if on_row is not None:
            on_row(row, len(rows), len(fields))

    client = cluster.client
    remote = cluster.local is None  # name the worker in a failure: it may be another machine
    resources = cluster.resources_for(request.method)
    run = uuid.uuid4().hex[:8]
    pending: dict[Any, BatchField] = {}
    fetches: dict[Any, Any] = {}  # reconstruction -> its fetch, held to resubmit it elsewhere
    prints: dict[int, Mapping[str, Any]] = {}

    def submit(fetched: Any, item: BatchField, wanted: Mapping[str, float] | None) -> Any:
        final = client.submit(
            reconstruct_task,
            fetched,
            item,
            request,
            str(out / item.field_id),
            prints[item.index],
            remote,
            key=f"fieldflow-reconstruct-{item.field_id}-{run}-{uuid.uuid4().hex[:4]}",
            resources=wanted,
            priority=1,
        )
        pending[final] = item
        fetches[final] = fetched
        return final

    for item in fields:
        folder = out / item.field_id
        if item.field is None:
            kept = _cleared(folder)
            report(
                item, FieldRow(item.field_id, item.name, FAILED, error=_and_kept(item.error, kept))
            )
            continue
        fingerprint = request.fingerprint(item.field, settings)
        if folder.is_dir():
            remove_stale_temporaries(folder)
            if completed_row(folder, fingerprint) is None:
                restore_earlier(folder, fingerprint)
        finished = completed_row(folder, fingerprint)
        if finished is not None:  # named as the file names it now (review 15: a renamed
            report(item, dataclasses.replace(finished, name=item.name))  # field kept its old)
            continue
        if not pending:  # the folder's tables no longer describe it until they are rewritten
            _remove_tables(out)
        prints[item.index] = fingerprint
        fetched = client.submit(
            fetch_task,
            item,
            request,
            settings,
            remote,
            key=f"fieldflow-fetch-{item.field_id}-{run}",
        )
        submit(fetched, item, resources)
    watch = _Watch(cluster, on_note)
    finishing = as_completed(list(pending), loop=client.loop)
    looked = -math.inf  # a first look at once: a cluster without workers is said before waiting
    while pending:
        done = [f for f in finishing.next_batch(block=False) if f in pending]
        if not done:
            time.sleep(POLL_S)
        for future in done:
            item = pending.pop(future)
            fetch = fetches.pop(future)
            try:
                row = future.result()
            except Exception as exc:  # a lost worker, an unpicklable result...
                if _scheduler_lost(client, exc):
                    raise _lost(cluster, rows, fields) from None
                row = FieldRow(item.field_id, item.name, FAILED, error=failure_message(exc))
            future.release()
            fetch.release()  # the scheduler frees the cube once nothing holds it
            if row.status != FAILED and not (out / item.field_id / MARKER_FILE).is_file():
                row = dataclasses.replace(row, status=FAILED, error=_not_seen(out))
            report(item, row)
        if done:
            looked = time.monotonic()
        elif pending and time.monotonic() - looked >= WATCH_EVERY_S:
            looked = time.monotonic()
            if watch.lost():
                raise _lost(cluster, rows, fields)
            if resources and watch.gpu_gone_for() >= GPU_GONE_S:
                moved = [f for f in list(pending) if f.status == "pending"]
                for future in moved:
                    item, fetch = pending.pop(future), fetches.pop(future)
                    future.cancel()
                    future.release()
                    finishing.add(submit(fetch, item, None))
                resources = None
                watch.say(
                    "moved",
                    f"no worker has offered a GPU for {GPU_GONE_S:g} s: the {len(moved)} "
                    "remaining field(s) go to the other workers.",
                )
    return [rows[item.index] for item in fields]


def _absolute_checkpoint(request: BatchRequest) -> BatchRequest:
    """``request`` with its checkpoint path absolute (the workers read it from the path)."""
    checkpoint = request.options.checkpoint
    if checkpoint is None or Path(checkpoint).is_absolute():
        return request
    absolute = Path(checkpoint).expanduser().absolute()
    return dataclasses.replace(
        request, options=dataclasses.replace(request.options, checkpoint=absolute)
    )


def _not_seen(out: Path) -> str:
    return (
        f"The worker reported the field done, but its outputs are not in {out} as seen from "
        "this machine: the worker wrote them to its own disk. --out must be a folder every "
        "worker of the cluster sees at the same path (shared storage)."
    )


CONNECTED = ("running", "newly-created")
"""A ``distributed.Client``'s states while it has (or is about to have) its scheduler."""


def _scheduler_lost(client: Any, exc: BaseException) -> bool:
    """Did ``exc`` come of this client losing its scheduler?"""
    return "scheduler-connection-lost" in str(exc) or client.status not in CONNECTED


def _lost(
    cluster: Cluster, rows: Mapping[int, FieldRow], fields: Sequence[BatchField]
) -> ClusterError:
    """The error of a batch whose scheduler is gone (review 17: every field unfinished was
    "failed", with a Dask traceback, and the status of a field's failure)."""
    done = sum(row.status != FAILED for row in rows.values())
    return ClusterError(
        f"Lost the Dask scheduler at {cluster.address}: {done} of {len(fields)} field(s) were "
        "done and are kept. Once the scheduler and its workers are back, run the same command "
        "again: the fields done are skipped."
    )


class _Watch:
    """What :func:`run_batch` watches while no field finishes: the scheduler, its workers."""

    def __init__(self, cluster: Cluster, on_note: NoteCallback | None) -> None:
        self.cluster = cluster
        self.on_note = on_note
        self.said: dict[str, float] = {}
        self.gpu_gone_since: float | None = None

    def say(self, kind: str, text: str) -> None:
        """``on_note(text)``, at most every :data:`SAY_AGAIN_S` for the same ``kind``."""
        now = time.monotonic()
        if now - self.said.get(kind, -math.inf) >= SAY_AGAIN_S:
            self.said[kind] = now
            if self.on_note is not None:
                self.on_note(text)

    def lost(self) -> bool:
        """True when the scheduler no longer answers; says when the cluster has no workers."""
        from core.distributed import gpu_capacity, scheduler_details, usable_workers

        client = self.cluster.client
        if client.status not in CONNECTED:
            return True
        try:
            details = scheduler_details(client)
        except Exception:  # the comm is gone
            return True
        address = self.cluster.address
        if not usable_workers(details):
            self.say(
                "no workers",
                f"waiting: the Dask scheduler at {address} has no workers running; start one "
                f"with 'dask worker {address}' (the batch goes on once one joins).",
            )
        if gpu_capacity(details) >= 1.0:
            self.gpu_gone_since = None
        elif self.gpu_gone_since is None:
            self.gpu_gone_since = time.monotonic()
        return False

    def gpu_gone_for(self) -> float:
        """Seconds since the last look that saw a worker offering a GPU (0: one does now)."""
        if self.gpu_gone_since is None:
            return 0.0
        gone = time.monotonic() - self.gpu_gone_since
        self.say(
            "no gpu",
            f"waiting: no worker of the cluster offers a GPU now (for {gone:.0f} s); the "
            f"fields sent to GPU workers go to the others if none is back within {GPU_GONE_S:g} s.",
        )
        return gone


def _remove_tables(out: Path) -> None:
    """Remove the batch folder's tables (:data:`SUMMARY_FILE`, :data:`ALL_CURVES_FILE`)
    before any field of it is made again: a run stopped half-way, with another period or
    method, left them saying "ok" of fields whose files it had replaced, or with the old
    request's curves (review 13). They are written anew when the run ends."""
    for name in (SUMMARY_FILE, ALL_CURVES_FILE):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def summary_csv(rows: Sequence[FieldRow]) -> str:
    """The summary table as CSV text (:data:`SUMMARY_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.record() for row in rows)
    return buffer.getvalue()


def write_summary(rows: Sequence[FieldRow], path: str | Path) -> Path:
    """Write :func:`summary_csv` atomically; return the path."""
    target = Path(path)
    with atomic_output(target) as tmp:
        tmp.write_text(summary_csv(rows), encoding="utf-8")
    return target


# --- a batch of an uploaded file (the app's "Process all fields") ---------------------------------

UPLOAD_STAGE = "processing the fields"
"""The stage a batch of an upload reports, with the fields done so far of all."""
WAITING_STAGE = "waiting for another batch on this server to end"
"""The stage a batch of an upload reports while another one runs in the process."""
_IN_PROCESS_BATCH = threading.Lock()
"""One batch of an upload at a time in a process (the app's). Each runs a Dask client in the
process, and a client sets Dask's configuration, which is global, around its calls
(``Client.as_current``: ``scheduler="dask.distributed"``): two batches at once, two users'
"Process all", interleaved those settings and could leave the scheduler set with no client
behind it, so that every later Dask computation in the process failed ("Requested
dask.distributed scheduler but no Client active") until a restart. Seen in this project's
tests, where two sessions' batches ran at once. Only a batch waits: a Run of one field uses
no client in the app's process."""
ALL_CURVES_FILE = "all_fields_ndvi.csv"
"""Every field's curve in one table, in the ZIP of a batch of an upload."""
REQUEST_FILE = "batch.json"
"""What the batch was asked for (period, method, options), in its ZIP."""
NOT_DONE = "not done"
"""The status of a field a stopped batch had not finished."""
ARCHIVE_FRAMES_MAX_BYTES = 200 * 1024**2
"""The fields' ``frames.tif`` go into the download's ZIP while they weigh this much in all;
past it the ZIP holds the curves and the summary only (the command line writes everything)."""


@dataclass(frozen=True)
class UploadBatch:
    """A batch of an uploaded fields file, finished or stopped: its rows and the download of
    its outputs."""

    name: str
    """The uploaded file's name."""
    request: BatchRequest
    """What it was asked for."""
    rows: tuple[FieldRow, ...]
    """One per field batched, in the file's order."""
    seconds: float
    """Wall time of the batch (0 for one read back after a stop)."""
    archive: bytes
    """A ZIP: ``summary.csv``, :data:`REQUEST_FILE`, :data:`ALL_CURVES_FILE` and, per field
    done, ``<field_id>/ndvi.csv`` (and its ``frames.tif`` while all of them fit
    :data:`ARCHIVE_FRAMES_MAX_BYTES`)."""
    frames_included: bool
    """Whether the ZIP holds the frames of the fields done."""
    indices: tuple[int, ...] = ()
    """Each row's feature position in the file (:attr:`BatchField.index`, as
    :attr:`core.field.Candidate.index`), for a page to open one of them."""
    left_out: tuple[str, ...] = ()
    """Features of the file that were not batched (not among those asked for: a line or a
    point among the polygons), by name."""
    stopped: bool = False
    """Stopped before every field was done (the rest are :data:`NOT_DONE`)."""

    def count(self, status: str) -> int:
        """Rows of ``status`` (:data:`OK`, :data:`SKIPPED`, :data:`FAILED`, :data:`NOT_DONE`)."""
        return sum(row.status == status for row in self.rows)

    @property
    def done(self) -> int:
        """Fields whose outputs are in the ZIP (done now or earlier)."""
        return self.count(OK) + self.count(SKIPPED)


def upload_folder(cache_dir: Path, data: bytes, request: BatchRequest) -> Path:
    """Where the batch of an upload under ``request`` keeps its files: one folder per file
    content and request, so that the same file asked again resumes (finished fields are
    skipped) and two sessions' batches with other settings never share outputs."""
    digest = hashlib.sha256(data)
    digest.update(repr(same_outputs(request)).encode("utf-8"))
    return Path(cache_dir) / BATCHES_FOLDER / digest.hexdigest()[:20]


def same_outputs(request: BatchRequest) -> BatchRequest:
    """``request`` as the outputs it makes: the device left out, as the fingerprint leaves it
    (a GPU's results are the CPU's; review 23: the same file with Device cpu, then auto, was
    made again in another folder, and its earlier outputs were called stale)."""
    return dataclasses.replace(request, options=dataclasses.replace(request.options, device="auto"))


def outputs_archive(
    rows: Sequence[FieldRow], out_dir: Path, request: BatchRequest
) -> tuple[bytes, bool]:
    """The ZIP of :class:`UploadBatch` (and whether it holds the frames)."""
    import zipfile

    done = [row for row in rows if row.status in (OK, SKIPPED)]
    frames = [out_dir / row.field_id / FRAMES_FILE for row in done]
    with_frames = sum(p.stat().st_size for p in frames if p.is_file()) <= ARCHIVE_FRAMES_MAX_BYTES
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(SUMMARY_FILE, summary_csv(rows))
        archive.writestr(REQUEST_FILE, json.dumps(_request_record(request), indent=1))
        archive.writestr(ALL_CURVES_FILE, joined_curves(done, out_dir))
        for row in done:
            names = (CURVE_FILE, FRAMES_FILE) if with_frames else (CURVE_FILE,)
            for name in names:
                path = out_dir / row.field_id / name
                if path.is_file():
                    archive.write(path, f"{row.field_id}/{name}")
    return buffer.getvalue(), with_frames and bool(done)


def _request_record(request: BatchRequest) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(request), default=str))  # paths as text


def joined_curves(rows: Sequence[FieldRow], out_dir: Path) -> str:
    """Every field's ``ndvi.csv`` in one table, a row per field and day: ``field_id`` and
    ``name`` before the curve's columns (the long format a spreadsheet or pandas groups by)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["field_id", "name", *CURVE_COLUMNS])
    for row in rows:
        path = out_dir / row.field_id / CURVE_FILE
        if row.status not in (OK, SKIPPED) or not path.is_file():
            continue  # a failed field's folder may hold another request's curve (review 15)
        with path.open(newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):  # .get: a curve written before a column
                values = (record.get(c, "") for c in CURVE_COLUMNS)
                writer.writerow([row.field_id, row.name, *values])
    return buffer.getvalue()


def write_joined_curves(rows: Sequence[FieldRow], out_dir: str | Path) -> Path:
    """Write :func:`joined_curves` atomically as ``out_dir``/:data:`ALL_CURVES_FILE`."""
    target = Path(out_dir) / ALL_CURVES_FILE
    with atomic_output(target) as tmp:
        tmp.write_text(joined_curves(rows, Path(out_dir)), encoding="utf-8")
    return target


@dataclass(frozen=True)
class _UploadFields:
    fields: list[BatchField]
    left_out: tuple[str, ...]
    out_dir: Path


def _upload_fields(
    data: bytes,
    name: str,
    request: BatchRequest,
    settings: Settings,
    only: Collection[int] | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> _UploadFields:
    """The upload's fields (those at ``only``'s feature positions, when given), read from its
    copy in :func:`upload_folder`, with messages naming the user's file, not the copy;
    ``progress`` is told the listing's (:func:`list_fields`)."""
    suffix = Path(name).suffix.lower()
    folder = upload_folder(settings.cache_dir, data, request)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # its last use: pruning (core.cache) spares it an hour
        os.utime(folder)
    source = folder / f"fields{suffix}"
    if not source.is_file():
        with atomic_output(source) as tmp:
            tmp.write_bytes(data)

    def named(text: str) -> str:
        return text.replace(str(source), name).replace(source.name, name)

    try:
        listed = list_fields(
            source,
            max_area_ha=settings.max_area_ha,
            progress=progress,
            reader=read_field_file_apart,  # a user's file, read apart from the app's process
        )
    except InputError as exc:
        raise InputError(named(str(exc))) from None
    listed = [dataclasses.replace(f, error=named(f.error)) for f in listed]
    if only is None:
        return _UploadFields(listed, (), folder / "results")
    wanted = set(only)
    return _UploadFields(
        [f for f in listed if f.index in wanted],
        tuple(f.name for f in listed if f.index not in wanted),
        folder / "results",
    )


def _unheard(_what: str, _done: int, _total: int) -> None:
    """The beats of the fields' own work (tuning, chunks), not passed on: fields run two at a
    time, so their inner steps would make one bar jump between fields, and a stop raised in
    them would be logged by every worker as a failed task."""


def run_upload_batch(
    data: bytes,
    name: str,
    request: BatchRequest,
    *,
    settings: Settings,
    progress: Callable[[str, int, int], None],
    only: Collection[int] | None = None,
    threads: int = 2,
) -> UploadBatch:
    """Every field of an uploaded fields file (those at ``only``'s feature positions, when
    given) through :func:`run_batch`, on a local cluster of ``threads`` threads in this
    process (the app's "Process all fields"); ``progress`` is told ``(LISTING_STAGE, checked,
    total)`` while the file's features are checked (:func:`list_fields`), then
    ``(UPLOAD_STAGE, done, total)`` as fields end, and may raise to stop the batch (the fields
    done so far stay done: the same file asked again skips them, and
    :func:`upload_batch_so_far` reads them back).

    Raises:
        InputError: the file is of no supported type, unreadable, or holds no features.
    """
    from core.distributed import local_cluster

    started = time.monotonic()
    upload = _upload_fields(data, name, request, settings, only, progress)
    progress(UPLOAD_STAGE, 0, len(upload.fields))

    def on_row(_row: FieldRow, done: int, total: int) -> None:
        progress(UPLOAD_STAGE, done, total)

    threads = max(1, threads)
    while not _IN_PROCESS_BATCH.acquire(timeout=1.0):
        progress(WAITING_STAGE, 0, 1)  # may raise: a Stop while waiting
    try:
        with (
            listening(_unheard),
            local_cluster(1, processes=False, threads_per_worker=threads) as on,
        ):
            rows = run_batch(
                upload.fields, request, upload.out_dir, cluster=on, settings=settings,
                on_row=on_row,
            )  # fmt: skip
    finally:
        _IN_PROCESS_BATCH.release()
    return _outcome(name, request, upload, rows, time.monotonic() - started)


def upload_batch_so_far(
    data: bytes,
    name: str,
    request: BatchRequest,
    *,
    settings: Settings,
    only: Collection[int] | None = None,
) -> UploadBatch:
    """What a stopped :func:`run_upload_batch` of the same upload and request has finished:
    the fields with complete outputs (as done earlier) and the rest :data:`NOT_DONE`."""
    upload = _upload_fields(data, name, request, settings, only)
    rows = []
    for item in upload.fields:
        row = None
        if item.field is not None:
            fingerprint = request.fingerprint(item.field, settings)
            row = completed_row(upload.out_dir / item.field_id, fingerprint)
        if row is not None:
            row = dataclasses.replace(row, name=item.name)
        rows.append(row or FieldRow(item.field_id, item.name, NOT_DONE))
    return _outcome(name, request, upload, rows, 0.0, stopped=True)


def _outcome(
    name: str,
    request: BatchRequest,
    upload: _UploadFields,
    rows: Sequence[FieldRow],
    seconds: float,
    *,
    stopped: bool = False,
) -> UploadBatch:
    upload.out_dir.mkdir(parents=True, exist_ok=True)
    write_summary(rows, upload.out_dir / SUMMARY_FILE)
    write_joined_curves(rows, upload.out_dir)
    archive, with_frames = outputs_archive(rows, upload.out_dir, request)
    return UploadBatch(
        name=name,
        request=request,
        rows=tuple(rows),
        seconds=seconds,
        archive=archive,
        frames_included=with_frames,
        indices=tuple(item.index for item in upload.fields),
        left_out=upload.left_out,
        stopped=stopped,
    )
