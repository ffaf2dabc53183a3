"""`python -m core train`: held-out sites stay unseen, and fine-tuning from a checkpoint keeps
that promise and its record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.cli import main
from core.config import DEFAULT_CHECKPOINT
from core.cube import read_cube
from core.grid import cube_lonlat_bounds
from core.model.checkpoint import load_checkpoint

SMALL = ("es-field_2019.nc", "hu-alfold_2021.nc", "pt-santarem_2021.nc")


@pytest.fixture(scope="module")
def small_data(cubes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder of three small real cubes (links to the shared files, nothing copied)."""
    folder = tmp_path_factory.mktemp("cubes")
    for name in SMALL:
        (folder / name).symlink_to(cubes_dir / name)
    return folder


@pytest.fixture(scope="module")
def base_checkpoint(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "base.pt"
    argv = ["train", "--tiny", "--data", str(small_data), "--out", str(out), "--threads", "1"]
    assert main([*argv, "--holdout", "hu-alfold", "--validation-episodes", "4"]) == 0
    return out


def test_held_out_sites_are_never_seen(base_checkpoint: Path, small_data: Path) -> None:
    checkpoint = load_checkpoint(base_checkpoint)
    assert checkpoint.record["holdout_sites"] == ["hu-alfold"]
    assert "hu-alfold" not in checkpoint.seen_sites
    assert checkpoint.seen_sites == ["es-field", "pt-santarem"]
    # Where they lie, so that a field fetched there is known as one the model has seen.
    footprints = {e["site"]: e["bounds"] for e in checkpoint.seen_footprints}
    assert sorted(footprints) == checkpoint.seen_sites
    for site in footprints:
        (path,) = small_data.glob(f"{site}_*.nc")
        expected = cube_lonlat_bounds(read_cube(path))
        assert footprints[site] == pytest.approx(expected, abs=1e-6)


def test_the_shipped_checkpoint_records_where_every_site_it_saw_lies() -> None:
    shipped = load_checkpoint(DEFAULT_CHECKPOINT)
    assert sorted({e["site"] for e in shipped.seen_footprints}) == shipped.seen_sites


def test_fine_tuning_starts_from_the_checkpoint_and_keeps_its_record(
    small_data: Path, base_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tuned.pt"
    argv = ["train", "--init", str(base_checkpoint), "--data", str(small_data), "--out", str(out)]
    argv += ["--holdout", "hu-alfold", "--steps", "3", "--lr", "1e-4", "--threads", "1"]
    argv += ["--spectral-jitter", "0.1", "--field-ndvi-weight", "2", "--date-jitter", "0.5"]
    argv += ["--ndvi-weight", "1.5", "--season-dropout", "0.5"]
    assert main([*argv, "--validation-episodes", "4"]) == 0
    base, tuned = load_checkpoint(base_checkpoint), load_checkpoint(out)
    assert tuned.config == base.config
    assert tuned.record["initialised_from"] == str(base_checkpoint)
    assert tuned.record["steps_before"] == base.record["steps"]
    assert tuned.train_config.lr == pytest.approx(1e-4)
    assert tuned.train_config.spectral_jitter == pytest.approx(0.1)
    assert tuned.train_config.field_ndvi_weight == pytest.approx(2.0)
    assert tuned.train_config.ndvi_weight == pytest.approx(1.5)
    assert tuned.train_config.date_jitter == pytest.approx(0.5)
    assert tuned.train_config.season_dropout == pytest.approx(0.5)
    assert "field_ndvi" in tuned.record["final_losses"]  # the term was trained on
    assert "hu-alfold" not in tuned.seen_sites
    assert tuned.seen_footprints == base.seen_footprints  # the same sites, recorded once
    # Three small steps move the weights a little: started from the base, not from scratch.
    distance = sum(
        (a - b).abs().sum().item()
        for a, b in zip(tuned.model.parameters(), base.model.parameters(), strict=True)
    )
    scale = sum(p.abs().sum().item() for p in base.model.parameters())
    assert 0 < distance < 0.05 * scale


def test_a_training_over_an_existing_checkpoint_keeps_it_as_previous(
    small_data: Path, base_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    # A five-step training replaced the shipped model, warned worse than interpolation, with
    # no way back (review 5): the checkpoint it replaces is kept beside it.
    out = tmp_path / "mine.pt"
    out.write_bytes(base_checkpoint.read_bytes())
    out.with_suffix(".json").write_text(base_checkpoint.with_suffix(".json").read_text())
    before = out.read_bytes()
    argv = ["train", "--init", str(base_checkpoint), "--data", str(small_data), "--out", str(out)]
    argv += ["--holdout", "hu-alfold", "--steps", "2", "--lr", "1e-4", "--threads", "1"]
    assert main([*argv, "--validation-episodes", "4"]) == 0
    kept = tmp_path / "mine.previous.pt"
    assert kept.read_bytes() == before and kept.with_suffix(".json").is_file()
    assert load_checkpoint(out).record["steps"] != load_checkpoint(kept).record["steps"]
    said = capsys.readouterr().out
    assert f"The checkpoint that was at {out} is kept as {kept}" in said


def test_a_save_stopped_half_way_leaves_the_model_that_was_there(
    base_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review 13: Ctrl-C during the save (or SIGKILL, a power cut) left the old model moved
    # to NAME.previous.pt and nothing at NAME.pt. Now the new one is written whole first.
    from core.model import checkpoint as checkpoint_module
    from core.model.checkpoint import replace_checkpoint

    out = tmp_path / "mine.pt"
    out.write_bytes(base_checkpoint.read_bytes())
    out.with_suffix(".json").write_text(base_checkpoint.with_suffix(".json").read_text())
    before = out.read_bytes()
    real_save = torch.save

    def stopped(payload, path, *args, **kwargs) -> None:
        real_save(payload, path, *args, **kwargs)  # written, then Ctrl-C before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        replace_checkpoint(load_checkpoint(), out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.pt"]
    monkeypatch.undo()
    assert replace_checkpoint(load_checkpoint(), out) == tmp_path / "mine.previous.pt"
    assert (tmp_path / "mine.previous.pt").read_bytes() == before


def test_two_trainings_into_one_file_the_second_is_refused_before_it_trains(
    small_data: Path, base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Review 13: two fine-tunes to the same --out both said the model that was there was
    # kept as NAME.previous.pt; it was gone (the second moved the first one's result there).
    from core.cli.train import training_claim

    out = tmp_path / "mine.pt"
    out.write_bytes(base_checkpoint.read_bytes())
    argv = ["train", "--init", str(base_checkpoint), "--data", str(small_data), "--out", str(out)]
    argv += ["--holdout", "hu-alfold", "--steps", "2", "--threads", "1"]
    with training_claim(out):  # a training under way (another terminal, the app's button)
        assert main([*argv, "--validation-episodes", "4"]) == 2
        said = capsys.readouterr().err
        assert f"Another training is writing {out} now; wait until it has ended" in said
        assert out.read_bytes() == base_checkpoint.read_bytes()
        assert not (tmp_path / "mine.previous.pt").exists()
    assert main([*argv, "--validation-episodes", "4"]) == 0  # once it has ended
    assert (tmp_path / "mine.previous.pt").read_bytes() == base_checkpoint.read_bytes()


def test_fine_tuning_refuses_to_see_the_checkpoints_holdout(
    small_data: Path, base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "leaky.pt"
    argv = ["train", "--init", str(base_checkpoint), "--data", str(small_data), "--out", str(out)]
    assert main([*argv, "--steps", "2"]) == 2
    assert "hold them out again" in capsys.readouterr().err
    assert not out.exists()


def test_fine_tuning_on_ones_own_cubes_keeps_the_checkpoints_holdout(
    cubes_dir: Path, base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's folder of their own region's cubes lacks the sites the checkpoint held out: they
    stay unseen without being named, may be named all the same, and stay in the record."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "pt-santarem_2021.nc").symlink_to(cubes_dir / "pt-santarem_2021.nc")
    common = ["--data", str(own), "--steps", "2", "--threads", "1", "--validation-episodes", "4"]
    for extra in ([], ["--holdout", "hu-alfold"]):
        out = tmp_path / f"own{len(extra)}.pt"
        assert (
            main(["train", "--init", str(base_checkpoint), "--out", str(out), *common, *extra]) == 0
        )
        tuned = load_checkpoint(out)
        assert tuned.record["holdout_sites"] == ["hu-alfold"]
        assert "hu-alfold" not in tuned.seen_sites
        assert "never used: ['hu-alfold']" in capsys.readouterr().err
    # A site neither in the data nor held out by the checkpoint is still a typo.
    bad = ["train", "--init", str(base_checkpoint), "--out", str(tmp_path / "x.pt"), *common]
    assert main([*bad, "--holdout", "hu-alfod"]) == 2
    assert "unknown sites ['hu-alfod']" in capsys.readouterr().err


def test_the_shipped_model_fine_tunes_on_ones_own_cubes(
    cubes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's way for a region unlike the training sites: the shipped model, fine-tuned on
    a folder of the user's own cubes, with no --holdout to name."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "es-field_2019.nc").symlink_to(cubes_dir / "es-field_2019.nc")
    out = tmp_path / "mine.pt"
    argv = ["train", "--init", str(DEFAULT_CHECKPOINT), "--data", str(own), "--out", str(out)]
    argv += ["--steps", "2", "--batch-size", "2", "--threads", "1", "--validation-episodes", "4"]
    assert main(argv) == 0
    shipped, mine = load_checkpoint(DEFAULT_CHECKPOINT), load_checkpoint(out)
    assert mine.record["holdout_sites"] == shipped.record["holdout_sites"]  # still unseen
    assert mine.seen_sites == shipped.seen_sites  # es-field was among them already
    assert mine.weights_sha256 != shipped.weights_sha256 and mine.source == str(out)
    assert mine.train_config.lr == pytest.approx(3e-4)  # a fine-tuning's rate, not 1e-3
    assert "warning: on the calibration values" not in capsys.readouterr().err
    # Far too high a rate wrecks it in two steps, and the command says so.
    assert main([*argv, "--lr", "1e-2"]) == 0
    err = capsys.readouterr().err
    assert "warning: on the calibration values the model errs" in err
    assert "warning: the p10-p90 band holds only" in err
    # A Run with that checkpoint says the same where it relies on it: its band only when the
    # band is not fitted on the field.
    cube = own / "es-field_2019.nc"
    run = ["reconstruct", "--cube", str(cube), "--dates", "2019-05-01,2019-06-15"]
    run += ["--samples", "8", "--steps", "2", "--no-blend-field", "--out"]
    for index, (checkpoint, calibrate, expected) in enumerate(
        (
            (out, [], {"erring", "too narrow"}),
            (out, ["--calibrate-field"], {"erring"}),
            (DEFAULT_CHECKPOINT, [], set()),
        )
    ):
        target = tmp_path / f"frames{index}.nc"
        assert main([*run, str(target), "--checkpoint", str(checkpoint), *calibrate]) == 0
        printed = capsys.readouterr()
        said = {w for w in ("erring", "too narrow") if w in printed.err}
        assert said == expected, printed.err
        # The band fitted on the field at the same (widest) width as the checkpoint's is fitted
        # all the same, not "too few clear acquisitions".
        assert "too few clear acquisitions" not in printed.out


def test_a_held_out_site_is_trained_on_only_when_released_by_name(
    small_data: Path, base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "released.pt"
    argv = ["train", "--init", str(base_checkpoint), "--data", str(small_data), "--out", str(out)]
    argv += ["--steps", "2", "--threads", "1", "--validation-episodes", "4"]
    assert main([*argv, "--release-holdout", "hu-alfold"]) == 0
    released = load_checkpoint(out)
    assert released.record["holdout_sites"] == []
    assert "hu-alfold" in released.seen_sites
    assert "hu-alfold" in {e["site"] for e in released.seen_footprints}
    # Only a site the checkpoint held out can be released, and only when fine-tuning one.
    assert main([*argv, "--release-holdout", "es-field"]) == 2
    assert "which " + str(base_checkpoint) + " did not hold out" in capsys.readouterr().err
    fresh = ["train", "--tiny", "--data", str(small_data), "--out", str(tmp_path / "y.pt")]
    assert main([*fresh, "--release-holdout", "hu-alfold"]) == 2
    assert "give it with --init" in capsys.readouterr().err


def test_fine_tuning_takes_the_model_config_from_the_checkpoint(
    small_data: Path, base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--init", str(base_checkpoint), "--data", str(small_data)]
    argv += ["--out", str(tmp_path / "x.pt"), "--holdout", "hu-alfold", "--width", "32"]
    assert main(argv) == 2
    assert "model config from the checkpoint" in capsys.readouterr().err
    argv = ["train", "--tiny", "--data", str(small_data), "--out", str(tmp_path / "y.pt")]
    assert main([*argv, "--lr", "0"]) == 2
    assert "--lr must be a positive number" in capsys.readouterr().err
    assert main([*argv, "--spectral-jitter", "-0.1"]) == 2
    assert "--spectral-jitter must be between 0 and 1" in capsys.readouterr().err
    assert main([*argv, "--date-jitter", "1.5"]) == 2
    assert "--date-jitter must be between 0 and 1" in capsys.readouterr().err
    assert main([*argv, "--season-dropout", "1.5"]) == 2
    assert "--season-dropout must be between 0 and 1" in capsys.readouterr().err
    for share in ("1.5", "-0.1"):  # review 29: the upper bound could go unseen
        assert main([*argv, "--unseen-share", share]) == 2
        assert "--unseen-share must be between 0 and 1" in capsys.readouterr().err
    assert main([*argv, "--ndvi-weight", "-1"]) == 2
    assert "--ndvi-weight must be 0 or more" in capsys.readouterr().err
    assert main([*argv, "--log-every", "0"]) == 2
    assert "--log-every must be 1 or more" in capsys.readouterr().err


def test_a_scale_head_is_added_and_trained_alone_on_top_of_a_checkpoint(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_path, out = tmp_path / "plain.pt", tmp_path / "scaled.pt"
    argv = ["--data", str(small_data), "--holdout", "hu-alfold", "--threads", "1"]
    argv += ["--validation-episodes", "4"]
    assert main(["train", "--tiny", "--no-scale-head", "--out", str(base_path), *argv]) == 0
    base = load_checkpoint(base_path)
    assert base.model.scale_head is None
    tuned_argv = ["train", "--init", str(base_path), "--scale-head", "--heads-only"]
    assert main([*tuned_argv, "--steps", "4", "--out", str(out), *argv]) == 0
    tuned = load_checkpoint(out)
    assert tuned.config.scale_head and tuned.train_config.heads_only
    before, after = base.model.state_dict(), tuned.model.state_dict()
    trunk = [k for k in before if not k.startswith("flow_head.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # the mean's weights
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("flow_head."))
    assert any(k.startswith("scale_head.") for k in after)
    # A scale head cannot be dropped, and --heads-only needs a trained trunk.
    drop = ["train", "--init", str(out), "--no-scale-head", "--steps", "2"]
    assert main([*drop, "--out", str(tmp_path / "x.pt"), *argv]) == 2
    assert "cannot be dropped" in capsys.readouterr().err
    assert main(["train", "--heads-only", "--out", str(tmp_path / "y.pt"), *argv]) == 2
    assert "give it with --init" in capsys.readouterr().err


def test_the_field_mean_ndvi_term_is_the_error_of_each_frames_mean() -> None:
    from core.model.training import MIN_FIELD_PIXELS, field_mean_l1

    pred = torch.zeros(2, 3, 8, 8)
    truth = torch.zeros(2, 3, 8, 8)
    mask = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    mask[0, 0] = True  # 64 pixels: mean error +0.1 (pixel errors +0.3 and -0.1 average out)
    pred[0, 0, :4] = 0.3
    pred[0, 0, 4:] = -0.1
    mask[1, 2, :2] = True  # 16 pixels: mean error -0.2
    pred[1, 2] = -0.2
    mask[1, 1, 0, : MIN_FIELD_PIXELS - 1] = True  # too few pixels: left out
    pred[1, 1] = 5.0
    assert field_mean_l1(pred, truth, mask).item() == pytest.approx((0.1 + 0.2) / 2)
    assert field_mean_l1(pred, truth, torch.zeros_like(mask)).item() == 0.0


def test_cubes_too_small_or_too_short_to_train_on_are_said_not_looped_on(
    flanders_cube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Cut from the real Flanders cube: 2 x 2 px (under one 4 px patch) and 3 clear frames. Training
    # used to loop for ever on the first and raise a bare ValueError on the second.
    from core.cube import write_cube

    small, short = tmp_path / "small", tmp_path / "short"
    small.mkdir()
    short.mkdir()
    tiny = flanders_cube.isel(y=slice(30, 32), x=slice(30, 32)).assign_attrs(site="tiny")
    write_cube(tiny, small / "tiny.nc")
    write_cube(flanders_cube.isel(time_s2=[1, 2, 3]).assign_attrs(site="brief"), short / "b.nc")
    for folder, why in (
        (small, "tiny is 2 x 2 px"),
        (short, "brief has 3 Sentinel-2 frame(s) with clear pixels"),
    ):
        argv = ["train", "--tiny", "--steps", "2", "--data", str(folder)]
        assert main([*argv, "--out", str(tmp_path / "m.pt"), "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert "error: Nothing to train on" in err and why in err
        assert not (tmp_path / "m.pt").exists()


def test_a_field_is_known_as_trained_on_by_where_it_lies_not_by_a_shared_name(
    cubes_dir: Path, base_checkpoint: Path
) -> None:
    """Fields fetched under one common name ("field") are not one place: where the record knows
    a site's footprint, the cube's place decides; without a footprint, its name does."""
    import dataclasses

    from core.model.checkpoint import training_overlap

    checkpoint = load_checkpoint(base_checkpoint)  # trained on es-field and pt-santarem
    elsewhere = read_cube(cubes_dir / "hu-alfold_2021.nc")
    elsewhere.attrs["site"] = "es-field"  # the name of a training site, another place
    assert not training_overlap(checkpoint, elsewhere).trained_on
    there = read_cube(cubes_dir / "pt-santarem_2021.nc")
    there.attrs["site"] = "my field"
    assert training_overlap(checkpoint, there).trained_on
    no_places = dataclasses.replace(checkpoint, record={**checkpoint.record, "seen_footprints": []})
    assert training_overlap(no_places, elsewhere).trained_on  # only the name to go by


def test_a_cube_inside_a_held_out_site_under_another_name_releases_it(
    cubes_dir: Path, base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A field fetched (or a Run's cube) inside a held-out cube's area carries its own name:
    the names alone would keep the site "held out" in the record while the model has seen part
    of it; where it lies says otherwise."""
    from core.cube import write_cube

    own = tmp_path / "own"
    own.mkdir()
    hungary = read_cube(cubes_dir / "hu-alfold_2021.nc")
    part = hungary.isel(x=slice(0, 24), y=slice(0, 24)).assign_attrs(site="my-field")
    write_cube(part, own / "my-field.nc")
    out = tmp_path / "inside.pt"
    argv = ["train", "--init", str(base_checkpoint), "--data", str(own), "--out", str(out)]
    assert main([*argv, "--steps", "2", "--threads", "1", "--validation-episodes", "4"]) == 0
    assert "overlap those of the held-out sites ['hu-alfold']" in capsys.readouterr().err
    record = load_checkpoint(out).record
    assert record["holdout_sites"] == [] and record["seen_inside_holdout"] == ["hu-alfold"]
    # A cube elsewhere leaves the held-out site held out.
    (own / "my-field.nc").unlink()
    (own / "pt-santarem_2021.nc").symlink_to(cubes_dir / "pt-santarem_2021.nc")
    assert main([*argv, "--steps", "2", "--threads", "1", "--validation-episodes", "4"]) == 0
    assert "overlap" not in capsys.readouterr().err
    assert load_checkpoint(out).record["holdout_sites"] == ["hu-alfold"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be 1 or more"),
        (["--batch-size", "-1"], "--batch-size must be 1 or more"),
        (["--validation-episodes", "0"], "--validation-episodes must be 1 or more"),
        (["--validation-episodes", "100000"], "--validation-episodes must be at most 1000"),
        (["--depth", "0"], "--depth must be 1 or more"),
        (["--threads", "-4"], "--threads must be 0"),
        (["--seed", str(10**23)], "--seed must be between 0"),
        (["--width", "3"], "--width must be a multiple of 4 (the model's 2 attention heads"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--lr", "inf"], "--lr must be a positive number"),
        (["--ndvi-weight", "nan"], "--ndvi-weight must be 0 or more"),
        (["--field-ndvi-weight", "nan"], "--field-ndvi-weight must be 0 or more"),
        (["--band-dropout", "2"], "--band-dropout must be between 0 and 1"),
    ],
)
def test_numbers_a_training_cannot_run_with_are_refused_before_it_starts(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra, message
) -> None:
    out = tmp_path / "m.pt"
    assert main(["train", "--tiny", "--data", str(small_data), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "step 1/" not in err  # refused before the first step
    assert not out.exists()


def test_the_width_is_checked_against_the_heads_of_the_network_trained(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    argv = ["train", "--data", str(small_data), "--out", str(out), "--width", "20"]
    assert main(argv) == 2  # the full network has 4 heads: 20 is 4 heads of 5, odd
    assert "--width must be a multiple of 8 (the model's 4 attention heads" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--tiny", "--threads", "1"]) == 0  # --tiny's 2 heads of 10
    assert load_checkpoint(out).config.width == 20


def test_the_checkpoint_is_a_pt_file_and_the_data_a_folder(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The record goes beside the checkpoint as NAME.json: an --out of that name was the record.
    argv = ["train", "--tiny", "--data", str(small_data)]
    assert main([*argv, "--out", str(tmp_path / "m.json")]) == 2
    assert "must be a .pt file" in capsys.readouterr().err
    for data, said in ((tmp_path / "none", "does not exist"), (small_data / SMALL[0], "a file")):
        assert main(["train", "--tiny", "--data", str(data), "--out", str(tmp_path / "m.pt")]) == 2
        assert said in capsys.readouterr().err
    assert not list(tmp_path.glob("m.*"))


def test_a_diverging_training_saves_nothing_and_says_to_lower_the_rate(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    argv = ["train", "--tiny", "--data", str(small_data), "--out", str(out), "--threads", "1"]
    assert main([*argv, "--steps", "4", "--lr", "1e30"]) == 2
    err = capsys.readouterr().err
    assert "The training diverged at step" in err and "lower --lr" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_cube_too_small_beside_good_ones_is_left_out_of_training_calibration_and_record(
    flanders_cube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Review 18: a 3 x 3 px field first in the folder ended the training, after it had run, in
    # "ValueError: need at least one array to concatenate"; later in the folder it left the
    # calibration 1 episode of 48, and the record named it as tuned on.
    from core.cube import write_cube

    data = tmp_path / "data"
    data.mkdir()
    field = flanders_cube.isel(y=slice(0, 24), x=slice(0, 24)).assign_attrs(site="field")
    write_cube(flanders_cube.isel(y=slice(30, 33), x=slice(30, 33)).assign_attrs(site="px3"),
               data / "a_small.nc")  # fmt: skip
    write_cube(field, data / "b_field.nc")
    argv = ["train", "--tiny", "--steps", "2", "--data", str(data), "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "m.pt"), "--validation-episodes", "6"]) == 0
    err = capsys.readouterr().err
    assert "warning: left out, too little to train on: px3 is 3 x 3 px" in err
    assert "training on ['field']; calibrating on ['field']" in err
    # the over-corrected 2017-12-27 scene, screened as every reconstruction screens it
    for site in ("field", "px3"):
        assert f"note: {site}: Took out " in err and "sits at the floor" in err
    record = load_checkpoint(tmp_path / "m.pt").record
    assert list(record["red_floor_screened"]) == ["field"]  # px3 was not used
    assert record["tuned_sites"] == ["field"] and record["seen_sites"] == ["field"]
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "b_field.nc").symlink_to(data / "b_field.nc")
    argv[argv.index(str(data))] = str(alone)
    assert main([*argv, "--out", str(tmp_path / "a.pt"), "--validation-episodes", "6"]) == 0
    capsys.readouterr()  # the same six calibration episodes as without the small cube
    assert (
        load_checkpoint(tmp_path / "a.pt").record["validation"]["n_values"]
        == record["validation"]["n_values"]
    )
    # named for calibration, it is refused before any training
    argv[argv.index(str(alone))] = str(data)
    assert main([*argv, "--out", str(tmp_path / "c.pt"), "--calibrate-on", "px3"]) == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            "error: Cannot calibrate on these cubes: px3 is 3 x 3 px. A calibration cube needs"
        )
    )
    assert not (tmp_path / "c.pt").exists()


def test_a_json_beside_the_checkpoint_that_is_no_record_is_kept(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Review 18: 'train --out X.pt' replaced an evaluation report saved as X.json, unasked.
    report = tmp_path / "myeval.json"
    report.write_text('{"cubes": [], "rows": []}')
    argv = ["train", "--tiny", "--data", str(small_data), "--out", str(tmp_path / "myeval.pt")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {report} exists and is not a model's training record (where this training "
        "writes its own, beside myeval.pt): move it, or choose another --out."
    )
    assert report.read_text() == '{"cubes": [], "rows": []}'


def test_releasing_a_held_out_site_that_is_not_in_the_data_says_so(
    small_data: Path, base_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Review 18: "names unknown sites ['hu-alfold']" of the checkpoint's own held-out site.
    data = tmp_path / "data"
    data.mkdir()
    (data / "es-field_2019.nc").symlink_to(small_data / "es-field_2019.nc")
    argv = ["train", "--init", str(base_checkpoint), "--data", str(data), "--steps", "1"]
    argv += ["--out", str(tmp_path / "r.pt"), "--release-holdout", "hu-alfold"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --release-holdout names ['hu-alfold'], which {base_checkpoint} held out but "
        "which is not in --data (['es-field']): there is nothing of it to train on, so nothing "
        "to release."
    )


def test_every_bad_file_of_the_data_folder_is_named_at_once(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Review 18: each run named one more bad file.
    data = tmp_path / "data"
    data.mkdir()
    (data / "es-field_2019.nc").symlink_to(small_data / "es-field_2019.nc")
    (data / "corrupt.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    (data / "notes.nc").write_text("not a cube")
    argv = ["train", "--tiny", "--data", str(data), "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 of the 3 cube files cannot be used.")
    assert "corrupt.nc" in err and "notes.nc" in err
    assert err.rstrip().endswith("or train on a folder of the good ones.")


def test_a_cube_south_of_the_tropic_is_trained_on_with_its_dates_half_a_year_on(
    cubes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training reads a southern cube's dates as inference does (README, the seasons south of
    the tropics), says so, and records which sites it read so."""
    import numpy as np

    folder = tmp_path / "cubes"
    folder.mkdir()
    south = read_cube(cubes_dir / "es-field_2019.nc")
    south.attrs.update(crs="EPSG:32730", site="es-field-south")  # the same northing, ~48 deg S
    south = south.assign_coords(time_s2=south["time_s2"].values + np.timedelta64(182, "D"))
    south.to_netcdf(folder / "es-field-south.nc")
    (folder / "pt-santarem_2021.nc").symlink_to(cubes_dir / "pt-santarem_2021.nc")
    out = tmp_path / "south.pt"
    argv = ["train", "--tiny", "--data", str(folder), "--out", str(out), "--threads", "1"]
    assert main([*argv, "--validation-episodes", "2"]) == 0
    said = capsys.readouterr().err
    assert "note: es-field-south lies south of the Tropic of Capricorn" in said
    assert "pt-santarem lies south" not in said
    assert load_checkpoint(out).record["southern_season_sites"] == ["es-field-south"]
