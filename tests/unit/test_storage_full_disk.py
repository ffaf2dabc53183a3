"""A full disk while writing a NetCDF file or a checkpoint: one OutputError line, nothing kept.

netCDF/HDF5 ("NetCDF: HDF error") and torch.save ("unexpected pos") lose the errno, so the
translation looks at the file system itself. The disk is a real full one: a 1 MiB tmpfs, which
needs root (mount); elsewhere these tests skip, as no unprivileged way to fill a real file system
is known here (/dev/full is a device, which atomic_output rightly refuses).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.cli import main
from core.cube import read_cube, write_cube
from core.errors import OutputError
from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.storage import atomic_output

FULL = r"Could not write .*: No space left on device\. Nothing partial was kept"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a real 1 MiB file system (smaller than every file written below)."""
    with small_disk(tmp_path / "full", "1m") as folder:
        yield folder


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` on a real file system of ``size`` (``mount -t tmpfs``); skips without root."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root here (mount -t tmpfs)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_model_saved_over_another_on_a_full_disk_leaves_the_other_in_place(
    tmp_path: Path,
) -> None:
    # Review 13: the model at --out was moved to NAME.previous.pt before the new one was
    # saved; with no room for the new one, nothing was left at NAME.pt ("Nothing partial was
    # kept"), and every command naming the model failed.
    import shutil

    from core.config import DEFAULT_CHECKPOINT
    from core.model.checkpoint import replace_checkpoint

    with small_disk(tmp_path / "models", "3m") as models:  # the 2 MB model, not two
        mine = models / "flanders.pt"
        shutil.copyfile(DEFAULT_CHECKPOINT, mine)
        shutil.copyfile(DEFAULT_CHECKPOINT.with_suffix(".json"), mine.with_suffix(".json"))
        before = mine.read_bytes()
        with pytest.raises(OutputError) as raised:
            replace_checkpoint(load_checkpoint(), mine)
        said = str(raised.value)
        assert said.startswith(f"Could not write {mine}: No space left on device"), said
        assert said.endswith("The model that was there is untouched.")
        assert mine.read_bytes() == before
        assert sorted(p.name for p in models.iterdir()) == ["flanders.json", "flanders.pt"]
        assert load_checkpoint(mine).weights_sha256 == load_checkpoint().weights_sha256


def test_a_cube_on_a_full_disk_is_an_output_error_and_leaves_nothing(
    cubes_dir: Path, full_disk: Path
) -> None:
    cube = read_cube(cubes_dir / "it-bolzano_2022-06.nc")  # 5.7 MB written
    with pytest.raises(OutputError, match=FULL):
        write_cube(cube, full_disk / "cube.nc")
    assert list(full_disk.iterdir()) == []


def test_a_checkpoint_on_a_full_disk_is_an_output_error_and_leaves_nothing(
    full_disk: Path,
) -> None:
    checkpoint = load_checkpoint()  # the shipped model: 2 MB
    with pytest.raises(OutputError, match=FULL):
        save_checkpoint(checkpoint, full_disk / "model.pt")
    assert list(full_disk.iterdir()) == []


def test_reconstruct_to_a_full_disk_says_so_in_one_line(
    cubes_dir: Path, full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = full_disk / "rec.nc"
    status = main(
        ["reconstruct", "--cube", str(cubes_dir / "it-bolzano_2022-06.nc"), "--start",
         "2022-06-02", "--end", "2022-06-04", "--method", "linear", "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"error: Could not write {out}: No space left")
    assert list(full_disk.iterdir()) == []


def test_a_library_error_with_space_left_is_not_called_a_full_disk(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="HDF error"), atomic_output(tmp_path / "c.nc") as tmp:
        tmp.write_bytes(b"\x89HDF")
        raise RuntimeError("NetCDF: HDF error")  # what netCDF4 says for many faults
    assert list(tmp_path.iterdir()) == []


def test_frames_on_a_full_disk_are_said_full_not_in_libtiffs_words(
    cubes_dir: Path, full_disk: Path
) -> None:
    # GDAL's "CPLE_AppDefinedError: TIFFAppendToStrip: Write error" was each batch field's
    # error on a full disk (review 5, F9).
    from core.cog import write_frame_stack
    from core.grid import grid_from_cube
    from core.reconstruct import reconstruct

    cube = read_cube(cubes_dir / "it-bolzano_2022-06.nc")
    frames = reconstruct(cube, cube["time_s2"].values[:3], "linear")
    # GDAL removes its temporary files before it raises: the disk may then look roomy again,
    # so the message names the failed write and asks whether the disk is full.
    with pytest.raises(
        OutputError,
        match=r"Could not write .*frames\.tif: (No space left on "
        r"device|the write failed \(.*Write error.*\): the disk may be full)",
    ):
        write_frame_stack(frames, full_disk / "frames.tif", grid=grid_from_cube(cube))
    assert list(full_disk.iterdir()) == []


def test_a_full_temporary_folder_fails_a_batch_field_instead_of_writing_blank_frames(
    cubes_dir: Path, full_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review 13: the frame stack is staged in the temporary folder; GDAL only logged the
    # blocks it could not write there, the COG copy read them as nodata, and the field was
    # "ok" with all-NaN frames and a marker vouching for them (later runs skipped it).
    import tempfile

    from shapely.geometry import box

    from core.batch import MARKER_FILE, BatchField, BatchRequest, Fetched, reconstruct_task
    from core.config import Settings
    from core.demo import to_lonlat
    from core.fetch import FetchResult
    from core.field import Field
    from core.grid import grid_from_cube

    cube = read_cube(cubes_dir / "it-bolzano_2022-06.nc")  # 320 x 320 px: 4.5 MB a date staged
    grid = grid_from_cube(cube)
    x0, y0, x1, y1 = grid.bounds
    field = Field(to_lonlat(box(x0 + 100, y0 + 100, x1 - 100, y1 - 100), grid.crs), "F")
    fetched = FetchResult(cube, grid, {"sentinel-2-l2a": 12}, {"s2": 12, "s1": 0}, "none", "")
    request = BatchRequest(start="2022-06-01", end="2022-06-30", every_days=30, method="linear")
    fingerprint = request.fingerprint(field, Settings())
    out = tmp_path / "out"
    monkeypatch.setattr(tempfile, "tempdir", str(full_disk))  # TMPDIR on the full disk
    item = BatchField(0, "f", "F", field)
    row = reconstruct_task(Fetched(fetched), item, request, str(out), fingerprint)
    assert row.status == "failed"
    assert row.error.startswith(
        f"Could not write the frames' working copy in {full_disk} (no space left on device)"
    ), row.error
    assert not (out / MARKER_FILE).exists() and not (out / "frames.tif").exists()
    monkeypatch.undo()  # room again: the field is made, frames and all
    row = reconstruct_task(Fetched(fetched), item, request, str(out), fingerprint)
    assert row.status == "ok" and (out / MARKER_FILE).exists()


def test_frames_on_a_full_disk_print_no_raw_libtiff_lines(cubes_dir: Path, full_disk: Path) -> None:
    # Review 13: beside the one clear error, libtiff's own default handler printed
    # "_tiffWriteProc: No space left on device." on standard error, a line per block. Its
    # handler is process-wide, so the write runs in a child process of its own.
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from core.cog import write_frame_stack
        from core.cube import read_cube
        from core.errors import OutputError
        from core.grid import grid_from_cube
        from core.reconstruct import reconstruct

        cube = read_cube({str(cubes_dir / "it-bolzano_2022-06.nc")!r})
        frames = reconstruct(cube, cube["time_s2"].values[:3], "linear")
        try:
            write_frame_stack(frames, Path({str(full_disk)!r}) / "frames.tif",
                              grid=grid_from_cube(cube))
        except OutputError as exc:
            print("said:", exc)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("said: Could not write"), child.stdout
    assert "_tiffWriteProc" not in child.stderr and "TIFF" not in child.stderr, child.stderr
    assert list(full_disk.iterdir()) == []
