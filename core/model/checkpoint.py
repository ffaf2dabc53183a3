"""Checkpoints: weights + the configs + calibration + a training record, in one file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from core.config import DEFAULT_CHECKPOINT
from core.errors import InputError, OutputError
from core.grid import cube_outline, distance_km, share_inside
from core.model.blend import FieldBlend, FieldScores
from core.model.config import ModelConfig, TrainConfig
from core.model.network import FieldFlowNet
from core.storage import TEMP_PREFIX, atomic_output

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded (or about to be saved) model."""

    model: FieldFlowNet
    """The network, in eval mode after loading."""
    train_config: TrainConfig = field(default_factory=TrainConfig)
    """How it was trained."""
    spread_scale: float = 1.0
    """Factor on the sampled residuals, fitted on held-out cubes so that the p10-p90 band covers
    about 80 % of hidden clear pixels (1.0 = uncalibrated)."""
    record: dict[str, object] = field(default_factory=dict)
    """Training record: data, sites seen, steps, time, device, validation figures."""
    blend: FieldBlend | None = None
    """A field's blend with the Whittaker smoother (core.model.blend), set per request by
    per-field fitting; never saved."""
    spread_by_distance: np.ndarray | None = None
    """A field's spread factors per bucket of days to the nearest clear observation
    (core.model.blend.DISTANCE_EDGES_DAYS), set per request by per-field calibration in place
    of ``spread_scale``; never saved."""
    error_band: np.ndarray | None = None
    """A field's reflectance band half widths (bands x buckets of days to the nearest clear
    observation; reflectance) from the estimate's errors on its own hidden clear pixels (see
    core.model.calibration.fit_error_band), set per request by per-field calibration; never
    saved."""
    ndvi_band_factors: np.ndarray | None = None
    """A field's factors on its per-pixel NDVI band per bucket of days to the nearest clear
    observation (core.model.calibration.fit_pixel_ndvi_factors), set per request by per-field
    calibration; never saved."""
    ndvi_error_band: np.ndarray | None = None
    """A field's per-pixel NDVI band half widths per bucket of days to the nearest clear
    observation, from the estimate's NDVI errors on its own hidden clear pixels, set with
    ``error_band``; None where the field has no NDVI; never saved."""
    field_ndvi_scale: float | None = None
    """A field's factor on its NDVI curve's band (see core.model.calibration.fit_field_ndvi_scale),
    set per request by per-field calibration; never saved."""
    field_ndvi_scale_by_distance: np.ndarray | None = None
    """That factor per bucket of a frame's days to clear data (core.model.blend.
    DISTANCE_EDGES_DAYS; core.model.calibration.fit_field_ndvi_scale_by_distance), set with it
    where asked; never saved."""
    field_ndvi_scale_days: np.ndarray | None = None
    """Where each of those factors stands on the days axis (the median days of its bucket's
    frames), set with them; never saved."""
    field_ndvi_scale_frames: np.ndarray | None = None
    """The hidden frames each of those factors' buckets held (under 10: the field's factor),
    set with them; never saved."""

    source: str = ""
    """Where it was loaded from ("" for one made in this process)."""
    weights_sha256: str = ""
    """SHA-256 of its weights (:func:`weights_digest`), as loaded; "" for one made in this
    process. Recorded in every reconstruction, so a file says which model made it."""
    field_scores: FieldScores | None = None
    """How the model, the network alone and both baselines did on the field's own hidden clear
    pixels (core.model.blend.field_scores), set with a per-field blend; never saved."""
    band_fitted: bool = False
    """The band was fitted on a field's own hidden clear pixels (per-field calibration found
    enough acquisitions), whatever width it found; never saved."""
    field_too_small: bool = False
    """The per-field fits were asked for and the field had clear acquisitions enough, but too
    few clear pixels to hide some and score them (a field of a few pixels): nothing was
    measured or fitted on it; never saved."""

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def seen_sites(self) -> list[str]:
        """Sites (cube ``site`` attributes) the model was trained or tuned on: an honest
        evaluation never scores it on these."""
        return sorted(
            set(self.record.get("seen_sites", [])) | set(self.record.get("tuned_sites", []))
        )

    @property
    def seen_footprints(self) -> list[dict[str, object]]:
        """Where the cubes it was trained or tuned on lie: ``{"site", "bounds"}`` entries
        (west, south, east, north in degrees); empty for a checkpoint recorded without them."""
        entries = self.record.get("seen_footprints", [])
        return [dict(e) for e in entries if isinstance(e, dict) and len(e.get("bounds", [])) == 4]


def with_config(checkpoint: Checkpoint, config: ModelConfig) -> Checkpoint:
    """The same weights under another :class:`ModelConfig` whose changes leave every weight's
    shape as it is (``day_of_year``: the calendar withheld), with the same training record."""
    model = FieldFlowNet(config)
    model.load_state_dict(checkpoint.model.state_dict())
    model.eval()
    return Checkpoint(
        model=model,
        train_config=checkpoint.train_config,
        spread_scale=checkpoint.spread_scale,
        record=dict(checkpoint.record),
    )


TRAINED_SHARE = 0.01
"""A field with at least this share of its area inside the cubes a checkpoint was trained or
tuned on counts as one it was trained on (below it: a sliver along a shared edge)."""


@dataclass(frozen=True)
class TrainingOverlap:
    """How a cube's field stands to the cubes a checkpoint was trained or tuned on."""

    share: float
    """Share of the field's area inside them (1.0 for a cube of a training site by name)."""
    site: str | None
    """The training site holding most of it; None where none does."""
    nearest_km: float | None
    """Roughly how far the nearest training cube lies (0 where one overlaps); None where the
    checkpoint or the cube does not record where it lies."""
    nearest_site: str | None

    @property
    def trained_on(self) -> bool:
        return self.share >= TRAINED_SHARE


def training_overlap(checkpoint: Checkpoint, cube: xr.Dataset) -> TrainingOverlap:
    """Whether ``cube`` shows a place ``checkpoint`` was trained on: a field (fetched, or a
    shared cube such as the offline demo's) whose outline lies inside a training cube's
    footprint (the record's ``seen_footprints``), or, where the place cannot be told, a cube of
    a training site by its ``site`` attribute. A model's scores on such a field flatter it."""
    site = str(cube.attrs.get("site", ""))
    named = site in checkpoint.seen_sites
    footprints = [(str(e["site"]), tuple(e["bounds"])) for e in checkpoint.seen_footprints]
    outline = cube_outline(cube) if footprints else None
    if outline is None:
        return TrainingOverlap(1.0 if named else 0.0, site if named else None, None, None)
    share, holder = share_inside(outline, footprints)
    distances = [(distance_km(outline, bounds), name) for name, bounds in footprints]
    nearest_km, nearest_site = min(distances)
    if named and site not in {name for name, _ in footprints}:
        # A record without that site's footprint: by its name. With it, where the cube lies
        # decides: fields fetched under a common name ("field") are not one place.
        share, holder = 1.0, site
    return TrainingOverlap(share, holder, nearest_km, nearest_site)


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write the checkpoint atomically, and its training record as JSON beside it."""
    target = Path(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": checkpoint.config.to_dict(),
        "train_config": checkpoint.train_config.to_dict(),
        "spread_scale": float(checkpoint.spread_scale),
        "record": checkpoint.record,
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.model.state_dict().items()},
    }
    payload["weights_sha256"] = weights_digest(payload["state_dict"])
    payload["settings_sha256"] = settings_digest(payload)
    with atomic_output(target) as tmp:
        torch.save(payload, tmp)
    with atomic_output(target.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(_summary(payload), indent=2, default=str), encoding="utf-8")
    return target


PREVIOUS_SUFFIX = ".previous"
"""Where :func:`replace_checkpoint` keeps the checkpoint it replaces: ``NAME.previous.pt``."""


def replace_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path | None:
    """Save ``checkpoint`` at ``path``, keeping the one that was there (and its record) as
    ``NAME.previous.pt`` (replacing an older one there); returns where, or None.

    The new checkpoint is written whole beside ``path`` first: a save that fails (a full
    disk, Ctrl-C) leaves the old one where it was, and ``path`` never lacks a checkpoint,
    even for an instant (the old one is linked, or copied, to its new name before the new one
    is renamed over it). Before 2026-12-05 the old one was moved aside first, and a failed save
    left nothing at ``path`` (review 13).

    Raises:
        OutputError: the new checkpoint or the copy of the old one could not be written;
            nothing at ``path`` changed.
    """
    target = Path(path)
    record = target.with_suffix(".json")
    staged = target.with_name(f"{TEMP_PREFIX}{target.stem}.new.pt")
    try:
        save_checkpoint(checkpoint, staged)
        kept = None
        if target.is_file():
            kept = target.with_name(f"{target.stem}{PREVIOUS_SUFFIX}.pt")
            _link_or_copy(target, kept)
            if record.is_file():
                _link_or_copy(record, kept.with_suffix(".json"))
        os.replace(staged, target)
        os.replace(staged.with_suffix(".json"), record)
    except OutputError as exc:  # the new checkpoint could not be written: named as asked
        said = str(exc).replace(str(staged.with_suffix(".json")), str(record))
        raise OutputError(
            f"{said.replace(str(staged), str(target))} The model that was there is untouched."
        ) from exc
    except OSError as exc:
        raise OutputError(
            f"Could not save the model at {target} ({exc.strerror or exc}); what was there is "
            "untouched. Free some space or choose a folder you can write to, then run again."
        ) from exc
    finally:
        for leftover in (staged, staged.with_suffix(".json")):
            leftover.unlink(missing_ok=True)
    return kept


def _link_or_copy(source: Path, destination: Path) -> None:
    """``destination`` becomes a complete copy of ``source`` (a hard link where the file
    system has them), replacing whatever was there in one rename."""
    spare = destination.with_name(f"{TEMP_PREFIX}{destination.name}")
    spare.unlink(missing_ok=True)
    try:
        os.link(source, spare)
    except OSError:
        shutil.copy2(source, spare)
    os.replace(spare, destination)


def load_checkpoint(path: str | os.PathLike[str] | None = None, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint (default: the shipped ``assets/model.pt``) onto ``device``."""
    source = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not source.is_file():
        raise InputError(
            f"No model checkpoint at {source}. Train one with 'python -m core train' or choose "
            "the linear or whittaker method."
        )
    try:
        payload = torch.load(source, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise InputError(
            f"Cannot read the model checkpoint {source} ({reason[:160] or type(exc).__name__}). "
            "Is it a whole .pt file written by 'python -m core train'?"
        ) from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise InputError(
            f"{source} is a PyTorch file but not a FieldFlow model checkpoint; give one "
            "written by 'python -m core train' (the shipped one is assets/model.pt)."
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise InputError(
            f"Checkpoint {source} has format {payload['format_version']}, this code reads "
            f"{FORMAT_VERSION}; retrain it with 'python -m core train'."
        )
    try:
        digest = weights_digest(payload.get("state_dict", {}))
    except (AttributeError, TypeError):  # not a dict of tensors: refused below, by name
        digest = ""
    expected = payload.get("weights_sha256")  # checkpoints saved before it have none
    if expected is not None and digest != expected:
        raise InputError(
            f"The model checkpoint {source} is damaged: its weights do not match the digest "
            "saved with them (a bad copy or disk?). Copy it again, restore the shipped "
            "assets/model.pt, or retrain with 'python -m core train'."
        )
    expected = payload.get("settings_sha256")  # nor checkpoints saved before 2026-12-03
    if expected is not None and settings_digest(payload) != expected:
        raise InputError(
            f"The model checkpoint {source} is damaged: its settings (configuration, band "
            "width, record) do not match the digest saved with them (a bad copy, or edited by "
            "hand?). Copy it again, restore the shipped assets/model.pt, or retrain with "
            "'python -m core train'."
        )
    try:
        model = FieldFlowNet(ModelConfig.from_dict(payload["model_config"]))
        model.load_state_dict(payload["state_dict"])
        train_config = TrainConfig.from_dict(payload["train_config"])
        spread_scale = float(payload["spread_scale"])
        record = dict(payload["record"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: shapes
        raise InputError(
            f"The model checkpoint {source} is incomplete or its weights do not fit its "
            f"configuration ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "retrain it with 'python -m core train' or restore the shipped assets/model.pt."
        ) from exc
    broken = [name for name, tensor in model.state_dict().items() if not tensor.isfinite().all()]
    if broken:
        raise InputError(
            f"The model checkpoint {source} holds weights that are not numbers (NaN or infinite: "
            f"{', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): the training that "
            "made it diverged, and its reconstructions would be empty. Retrain it at a lower "
            "--lr, or use another model."
        )
    model.to(device).eval()
    return Checkpoint(
        model=model,
        train_config=train_config,
        spread_scale=spread_scale,
        record=record,
        source=str(source),
        weights_sha256=digest,
    )


def training_sites(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Sites a checkpoint was trained or tuned on, from its training record."""
    return load_checkpoint(path).seen_sites


def trained_inside(path: str | os.PathLike[str] | None) -> Callable[[xr.Dataset], bool]:
    """Whether a cube's field lies inside a cube the checkpoint at ``path`` was trained or tuned
    on (:func:`training_overlap`: by the footprints of its record, or its site name), as a
    test of cubes; the checkpoint is read once."""
    checkpoint = load_checkpoint(path)
    return lambda cube: training_overlap(checkpoint, cube).trained_on


def placed_by_record(path: str | os.PathLike[str] | None) -> Callable[[xr.Dataset], bool]:
    """Whether the checkpoint at ``path`` records where cubes of a cube's ``site`` name lie
    (footprints of that name) and the cube's own place can be told: :func:`training_overlap`
    then judges it by place, and its name alone says nothing (fields fetched under one name,
    "field" or a file's, are not one place; review 18)."""
    checkpoint = load_checkpoint(path)
    named = {str(e["site"]) for e in checkpoint.seen_footprints}

    def test(cube: xr.Dataset) -> bool:
        return str(cube.attrs.get("site", "")) in named and cube_outline(cube) is not None

    return test


def training_total(record: dict[str, object], key: str) -> float | None:
    """``record[key]`` plus ``record[key + "_before"]``: a fine-tuned checkpoint's training
    (``steps``, ``seconds``) with that of the checkpoint it started from; None where the record
    has neither."""
    parts = [record.get(key), record.get(f"{key}_before")]
    numbers = [p for p in parts if isinstance(p, int | float)]
    return sum(numbers) if numbers else None


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights' names, shapes, types and bytes. torch's file format keeps the
    tensors' bytes without a checksum it verifies: flipped bytes load silently as other
    weights, and the model then answers nonsense."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


SETTINGS_KEYS = ("model_config", "train_config", "spread_scale", "record")
"""What a checkpoint holds besides its weights: the settings digest covers these. A changed
``spread_scale`` (the band's width) or config value loads without any error, so only a digest
tells."""


def settings_digest(payload: dict[str, object]) -> str:
    """SHA-256 of a checkpoint payload's :data:`SETTINGS_KEYS`, as canonical JSON."""
    settings = {key: payload.get(key) for key in SETTINGS_KEYS}
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _summary(payload: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in payload.items() if k != "state_dict"}
