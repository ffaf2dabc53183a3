"""Clouds the scene mask missed (core.screening): hand-written series one can check by eye,
then the real cubes' frames where the mask missed most."""

from __future__ import annotations

import numpy as np
import pytest

from core.reconstruct import ReconstructOptions, reconstruct
from core.screening import NEIGHBOUR_DAYS, RISE, missed_clouds, screen_cube


def series(rows: list[list[float]]) -> np.ndarray:
    """One pixel's series (T, B, 1, 1) from rows of band values (NaN: not clear)."""
    return np.array(rows, dtype=np.float32)[:, :, None, None]


DAYS = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
FLAT = [0.05, 0.08, 0.30]  # blue-ish, red-ish, NIR-ish


def flagged(rows: list[list[float]], days: np.ndarray = DAYS) -> list[bool]:
    return missed_clouds(series(rows), days)[:, 0, 0].tolist()


def test_brighter_in_every_band_than_both_sides_is_a_missed_cloud() -> None:
    hazy = [v + 0.05 for v in FLAT]
    assert flagged([FLAT, FLAT, hazy, FLAT, FLAT]) == [False, False, True, False, False]
    # Just over the rise in every band still counts; at or under it in one band does not.
    assert flagged([FLAT, FLAT, [v + RISE + 0.002 for v in FLAT], FLAT, FLAT])[2]
    barely = [FLAT[0] + 0.05, FLAT[1] + 0.05, FLAT[2] + RISE - 0.005]
    assert not flagged([FLAT, FLAT, barely, FLAT, FLAT])[2]


def test_what_fields_do_is_not_a_cloud() -> None:
    # Harvest or senescence: visible up, NIR down. A growing crop: NIR up, red down.
    harvest = [FLAT[0] + 0.05, FLAT[1] + 0.08, FLAT[2] - 0.10]
    growth = [FLAT[0] - 0.01, FLAT[1] - 0.03, FLAT[2] + 0.15]
    assert not any(flagged([FLAT, FLAT, harvest, FLAT, FLAT]))
    assert not any(flagged([FLAT, FLAT, growth, FLAT, FLAT]))


def test_only_between_clear_neighbours_near_enough_in_time() -> None:
    hazy = [v + 0.1 for v in FLAT]
    # At the ends of the series there is only one side to compare with.
    assert flagged([hazy, FLAT, FLAT, FLAT, hazy]) == [False] * 5
    # Neighbours farther than NEIGHBOUR_DAYS on one side: a field may change that much.
    far = np.array([0.0, 1.0, 1.0 + NEIGHBOUR_DAYS + 1, 2 * NEIGHBOUR_DAYS + 2, 80.0])
    nan = [np.nan] * 3
    assert not flagged([FLAT, nan, hazy, FLAT, FLAT], far)[2]
    assert flagged([FLAT, FLAT, hazy, FLAT, FLAT], far * 0 + DAYS)[2]
    # Cloudy neighbours do not count: the comparison skips to the clear ones.
    assert flagged([FLAT, nan, hazy, nan, FLAT]) == [False, False, True, False, False]


def test_an_absent_band_is_left_out_and_a_clouded_frame_is_not_flagged_again() -> None:
    absent = [[*FLAT, np.nan] for _ in range(5)]
    absent[2] = [*(v + 0.05 for v in FLAT), np.nan]
    assert flagged(absent) == [False, False, True, False, False]
    nan = [np.nan] * 3
    assert flagged([FLAT, FLAT, nan, FLAT, FLAT]) == [False] * 5


def test_the_real_frames_with_white_blobs_labelled_clear_are_screened(cubes_dir) -> None:
    from core.cube import read_cube

    cube = read_cube(cubes_dir / "be-flanders-c_2018-2019.nc")
    screened_cube, screening = screen_cube(cube)
    day = cube["time_s2"].values.astype("datetime64[D]")
    frame = int(np.flatnonzero(day == np.datetime64("2018-10-06"))[0])
    clear = cube["valid"].values[frame].astype(bool)
    assert screening.screened[frame].sum() > 0.5 * clear.sum()
    # Only clear pixels are ever screened, and the reflectance itself is left as it was.
    assert not (screening.screened & ~cube["valid"].values.astype(bool)).any()
    after = screened_cube["valid"].values.astype(bool)
    assert (after == (cube["valid"].values.astype(bool) & ~screening.screened)).all()
    np.testing.assert_array_equal(screened_cube["s2"].values, cube["s2"].values)
    assert 0.0 < screening.share < 0.15
    assert screening.summary().startswith(f"Screened out {screening.count:,} pixel observations")


@pytest.mark.parametrize("method", ["linear", "whittaker"])
def test_a_screened_pixel_is_reconstructed_not_kept(flanders_cube, method: str) -> None:
    cube = flanders_cube.isel(time_s2=slice(55, 80))
    _, screening = screen_cube(cube)
    frame = int(np.argmax(screening.screened.sum(axis=(1, 2))))
    assert screening.screened[frame].sum() > 100
    date = cube["time_s2"].values[frame : frame + 1]
    options = ReconstructOptions(screen_clouds=True)
    out = reconstruct(cube, date, method, options)["s2"].values[0]
    plain = reconstruct(cube, date, method, ReconstructOptions())["s2"].values[0]
    observed = cube["s2"].values[frame]
    hazy = screening.screened[frame]
    kept = cube["valid"].values[frame].astype(bool) & ~hazy
    bands = np.isfinite(observed).any(axis=(1, 2))
    np.testing.assert_array_equal(plain[:, hazy][bands], observed[:, hazy][bands])
    assert np.abs(out[:, hazy][bands] - observed[:, hazy][bands]).mean() > RISE
    np.testing.assert_array_equal(out[:, kept][bands], observed[:, kept][bands])


def test_the_yardstick_can_leave_missed_clouds_out_of_its_truth(cubes_dir) -> None:
    from core.cube import read_cube
    from core.evaluate import Protocol, evaluate

    cube = read_cube(cubes_dir / "be-flanders-c_2018-2019.nc")
    runs = {
        clean: evaluate(
            [("be-flanders-c", cube)],
            ["linear"],
            Protocol(seed=0, max_size=32, screened_truth=clean),
        )
        for clean in (False, True)
    }
    for task in ("missing", "cloud", "gap"):
        plain, clean = (
            next(r.scores for r in runs[c].rows if r.task == task and r.scores is not None)
            for c in (False, True)
        )
        assert clean.n_frames == plain.n_frames  # the same draws
        assert 0 < clean.n_values < plain.n_values  # fewer truth pixels: the missed clouds out
