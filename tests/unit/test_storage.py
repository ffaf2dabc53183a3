"""Where results may be written: checked before any work, and never over a device or the input."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from core.errors import OutputError
from core.storage import TEMP_PREFIX, atomic_output, check_output_folder, check_output_path


def test_a_new_file_in_new_folders_passes_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "curve.csv"
    assert check_output_path(target) == target
    assert list(tmp_path.iterdir()) == []  # neither the folders nor the probe file are left


def test_an_existing_file_may_be_replaced(tmp_path: Path) -> None:
    target = tmp_path / "curve.csv"
    target.write_text("old")
    assert check_output_path(target) == target
    assert [p.name for p in tmp_path.iterdir()] == ["curve.csv"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: "", "--out is empty"),
        (lambda tmp: "  ", "--out is empty"),
        (lambda tmp: tmp, "is a folder: give a file name inside it"),
        (lambda tmp: f"{tmp}/new/", "names a folder (it ends in '/')"),
        (lambda tmp: "/dev/null", "is a device or a process's stream, not a file"),
        (lambda tmp: _a_fifo(tmp), "is not a regular file (a device, pipe or socket)"),
        (lambda tmp: _a_file(tmp) / "curve.csv", "is a file, so nothing can be created under"),
        (lambda tmp: _a_file(tmp) / "x" / "curve.csv", "is a file, so nothing can be created"),
        (lambda tmp: "/dev/stdout", "is a device or a process's stream, not a file"),
        (lambda tmp: "/proc/self/fd/1", "is a device or a process's stream, not a file"),
    ],
)
def test_unusable_outputs_are_refused_with_what_to_do(tmp_path: Path, make, message) -> None:
    with pytest.raises(OutputError, match=r"^--out") as caught:
        check_output_path(make(tmp_path))
    assert message in str(caught.value)


def test_a_name_promising_another_format_is_refused(tmp_path: Path) -> None:
    made_by = {"CSV": "ndvi"}
    for name in ("frames.csv", "frames.JSON", "frames.tif"):
        with pytest.raises(OutputError, match=r"but this command writes a NetCDF file") as caught:
            check_output_path(tmp_path / name, writes="NetCDF", made_by=made_by)
        # The command that writes the format asked for is named for that format only.
        said = str(caught.value)
        assert f"e.g. {tmp_path / 'frames.nc'}" in said
        assert ("(CSV comes from ndvi)" in said) == name.endswith(".csv"), said
    with pytest.raises(OutputError, match=r"ends in \.nc, .* writes a CSV file: .*curve\.csv"):
        check_output_path(tmp_path / "curve.nc", writes="CSV")
    for name in ("frames.nc", "frames.NC4", "frames", "frames.out", "frames.2019"):
        assert check_output_path(tmp_path / name, writes="NetCDF") == tmp_path / name
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_written_is_refused(locked: Path) -> None:
    for target in (locked / "curve.csv", locked / "new" / "curve.csv"):
        with pytest.raises(OutputError, match=r"cannot write in the folder .*locked"):
            check_output_path(target)


def _a_fifo(folder: Path) -> Path:
    path = folder / "pipe"
    os.mkfifo(path)
    return path


def _a_file(folder: Path) -> Path:
    path = folder / "field.geojson"
    path.write_text("{}")
    return path


def test_the_input_itself_is_refused_also_through_a_link(tmp_path: Path) -> None:
    cube = tmp_path / "cube.nc"
    cube.write_bytes(b"cube")
    link = tmp_path / "link.nc"
    link.symlink_to(cube)
    for out in (cube, link, tmp_path / "." / "cube.nc"):
        with pytest.raises(OutputError, match="is also the input"):
            check_output_path(out, inputs=[tmp_path / "other.nc", cube])
    assert cube.read_bytes() == b"cube"


def test_the_option_is_named_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"^--json .* is a folder"):
        check_output_path(tmp_path, option="--json")


def test_a_results_folder_may_exist_or_not_but_not_be_a_file(tmp_path: Path, locked) -> None:
    assert check_output_folder(tmp_path) == tmp_path
    assert check_output_folder(tmp_path / "new" / "results") == tmp_path / "new" / "results"
    assert not (tmp_path / "new").exists()
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(_a_file(tmp_path))
    with pytest.raises(OutputError, match="cannot write in the folder"):
        check_output_folder(locked / "results")


def test_atomic_output_never_renames_over_a_device_or_a_pipe(tmp_path: Path) -> None:
    for special in ("/dev/null", "/dev/stdout", _a_fifo(tmp_path)):
        with pytest.raises(OutputError, match="not a"), atomic_output(special) as tmp:
            tmp.write_text("x")  # pragma: no cover - never reached
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert os.path.islink("/dev/stdout")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)
    assert not list(Path("/dev").glob(f"{TEMP_PREFIX}*"))


def test_atomic_output_through_a_link_replaces_the_file_and_keeps_the_link(tmp_path) -> None:
    real = tmp_path / "data" / "curve.csv"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    with atomic_output(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and link.read_text() == "new" and real.read_text() == "new"


def test_a_full_disk_while_writing_is_an_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "cube.nc"
    target.write_text("old")
    full = pytest.raises(OutputError, match=r"Could not write .*cube\.nc: No space left")
    with full, atomic_output(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cube.nc"]


def test_other_errors_while_writing_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad data"), atomic_output(tmp_path / "x.csv"):
        raise ValueError("bad data")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_removed_while_its_file_is_written_is_said_so(tmp_path: Path) -> None:
    # Review 13: the sidecar's rename raised a FileNotFoundError traceback, and a NetCDF
    # write said "Permission denied" (netCDF4's word for the vanished file).
    import shutil

    from core.cube import read_cube, write_cube
    from tests.unit.test_cache import make_result

    folder = tmp_path / "cache"
    gone = r"Could not write .*: its folder .*cache was removed while the file was being written"
    with pytest.raises(OutputError, match=gone), atomic_output(folder / "entry.json") as tmp:
        tmp.write_text("{}")
        shutil.rmtree(folder)
    cube = make_result().cube
    with pytest.raises(OutputError, match=gone), atomic_output(folder / "cube.nc") as tmp:
        shutil.rmtree(folder)
        cube.to_netcdf(tmp)  # as write_cube's library call meets it
    write_cube(cube, folder / "cube.nc")  # run again: made anew
    assert read_cube(folder / "cube.nc").sizes == cube.sizes


def test_make_folder_says_why_a_folder_cannot_be_made(tmp_path: Path, locked: Path) -> None:
    from core.storage import make_folder

    assert make_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert make_folder(tmp_path / "a") == tmp_path / "a"  # already there
    with pytest.raises(OutputError, match=r"^Could not create the folder .*locked/new \(") as no:
        make_folder(locked / "new")
    assert "Errno" not in str(no.value)
    with pytest.raises(OutputError, match=r"\(a file is in the way\)"):
        make_folder(_a_file(tmp_path) / "sub")
