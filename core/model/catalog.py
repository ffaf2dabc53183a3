"""The models a user can choose from: the shipped checkpoint, the one ``FIELDFLOW_CHECKPOINT``
names, and every checkpoint in the models folder (``FIELDFLOW_MODELS_DIR``), each described
by its own training record.

A regional model fine-tuned with ``python -m core train --init assets/model.pt --data MY_CUBES
--out <models folder>/NAME.pt`` is then one choice away in the app's settings, and
``--checkpoint NAME`` on the command line, without restarting anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import DEFAULT_CHECKPOINT, Settings
from core.errors import InputError
from core.storage import TEMP_PREFIX

CHECKPOINT_SUFFIX = ".pt"
ORIGINS = ("shipped", "environment", "folder")
"""Where a choice comes from: ``assets/model.pt``, ``FIELDFLOW_CHECKPOINT``, the models folder."""


@dataclass(frozen=True)
class ModelChoice:
    """One checkpoint a Run may use, as its training record describes it."""

    path: Path
    """The checkpoint file."""
    origin: str
    """One of :data:`ORIGINS`."""
    sites: tuple[str, ...] = ()
    """Sites it was trained or tuned on (those of the checkpoint it was fine-tuned from too)."""
    holdout: tuple[str, ...] = ()
    """Sites its training held out."""
    steps: int | None = None
    """Training steps, those of the checkpoint it was fine-tuned from included."""
    fine_tuned_from: str = ""
    """The checkpoint it was fine-tuned from (``train --init``); "" when trained from scratch."""
    created: str = ""
    """When it was saved (UTC, ISO 8601); "" for a record without it."""
    mae_ratio: float | None = None
    """Its error on its calibration values over linear interpolation's (below 1: better)."""
    coverage: float | None = None
    """Share of those values its p10-p90 band held at the width it was given."""
    problem: str = ""
    """Why it cannot be used (damaged, not a checkpoint): the loader's message; "" if usable."""

    @property
    def usable(self) -> bool:
        return not self.problem

    @property
    def label(self) -> str:
        """How a list names it."""
        if self.origin == "shipped":
            return "Shipped model"
        where = " (FIELDFLOW_CHECKPOINT)" if self.origin == "environment" else ""
        return f"{self.path.stem}{where}"

    def summary(self) -> str:
        """What it is, in one or two sentences: its sites, training and own validation."""
        if self.problem:
            return self.problem
        said = [f"Trained on {', '.join(self.sites) or 'sites its record does not name'}"]
        if self.fine_tuned_from:
            source = self.fine_tuned_from
            shown = Path(source).name if source.endswith(CHECKPOINT_SUFFIX) else source
            said.append(f"fine-tuned from {shown}")
        if self.steps:
            said.append(f"{self.steps:,} steps in all")
        if self.created:
            said.append(f"saved {self.created[:10]}")
        text = "; ".join(said) + "."
        if self.holdout:
            text += f" Held out: {', '.join(self.holdout)}."
        if self.mae_ratio is not None:
            text += (
                f" Its own validation: {self.mae_ratio:.2f} x linear interpolation's error on "
                "its calibration values"
            )
            text += f", its band holding {self.coverage:.0%} of them." if self.coverage else "."
        return text

    def warnings(self) -> list[str]:
        """What its own training measured against it, as a Run with it would warn."""
        from core.season import checkpoint_warnings

        if self.mae_ratio is None:
            return []
        return checkpoint_warnings({"model_checkpoint_mae_ratio": self.mae_ratio})


def model_files(settings: Settings) -> list[tuple[Path, str]]:
    """The checkpoint files on offer, with their origin (:data:`ORIGINS`): the shipped one
    where it is installed, ``settings.checkpoint`` where it is another, then the models
    folder's ``*.pt`` files by name (hidden files are left out: those being written are
    ``.tmp-*``, core.storage.TEMP_PREFIX).
    A file named twice is listed once, under its first origin."""
    files = []
    if DEFAULT_CHECKPOINT.is_file():
        files.append((DEFAULT_CHECKPOINT, "shipped"))
    if settings.checkpoint.is_file():
        files.append((settings.checkpoint, "environment"))
    folder = settings.models_dir
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix == CHECKPOINT_SUFFIX)
        files.extend(
            (p, "folder") for p in found if p.is_file() and not p.name.startswith(TEMP_PREFIX[0])
        )
    listed: set[Path] = set()
    unique = []
    for path, origin in files:
        if path.resolve() not in listed:
            listed.add(path.resolve())
            unique.append((path, origin))
    return unique


def describe_model(path: Path, origin: str) -> ModelChoice:
    """Read the checkpoint at ``path`` (its digests checked, as a Run would) and describe it;
    a file that cannot be used is described by why."""
    from core.model.checkpoint import load_checkpoint, training_total

    try:
        checkpoint = load_checkpoint(path)
    except InputError as exc:
        return ModelChoice(path=path, origin=origin, problem=str(exc))
    record = checkpoint.record
    validation = record.get("validation")
    validation = validation if isinstance(validation, dict) else {}
    steps = training_total(record, "steps")
    return ModelChoice(
        path=path,
        origin=origin,
        sites=tuple(checkpoint.seen_sites),
        holdout=tuple(str(s) for s in record.get("holdout_sites", []) or []),
        steps=int(steps) if steps else None,
        fine_tuned_from=str(record.get("initialised_from", "") or ""),
        created=str(record.get("created", "") or ""),
        mae_ratio=_number(validation.get("mae_ratio")),
        coverage=_number(validation.get("coverage_calibrated")),
    )


def list_models(settings: Settings) -> list[ModelChoice]:
    """Every checkpoint on offer (:func:`model_files`), described."""
    return [describe_model(path, origin) for path, origin in model_files(settings)]


def remove_model(path: Path, settings: Settings) -> None:
    """Remove a model of the models folder (its checkpoint and the JSON record beside it).

    Raises:
        InputError: ``path`` is not a checkpoint in the models folder (the shipped model and
            ``FIELDFLOW_CHECKPOINT``'s are never removed from here), or cannot be removed.
    """
    folder = settings.models_dir.resolve()
    target = Path(path)
    if target.suffix != CHECKPOINT_SUFFIX or target.resolve().parent != folder:
        raise InputError(f"{target} is not a model of the models folder {folder}; not removed.")
    if target.resolve() == settings.checkpoint.resolve():
        raise InputError(
            f"{target.name} is the default model (FIELDFLOW_CHECKPOINT); unset that first."
        )
    try:
        target.unlink(missing_ok=True)
        target.with_suffix(".json").unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot remove {target} ({exc.strerror}); remove it by hand.") from exc


def named_checkpoint(name: Path, settings: Settings) -> Path:
    """``--checkpoint``'s value as a file: a path as given where a file is there, else a model
    of the models folder called ``name`` (with or without ``.pt``).

    Raises:
        InputError: neither (the message lists the models folder's models), or a folder (the
            message lists its checkpoints).
    """
    if name.is_file():
        return name
    if name.is_dir():
        inside = sorted(
            p.name
            for p in name.glob(f"*{CHECKPOINT_SUFFIX}")
            if p.is_file() and not p.name.startswith(".")  # a write under way
        )
        what = ", ".join(inside) if inside else f"no {CHECKPOINT_SUFFIX} file"
        raise InputError(
            f"--checkpoint {name} is a folder (it holds {what}): give one checkpoint file, e.g. "
            f"{name / (inside[0] if inside else 'model.pt')}, or set FIELDFLOW_MODELS_DIR to the "
            "folder to offer its models by name."
        )
    if len(name.parts) == 1:
        for candidate in (name.name, name.name + CHECKPOINT_SUFFIX):
            path = settings.models_dir / candidate
            if path.is_file():
                return path
    held = [p.stem for p, origin in model_files(settings) if origin == "folder"]
    folder = settings.models_dir
    listing = f"it holds {', '.join(held)}" if held else "it holds none"
    raise InputError(
        f"No model checkpoint at {name}, nor a model called {name.name!r} in the models folder "
        f"{folder} ({listing}). Give a checkpoint's path, or save one there with "
        f"'python -m core train --init assets/model.pt --data MY_CUBES --out {folder}/NAME.pt'."
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
