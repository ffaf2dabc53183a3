"""The models on offer (core.model.catalog): a model fine-tuned into the models folder is listed
with what its record says, taken by name on the command line, and a file that is not a usable
checkpoint is described by why, never offered silently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import xarray as xr

from core.cli import main
from core.config import DEFAULT_CHECKPOINT, Settings
from core.errors import InputError
from core.model.catalog import (
    describe_model,
    list_models,
    model_files,
    named_checkpoint,
    remove_model,
)
from core.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def models_dir(cubes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the shipped model fine-tuned (two steps) on es-field, saved by
    ``train --out`` into a folder that did not exist, plus what else lands in such a folder: a
    damaged copy, a file being written, the JSON records."""
    own = tmp_path_factory.mktemp("own")
    (own / "es-field_2019.nc").symlink_to(cubes_dir / "es-field_2019.nc")
    folder = tmp_path_factory.mktemp("home") / "models"
    argv = ["train", "--init", str(DEFAULT_CHECKPOINT), "--data", str(own)]
    argv += ["--out", str(folder / "castilla.pt"), "--steps", "2", "--batch-size", "2"]
    assert main([*argv, "--threads", "1", "--validation-episodes", "4"]) == 0
    damaged = bytearray((folder / "castilla.pt").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (folder / "broken.pt").write_bytes(bytes(damaged))
    (folder / ".tmp-next.pt.abc123.pt").write_bytes(b"half")
    return folder


def test_the_folder_s_models_are_offered_after_the_shipped_one(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir)
    files = model_files(settings)
    assert files == [
        (DEFAULT_CHECKPOINT, "shipped"),
        (models_dir / "broken.pt", "folder"),
        (models_dir / "castilla.pt", "folder"),
    ]  # the JSON records and the hidden file being written are not models
    # FIELDFLOW_CHECKPOINT naming one of them lists it once, as the environment's.
    chosen = Settings(models_dir=models_dir, checkpoint=models_dir / "castilla.pt")
    assert [origin for _, origin in model_files(chosen)] == ["shipped", "environment", "folder"]
    names = [path.name for path, _ in model_files(chosen)]
    assert names == ["model.pt", "castilla.pt", "broken.pt"]
    # No folder (the default one before any model is saved) is no model, not an error.
    nothing = Settings(models_dir=models_dir / "none")
    assert model_files(nothing) == [(DEFAULT_CHECKPOINT, "shipped")]


def test_a_model_is_described_by_its_own_training_record(models_dir: Path) -> None:
    shipped, broken, castilla = list_models(Settings(models_dir=models_dir))
    record = load_checkpoint(models_dir / "castilla.pt").record
    assert castilla.usable and castilla.label == "castilla"
    assert castilla.fine_tuned_from == str(DEFAULT_CHECKPOINT)
    # its two steps on top of all the shipped model's (its own fine-tuning of m4 included)
    assert castilla.steps == 2 + shipped.steps == 2 + 1600 + 2500
    assert castilla.mae_ratio == pytest.approx(record["validation"]["mae_ratio"])
    summary = castilla.summary()
    assert summary.startswith("Trained on be-flanders-a, es-field, it-bolzano, pt-santarem, ")
    assert "fine-tuned from model.pt" in summary
    assert "Held out: be-flanders-c, hu-alfold." in summary
    assert f"{castilla.mae_ratio:.2f} x linear interpolation's error" in summary
    assert f"saved {record['created'][:10]}" in summary
    assert shipped.label == "Shipped model" and shipped.warnings() == []
    # A damaged copy is described by the loader's reason and cannot be chosen.
    assert not broken.usable
    assert "is damaged" in broken.problem and broken.summary() == broken.problem


def test_a_checkpoint_its_training_measured_bad_carries_the_run_s_warning(
    models_dir: Path,
) -> None:
    good = describe_model(models_dir / "castilla.pt", "folder")
    bad = dataclasses.replace(good, mae_ratio=1.3)
    (warning,) = bad.warnings()
    assert "erring 1.30 x as much as linear interpolation" in warning
    assert dataclasses.replace(good, mae_ratio=0.9).warnings() == []


def test_checkpoint_by_name_on_the_command_line(
    models_dir: Path,
    cubes_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(models_dir=models_dir)
    assert named_checkpoint(Path("castilla"), settings) == models_dir / "castilla.pt"
    assert named_checkpoint(Path("castilla.pt"), settings) == models_dir / "castilla.pt"
    assert named_checkpoint(DEFAULT_CHECKPOINT, settings) == DEFAULT_CHECKPOINT
    with pytest.raises(InputError, match=r"it holds broken, castilla\)"):
        named_checkpoint(Path("flanders"), settings)
    with pytest.raises(InputError, match="No model checkpoint at sub/castilla"):
        named_checkpoint(Path("sub/castilla"), settings)  # a path is a path, never a name
    with pytest.raises(InputError, match=r"is a folder \(it holds broken.pt, castilla.pt\)"):
        named_checkpoint(models_dir, settings)
    with pytest.raises(InputError, match=r"is a folder \(it holds no .pt file\)"):
        named_checkpoint(tmp_path, settings)
    # A command takes the name and records the folder's file as the model that made it.
    monkeypatch.setenv("FIELDFLOW_MODELS_DIR", str(models_dir))
    out = tmp_path / "frames.nc"
    cube = cubes_dir / "es-field_2019.nc"
    run = ["reconstruct", "--cube", str(cube), "--dates", "2019-06-15", "--out", str(out)]
    assert main([*run, "--checkpoint", "castilla", "--no-blend-field"]) == 0
    with xr.open_dataset(out) as frames:
        assert frames.attrs["model_checkpoint"] == str(models_dir / "castilla.pt")
    assert main([*run, "--checkpoint", "flanders"]) == 2
    assert "nor a model called 'flanders'" in capsys.readouterr().err
    # `models` lists them, the default marked, the damaged one said to be unusable.
    assert main(["models"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "* Shipped model"
    assert "  broken [cannot be used]" in printed
    assert "  castilla" in printed
    assert any("is damaged" in line for line in printed)
    assert printed[-1].startswith(f"* the default (the shipped one). Models folder: {models_dir}")


def test_only_a_folder_model_that_is_not_the_default_is_removed(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "old.pt").write_bytes(b"weights")
    (folder / "old.json").write_text("{}")
    (folder / "default.pt").write_bytes(b"weights")
    settings = Settings(models_dir=folder, checkpoint=folder / "default.pt")
    with pytest.raises(InputError, match="is not a model of the models folder"):
        remove_model(DEFAULT_CHECKPOINT, settings)
    with pytest.raises(InputError, match="is not a model of the models folder"):
        remove_model(folder / "old.json", settings)
    with pytest.raises(InputError, match="is the default model"):
        remove_model(folder / "default.pt", settings)
    remove_model(folder / "old.pt", settings)
    assert sorted(p.name for p in folder.iterdir()) == ["default.pt"]
    assert DEFAULT_CHECKPOINT.is_file()
