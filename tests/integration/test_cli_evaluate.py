"""``python -m core evaluate`` and ``python -m core bench`` as a user runs them, on real cubes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from core.cli import main
from core.cube import read_cube

ROOT = Path(__file__).resolve().parents[2]
CUBES = ("pt-santarem_2021.nc", "hu-alfold_2021.nc")


def _core(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def evaluated(cubes_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("evaluate") / "eval.json"
    cube_args = [arg for name in CUBES for arg in ("--cube", str(cubes_dir / name))]
    done = _core(
        "evaluate", *cube_args, "--methods", "linear,whittaker", "--max-size", "32",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text(encoding="utf-8"))


def test_evaluate_writes_every_task_and_method(evaluated) -> None:
    _, data = evaluated
    rows = {(r["cube"], r["task"], r["method"]): r for r in data["rows"]}
    stems = [name.removesuffix(".nc") for name in CUBES]
    assert set(rows) == {
        (cube, task, method)
        for cube in stems
        for task in ("missing", "cloud", "gap")
        for method in ("linear", "whittaker")
    }
    for key, row in rows.items():
        assert row["status"] == "ok", key
        s = row["scores"]
        assert 0.001 < s["mae"] < 0.2, key
        assert s["mae"] <= s["rmse"] < 0.3, key
        assert 10 < s["psnr_db"] < 60, key
        assert 0 < s["sam_deg"] < 45, key
        assert 0 <= s["ndvi_mae"] < 0.5, key
        assert s["n_frames"] >= 1 and s["n_pixels"] >= 1, key
        assert s["n_unpredicted"] == 0, key
        assert math.isfinite(row["ratio"]) and row["ratio"] >= 1.0 - 1e-9, key
    assert {c["shape"][1] for c in data["cubes"]} == {32}
    assert data["protocol"]["max_size"] == 32 and data["protocol"]["seed"] == 0
    assert data["seen_cubes"] == {"linear": [], "whittaker": []}
    assert "model_options" not in data
    assert data["software"]["fieldflow"]
    pooled = [r for r in data["pooled"] if r["cube"].startswith("pooled (pixel")]
    assert {(r["task"], r["method"]) for r in pooled} == {
        (t, m) for t in ("missing", "cloud", "gap") for m in ("linear", "whittaker")
    }


def test_evaluate_scores_a_fixed_whittaker_smoothing_when_asked(
    evaluated, cubes_dir, tmp_path
) -> None:
    """``--whittaker-lambda`` (as ``reconstruct`` and ``ndvi`` take it) reaches the smoother the
    yardstick scores, and the JSON says which smoothing it was; linear is untouched."""
    _, gcv = evaluated
    out = tmp_path / "fixed.json"
    done = _core(
        "evaluate", "--cube", str(cubes_dir / CUBES[0]), "--methods", "linear,whittaker",
        "--max-size", "32", "--whittaker-lambda", "1000", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["whittaker_lambda"] == 1000 and "whittaker_lambda" not in gcv
    stem = CUBES[0].removesuffix(".nc")

    def mae(rows: list[dict], method: str) -> list[float]:
        return [r["scores"]["mae"] for r in rows if (r["cube"], r["method"]) == (stem, method)]

    assert mae(data["rows"], "linear") == mae(gcv["rows"], "linear")
    assert mae(data["rows"], "whittaker") != mae(gcv["rows"], "whittaker")


def test_evaluate_prints_a_readable_table(evaluated) -> None:
    done, _ = evaluated
    header = done.stdout.splitlines()[0].split()
    assert header[:6] == ["cube", "task", "method", "n_fr", "n_px", "MAE"]
    assert "ratio" in header
    assert "pt-santarem_2021" in done.stdout and "pooled (cube mean)" in done.stdout


def test_evaluate_skips_a_method_on_the_cubes_it_saw(cubes_dir, tmp_path) -> None:
    out = tmp_path / "eval.json"
    done = _core(
        "evaluate", "--cube", str(cubes_dir / CUBES[0]), "--methods", "linear,whittaker,model",
        "--max-size", "16", "--seen", "whittaker=pt-santarem", "--json", str(out),
        "--steps", "4", "--calibrate-field", "--blend-field",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    # The shipped model was trained on pt-santarem (its record says so): skipped too.
    assert data["skipped_cubes"] == {
        "linear": [], "whittaker": ["pt-santarem_2021"], "model": ["pt-santarem_2021"]
    }  # fmt: skip
    statuses = {r["method"]: r["status"] for r in data["rows"]}
    assert statuses["linear"] == "ok" and statuses["whittaker"].startswith("skipped")
    assert statuses["model"].startswith("skipped")
    options = data["model_options"]  # what the model's figures would depend on is recorded
    assert options["steps"] == 4 and options["calibrate_field"] is True
    assert options["blend_field"] is True
    assert options["adapt_steps"] == 0 and options["checkpoint"].endswith("model.pt")


def test_evaluate_refuses_a_missing_cube_in_one_line(tmp_path) -> None:
    done = _core("evaluate", "--cube", str(tmp_path / "absent.nc"), "--methods", "linear")
    assert done.returncode == 2
    assert done.stderr.startswith("error: Cube file not found")
    assert "Traceback" not in done.stderr


def test_evaluate_names_every_bad_file_of_a_cubes_folder_before_any_work(
    cubes_dir, tmp_path, capsys
) -> None:
    """A real cube beside a NetCDF file that is no cube and a text file named .nc: both bad
    files named, with why and what to do, and nothing evaluated (no progress line)."""
    folder = tmp_path / "cubes"
    folder.mkdir()
    (folder / "a_real.nc").symlink_to(cubes_dir / "es-field_2019.nc")
    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(folder / "b_other.nc")
    (folder / "c_text.nc").write_text("not a cube")
    status = main(["evaluate", "--cubes-dir", str(folder), "--methods", "linear"])
    err = capsys.readouterr().err
    assert status == 2
    (line,) = err.splitlines()  # no "a_real: ... s" progress line before it
    assert line.startswith(
        f"error: 2 of the 3 cube files cannot be used. {folder / 'b_other.nc'}: Not a FieldFlow "
        "cube: it has no 's2' variable (time_s2, band, y, x). Cannot read "
        f"{folder / 'c_text.nc'} as a NetCDF cube ("
    )
    assert line.endswith(
        f"The folder {folder} should hold only cubes: move those files out of it, or give the "
        "cubes to evaluate one by one with --cube FILE."
    )
    # One bad file given with --cube: named, without the folder's advice.
    status = main(["evaluate", "--cube", str(folder / "b_other.nc"), "--methods", "linear"])
    assert status == 2
    assert capsys.readouterr().err == (
        f"error: {folder / 'b_other.nc'}: Not a FieldFlow cube: it has no 's2' variable "
        "(time_s2, band, y, x).\n"
    )


def test_evaluate_tells_a_folder_from_a_file(cubes_dir, tmp_path, capsys) -> None:
    cube = cubes_dir / "es-field_2019.nc"
    assert main(["evaluate", "--cube", str(cubes_dir), "--methods", "linear"]) == 2
    assert capsys.readouterr().err == (
        f"error: --cube {cubes_dir} is a folder: give a cube file (.nc), or evaluate every cube "
        f"in it with --cubes-dir {cubes_dir}.\n"
    )
    assert main(["evaluate", "--cubes-dir", str(cube), "--methods", "linear"]) == 2
    assert capsys.readouterr().err == (
        f"error: --cubes-dir {cube} is a file, not a folder: give the folder that holds the "
        f"cubes, or pass a single cube file with --cube {cube}.\n"
    )
    missing = tmp_path / "none"
    assert main(["evaluate", "--cubes-dir", str(missing), "--methods", "linear"]) == 2
    assert capsys.readouterr().err == (
        f"error: Cube folder not found: {missing}. Check the path, or pass --cube FILE.\n"
    )


def test_bench_measures_in_subprocesses_and_writes_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    done = _core(
        "bench", "--methods", "linear", "--sizes", "16,24", "--dates", "12", "--repeats", "1",
        "--queries", "5", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["machine"]["cpu"] and data["machine"]["cores"]
    assert [(r["case"]["size_px"], r["error"]) for r in data["results"]] == [(16, None), (24, None)]
    assert all(r["seconds"] > 0 and r["input_mib"] > 0 for r in data["results"])
    assert "cpu:" in done.stdout and "linear" in done.stdout


def test_a_bench_row_that_cannot_run_says_why_in_the_users_words(tmp_path) -> None:
    source = tmp_path / "not-a-cube.nc"
    source.write_text("a text file")
    done = _core(
        "bench", "--methods", "linear", "--sizes", "16", "--dates", "12", "--repeats", "1",
        "--source", str(source), "--json", str(tmp_path),
    )  # fmt: skip
    # A folder as --json: refused before any measuring.
    assert done.returncode == 2 and done.stderr.startswith(f"error: --json {tmp_path} is a folder")
    done = _core(
        "bench", "--methods", "linear", "--sizes", "16", "--dates", "12", "--repeats", "1",
        "--source", str(source),
    )  # fmt: skip
    assert done.returncode == 1  # a row failed
    row = next(line for line in done.stdout.splitlines() if line.startswith("linear"))
    assert f"error: Cannot read {source} as a NetCDF cube" in row
    assert "core.errors" not in row and "exit 1" not in row


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--timeout", "0"], "--timeout must be a positive number"),
        (["--sizes", "100000"], "larger than the largest field"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--steps", "0"], "--steps must be between 1"),
        (["--repeats", "0"], "--repeats must be 1 or more"),
    ],
)
def test_bench_numbers_it_cannot_run_with_are_refused_before_measuring(extra, message) -> None:
    done = _core("bench", "--methods", "linear", "--dates", "12", *extra)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_seen_must_name_a_method_evaluated(cubes_dir, capsys) -> None:
    cube = str(cubes_dir / "es-field_2019.nc")
    assert main(["evaluate", "--cube", cube, "--methods", "linear", "--seen", "modle=x"]) == 2
    assert capsys.readouterr().err == (
        "error: --seen names 'modle', which is not among --methods (linear): give --seen "
        "METHOD=CUBE,... for a method evaluated.\n"
    )


@pytest.mark.parametrize("command", ["evaluate", "bench"])
def test_a_wrong_device_or_checkpoint_is_refused_before_any_cube_is_scored(
    cubes_dir, tmp_path, command
) -> None:
    # Review 16: found only when the model first ran, after the baselines of other cubes (or
    # every baseline case of bench) had run for nothing; bench then exited 1, not 2.
    bad = tmp_path / "bad.pt"
    bad.write_text("not a model")
    cube = str(cubes_dir / "es-field_2019.nc")
    runs = {
        "evaluate": ["evaluate", "--cube", cube, "--methods", "linear,model"],
        "bench": ["bench", "--source", cube, "--methods", "linear,model", "--sizes", "8",
                  "--dates", "10", "--repeats", "1", "--no-trace"],
    }  # fmt: skip
    for extra, message in (
        (["--checkpoint", str(bad)], f"error: Cannot read the model checkpoint {bad}"),
        (["--device", "cuda"], "error: The device cuda was asked for"),
    ):
        if extra[1] == "cuda" and torch_sees_a_gpu():
            continue
        done = _core(*runs[command], *extra)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(message), done.stderr
        assert "es-field_2019:" not in done.stderr and done.stdout == ""  # nothing scored


def torch_sees_a_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_a_target_is_not_judged_on_a_handful_of_pixels(cubes_dir, tmp_path, capsys) -> None:
    # Review 18: a field of 3 x 3 px got "0.735 ok" on 4 hidden pixels, like a full cube.
    from core.cube import write_cube

    cube = read_cube(cubes_dir / "hu-alfold_2021.nc")
    write_cube(cube.isel(y=slice(60, 63), x=slice(60, 63)), tmp_path / "px3.nc")
    args = ["evaluate", "--cube", str(tmp_path / "px3.nc"), "--seed", "5"]
    assert main([*args, "--methods", "linear,whittaker,model", "--steps", "2"]) == 0
    table = capsys.readouterr().out
    judged = [line for line in table.splitlines() if " model " in line and "n/a" not in line]
    assert judged and all(line.rstrip().endswith("few") for line in judged), table
    assert "few: under 100 scored pixels or 2 frames; the ratio is noise there" in table


def test_two_cubes_of_one_name_are_refused(cubes_dir, tmp_path, capsys) -> None:
    # Review 18: both were 'h_one' in the rows, got the same draws, and the pooled rows said
    # "x1" without a ratio.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "field1.nc").symlink_to(cubes_dir / CUBES[0])
    (tmp_path / "b" / "field1.nc").symlink_to(cubes_dir / CUBES[1])
    args = ["evaluate", "--methods", "linear", "--cube", str(tmp_path / "a" / "field1.nc")]
    assert main([*args, "--cube", str(tmp_path / "b" / "field1.nc")]) == 2
    assert capsys.readouterr().err.startswith("error: Two cubes named 'field1' (")


def test_the_models_own_record_is_not_written_over(cubes_dir, tmp_path, capsys) -> None:
    # Review 18: 'evaluate --json NAME.json' replaced the training record of the model NAME.pt
    # it evaluated (only the .pt was protected).
    import shutil

    from core.config import DEFAULT_CHECKPOINT

    model = shutil.copy(DEFAULT_CHECKPOINT, tmp_path / "mine.pt")
    shutil.copy(DEFAULT_CHECKPOINT.with_suffix(".json"), tmp_path / "mine.json")
    before = (tmp_path / "mine.json").read_text()
    args = ["evaluate", "--cube", str(cubes_dir / CUBES[1]), "--methods", "linear,model"]
    assert main([*args, "--checkpoint", str(model), "--json", str(tmp_path / "mine.json")]) == 2
    assert "is the training record of the model this command uses" in capsys.readouterr().err
    assert (tmp_path / "mine.json").read_text() == before


def test_a_model_is_skipped_where_it_trained_not_on_every_cube_of_that_name(
    flanders_cube, tmp_path, capsys
) -> None:
    # Review 18: fields fetched from one unnamed file all carry its name as their site; a model
    # fine-tuned on one of them was skipped on the others as "seen in training".
    from core.cube import write_cube

    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir()
    other.mkdir()
    write_cube(flanders_cube.isel(y=slice(0, 32), x=slice(0, 32)).assign_attrs(site="field"),
               data / "trained.nc")  # fmt: skip
    write_cube(flanders_cube.isel(y=slice(32, 64), x=slice(32, 64)).assign_attrs(site="field"),
               other / "elsewhere.nc")  # fmt: skip
    model = tmp_path / "m.pt"
    argv = ["train", "--tiny", "--steps", "2", "--data", str(data), "--out", str(model)]
    assert main([*argv, "--threads", "1", "--validation-episodes", "4"]) == 0
    out = tmp_path / "eval.json"
    args = ["evaluate", "--methods", "linear,model", "--checkpoint", str(model), "--steps", "2"]
    args += ["--max-size", "16", "--json", str(out), "--cube", str(data / "trained.nc")]
    assert main([*args, "--cube", str(other / "elsewhere.nc")]) == 0
    capsys.readouterr()
    assert json.loads(out.read_text())["skipped_cubes"]["model"] == ["trained"]
