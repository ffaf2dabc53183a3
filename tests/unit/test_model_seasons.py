"""The seasons south of the tropics: the network reads a date's day of year half a year on south
of the Tropic of Capricorn, so a southern field's season enters as a northern one's would."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.config import DEFAULT_CHECKPOINT
from core.cube import read_cube
from core.grid import cube_latitude
from core.model.checkpoint import load_checkpoint, save_checkpoint, with_config
from core.model.features import (
    HALF_YEAR_DAYS,
    S1_SEASON_CHANNELS,
    S2_SEASON_CHANNELS,
    SOUTHERN_SEASON_LATITUDE,
    s1_channels,
    s2_channels,
    season_channels,
    season_day_of_year,
    times_to_days_and_doy,
)
from core.model.inference import observed_fingerprint, prepare_series
from core.model.training import make_episode, series_from_cube
from core.reconstruct import ReconstructOptions, reconstruct
from core.season import fit_notes

HALF_YEAR = np.timedelta64(182, "D")


def _day_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Days between two days of year, around the year's end."""
    diff = np.abs(a - b) % 365.25
    return np.minimum(diff, 365.25 - diff)


def test_south_of_the_tropic_a_date_reads_as_the_date_half_a_year_on() -> None:
    times = np.arange("2021-01-01", "2022-12-31", 5, dtype="datetime64[D]").astype("datetime64[ns]")
    north = season_day_of_year(times + HALF_YEAR, 45.0)
    south = season_day_of_year(times, -35.0)
    assert _day_apart(south, north).max() <= 1.5  # 182 days against half a year, leap days
    # The tropics, the north and an unknown place keep the calendar.
    calendar = season_day_of_year(times, None)
    for latitude in (None, 50.0, 0.0, -3.4, SOUTHERN_SEASON_LATITUDE + 0.01):
        np.testing.assert_array_equal(season_day_of_year(times, latitude), calendar)
    assert _day_apart(season_day_of_year(times, -23.5), calendar).min() == pytest.approx(
        HALF_YEAR_DAYS, abs=0.5
    )
    days, doy = times_to_days_and_doy(times, -40.0)
    np.testing.assert_array_equal(doy, season_day_of_year(times, -40.0))
    assert np.all((doy >= 1.0) & (doy < 367.0))
    assert days[1] - days[0] == 5.0  # the days themselves are never moved


def moved_south(cube, shift=HALF_YEAR):
    """A northern UTM cube put in the southern zone of the same number (its northing, about 39
    degrees S for Flanders) with its dates ``shift`` later: the same field with the seasons of
    the south."""
    moved = cube.copy(deep=True)
    crs = str(cube.attrs["crs"])
    assert crs.startswith("EPSG:326")
    moved.attrs["crs"] = "EPSG:327" + crs[8:]
    moved = moved.assign_coords(time_s2=cube["time_s2"].values + shift)
    if "time_s1" in cube.coords:
        moved = moved.assign_coords(time_s1=cube["time_s1"].values + shift)
    return moved


@pytest.fixture(scope="module")
def flanders_c(cubes_dir):
    cube = read_cube(cubes_dir / "be-flanders-c_2018-2019.nc")
    return cube.isel(y=slice(0, 24), x=slice(0, 24), time_s2=slice(10, 30))


def test_a_cube_moved_south_gets_its_dates_read_half_a_year_on(flanders_c) -> None:
    south = moved_south(flanders_c)
    assert cube_latitude(flanders_c) > 50 and cube_latitude(south) < -38
    query = flanders_c["time_s2"].values[[2, 7]]
    north_frames = prepare_series(flanders_c, query).frames
    south_frames = prepare_series(south, query + HALF_YEAR).frames
    assert _day_apart(north_frames.doy, south_frames.doy).max() <= 1.5
    assert _day_apart(north_frames.s1_doy, south_frames.s1_doy).max() <= 1.5
    # Training and per-field tuning read cubes the same way.
    north_series, south_series = series_from_cube(flanders_c, "n"), series_from_cube(south, "s")
    assert _day_apart(north_series.doy, south_series.doy).max() <= 1.5
    assert _day_apart(north_series.s1_doy, south_series.s1_doy).max() <= 1.5


def test_the_shipped_model_reconstructs_a_field_moved_south_as_it_does_in_the_north(
    flanders_c,
) -> None:
    """Half a year later in the north the network is told another season and answers
    differently; moved south with it, it is told the same season and answers as before."""
    options = ReconstructOptions(
        checkpoint=DEFAULT_CHECKPOINT, device="cpu", blend_field=False, smooth_days=0
    )
    query = flanders_c["time_s2"].values[[3, 8, 12]]
    original = reconstruct(flanders_c, query, "model", options)
    later = reconstruct(
        moved_south(flanders_c).assign_attrs(crs=flanders_c.attrs["crs"]),
        query + HALF_YEAR,
        "model",
        options,
    )
    south = reconstruct(moved_south(flanders_c), query + HALF_YEAR, "model", options)
    hidden = ~flanders_c["valid"].sel(time_s2=query).values.astype(bool)  # regenerated pixels
    cells = np.broadcast_to(hidden[:, None], original["s2"].shape) & np.isfinite(original["s2"])
    moved_later = np.abs(later["s2"].values - original["s2"].values)[cells].mean()
    moved_south_by = np.abs(south["s2"].values - original["s2"].values)[cells].mean()
    assert moved_later > 0.002  # the season matters to the network
    assert moved_south_by < 0.2 * moved_later
    assert "model_season_shift_days" not in original.attrs
    assert "model_season_shift_days" not in later.attrs
    assert south.attrs["model_season_shift_days"] == HALF_YEAR_DAYS
    notes = fit_notes(south.attrs)
    assert any(n.startswith("Seasons: this field lies at 39.") for n in notes), notes
    assert not any(n.startswith("Seasons") for n in fit_notes(original.attrs))


def test_a_field_tuned_in_the_north_is_not_taken_for_the_same_field_moved_south(flanders_c) -> None:
    """The per-field cache of tuned networks is keyed by what tuning reads, the season too."""
    later = moved_south(flanders_c).assign_attrs(crs=flanders_c.attrs["crs"])
    assert observed_fingerprint(later) != observed_fingerprint(moved_south(flanders_c))
    assert observed_fingerprint(flanders_c) == observed_fingerprint(flanders_c.copy(deep=True))


def test_season_channels_are_the_day_of_year_s_sine_and_cosine_or_zero_when_withheld() -> None:
    doy = np.array([1.0, 91.3, np.nan, 274.0])
    pair = season_channels(doy)
    assert pair.shape == (4, 2) and pair.dtype == np.float32
    angle = 2 * np.pi * doy[[0, 1, 3]] / 365.25
    np.testing.assert_allclose(pair[[0, 1, 3], 0], np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(pair[[0, 1, 3], 1], np.cos(angle), atol=1e-6)
    np.testing.assert_array_equal(pair[2], [0.0, 0.0])  # withheld: off the unit circle


def test_the_season_channel_slices_hold_the_day_of_year(flanders_c) -> None:
    query = flanders_c["time_s2"].values[[2, 7]]
    frames = prepare_series(flanders_c, query).frames
    s2, _ = s2_channels(frames, smooth_features=True)
    s1 = s1_channels(frames)
    assert frames.s1.shape[0] > 0
    np.testing.assert_array_equal(s2[:, S2_SEASON_CHANNELS, 0, 0], season_channels(frames.doy))
    np.testing.assert_array_equal(s1[:, S1_SEASON_CHANNELS, 0, 0], season_channels(frames.s1_doy))


def test_season_dropout_withholds_an_episode_s_whole_calendar_and_nothing_else(flanders_c) -> None:
    series = series_from_cube(flanders_c, "c")
    kwargs = dict(smooth_features=True, long_gap=True)
    withheld = kept = 0
    for seed in range(12):
        plain = make_episode(series, 12, 16, np.random.default_rng(seed), 0.0, **kwargs)
        zero = make_episode(
            series, 12, 16, np.random.default_rng(seed), 0.0, season_dropout=0.0, **kwargs
        )
        if plain is None:
            continue
        # At 0 no random number is drawn for it: the episode is exactly the one without.
        np.testing.assert_array_equal(zero.inputs.s2, plain.inputs.s2)
        np.testing.assert_array_equal(zero.truth, plain.truth)
        always = make_episode(
            series, 12, 16, np.random.default_rng(seed), 0.0, season_dropout=1.0, **kwargs
        )
        assert np.all(always.inputs.s2[:, S2_SEASON_CHANNELS] == 0)
        assert always.inputs.s1.shape[0] > 0
        assert np.all(always.inputs.s1[:, S1_SEASON_CHANNELS] == 0)
        # Against an episode that draws the same numbers and keeps its calendar: the same
        # window, crop, hidden pixels and every other channel.
        rarely = make_episode(
            series, 12, 16, np.random.default_rng(seed), 0.0, season_dropout=1e-12, **kwargs
        )
        assert np.any(rarely.inputs.s2[:, S2_SEASON_CHANNELS] != 0)
        np.testing.assert_array_equal(always.truth, rarely.truth)
        others = np.ones(always.inputs.s2.shape[1], bool)
        others[S2_SEASON_CHANNELS] = False
        np.testing.assert_array_equal(always.inputs.s2[:, others], rarely.inputs.s2[:, others])
        radar = slice(0, S1_SEASON_CHANNELS.start)
        np.testing.assert_array_equal(always.inputs.s1[:, radar], rarely.inputs.s1[:, radar])
        half = make_episode(
            series, 12, 16, np.random.default_rng(seed), 0.0, season_dropout=0.5, **kwargs
        )
        if half is not None:
            if np.all(half.inputs.s2[:, S2_SEASON_CHANNELS] == 0):
                withheld += 1
            else:
                kept += 1
    assert withheld >= 2 and kept >= 2


def test_a_network_without_the_calendar_answers_the_same_half_a_year_later(
    flanders_c, tmp_path
) -> None:
    """``ModelConfig.day_of_year`` False: the dates' distances are all the network reads of
    time, so the same series half a year later gets the same answer (the shipped network's
    differs, see above)."""
    shipped = load_checkpoint(DEFAULT_CHECKPOINT)
    path = tmp_path / "no-calendar.pt"
    save_checkpoint(with_config(shipped, replace(shipped.config, day_of_year=False)), path)
    assert load_checkpoint(path).config.day_of_year is False
    assert shipped.config.day_of_year is True  # checkpoints from before the option read it
    query = flanders_c["time_s2"].values[[3, 8, 12]]
    later_cube = moved_south(flanders_c).assign_attrs(crs=flanders_c.attrs["crs"])
    hidden = ~flanders_c["valid"].sel(time_s2=query).values.astype(bool)
    moved = {}
    for name, checkpoint in (("shipped", DEFAULT_CHECKPOINT), ("withheld", str(path))):
        options = ReconstructOptions(
            checkpoint=checkpoint, device="cpu", blend_field=False, smooth_days=0
        )
        original = reconstruct(flanders_c, query, "model", options)
        later = reconstruct(later_cube, query + HALF_YEAR, "model", options)
        cells = np.broadcast_to(hidden[:, None], original["s2"].shape) & np.isfinite(original["s2"])
        moved[name] = np.abs(later["s2"].values - original["s2"].values)[cells].mean()
    assert moved["shipped"] > 0.002
    assert moved["withheld"] < 1e-5
    # South of the tropics such a network gets no note that its dates were read half a year
    # on: it reads no dates' seasons at all.
    options = ReconstructOptions(checkpoint=str(path), device="cpu", blend_field=False)
    south = reconstruct(moved_south(flanders_c), query + HALF_YEAR, "model", options)
    assert "model_season_shift_days" not in south.attrs
    assert not any(n.startswith("Seasons") for n in fit_notes(south.attrs))
