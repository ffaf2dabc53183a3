"""Haze the scene mask missed (core.screening): hand-written series one can check by eye, a
parcel edge shifted by a pixel, then the real cubes' haze and harvests."""

from __future__ import annotations

import numpy as np
import pytest

from core.cube import S2_BANDS
from core.reconstruct import ReconstructOptions, reconstruct
from core.screening import (
    BLUISH,
    FLOOR_SCENE_SHARE,
    NEARBY_PX,
    NEARBY_SHARE,
    NEIGHBOUR_DAYS,
    RED_FLOOR,
    RISE,
    SPARSE_SCENE_SHARE,
    haze_nearby,
    missed_haze,
    red_floor,
    screen_cube,
    sparse_scenes,
)

DAYS = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
CANOPY = {"B02": 0.04, "B03": 0.07, "B04": 0.05, "B08": 0.35}
"""A green crop's reflectance, in four of the ten bands (the others absent, as in the
4-band cubes)."""


def frame(values: dict[str, float] | None) -> np.ndarray:
    """One pixel's bands (10,) in S2_BANDS order; None: not clear."""
    out = np.full(len(S2_BANDS), np.nan, dtype=np.float32)
    for band, value in (values or {}).items():
        out[S2_BANDS.index(band)] = value
    return out


def raised(by: dict[str, float], base: dict[str, float] = CANOPY) -> dict[str, float]:
    return {band: value + by.get(band, 0.0) for band, value in base.items()}


HAZE = raised({"B02": 0.06, "B03": 0.06, "B04": 0.06, "B08": 0.05})
"""Haze and thin cloud: light added about evenly, blue as much as red."""


def flagged(frames: list[dict[str, float] | None], days: np.ndarray = DAYS) -> list[bool]:
    series = np.stack([frame(f) for f in frames])[:, :, None, None]
    return missed_haze(series, np.isfinite(series).any(axis=1), days)[:, 0, 0].tolist()


def test_a_bluish_spike_in_every_band_is_haze() -> None:
    c = CANOPY
    assert flagged([c, c, HAZE, c, c]) == [False, False, True, False, False]
    # Just over the rise in every band still counts; under it in one band does not.
    assert flagged([c, c, raised({b: RISE + 0.005 for b in c}), c, c])[2]
    assert not flagged([c, c, raised({"B02": 0.06, "B03": 0.06, "B04": 0.06, "B08": 0.02}), c, c])[
        2
    ]


def test_what_fields_do_is_not_haze() -> None:
    c = CANOPY
    # Soil or straw brightens red more than blue: a spike in every band, but not bluish.
    straw = raised({"B02": 0.04, "B03": 0.06, "B04": 0.04 / BLUISH + 0.01, "B08": 0.05})
    assert not any(flagged([c, c, straw, c, c]))
    # A harvest that stays bright is a step: brighter than the chord, not than what follows.
    assert not any(flagged([c, c, HAZE, HAZE, HAZE]))
    # Growth: NIR up, red down.
    assert not any(flagged([c, c, raised({"B04": -0.02, "B08": 0.15}), c, c]))


def test_only_between_clear_neighbours_near_enough_in_time() -> None:
    c = CANOPY
    # At the ends of the series there is only one side to compare with.
    assert flagged([HAZE, c, c, c, HAZE]) == [False] * 5
    # A neighbour farther than NEIGHBOUR_DAYS on one side: a field may change that much.
    far = np.array([0.0, 1.0, 1.0 + NEIGHBOUR_DAYS + 1, 2 * NEIGHBOUR_DAYS + 2, 80.0])
    assert not flagged([c, None, HAZE, c, c], far)[2]
    # Cloudy neighbours do not count: the comparison skips to the clear ones.
    assert flagged([c, None, HAZE, None, c]) == [False, False, True, False, False]
    # A clouded frame is not screened again.
    assert flagged([c, c, None, c, c]) == [False] * 5


def test_a_scene_shifted_by_a_pixel_is_not_haze_but_haze_over_it_is() -> None:
    """A dark field beside a bright one; on the middle date the scene lies one pixel to the
    side, so the dark field's edge pixel shows the bright field: a spike there in every band,
    bluish even (the bright field is whitish), which a screen without the shift test takes
    out."""
    bright = raised({"B02": 0.15, "B03": 0.15, "B04": 0.15, "B08": 0.05})
    row = [CANOPY] * 4 + [bright] * 4
    shifted = row[1:] + row[-1:]
    cube = np.stack([[[frame(v) for v in r]] for r in (row, row, shifted, row, row)])
    cube = cube.transpose(0, 3, 1, 2)  # (T, B, 1, 8)
    clear = np.ones((5, 1, 8), dtype=bool)
    assert not missed_haze(cube, clear, DAYS).any()
    # Haze over the whole shifted scene is screened, inside the dark field at least.
    hazy = cube.copy()
    hazy[2] += np.where(np.isfinite(cube[2]), np.float32(0.06), np.float32(np.nan))
    screened = missed_haze(hazy, clear, DAYS)
    # Only the scene mask's clear pixels are ever screened.
    masked = clear.copy()
    masked[2, 0, 0] = False
    assert not missed_haze(hazy, masked, DAYS)[2, 0, 0]
    assert screened[2, 0, :3].all() and not screened[[0, 1, 3, 4]].any()


def test_imagery_without_blue_is_not_screened() -> None:
    c = {b: v for b, v in CANOPY.items() if b != "B02"}
    h = {b: v for b, v in HAZE.items() if b != "B02"}
    assert flagged([c, c, h, c, c]) == [False] * 5


def test_the_real_haze_is_screened_and_the_real_harvests_are_not(cubes_dir) -> None:
    from core.cube import read_cube

    def share_on(name: str, day: str) -> float:
        cube = read_cube(cubes_dir / name)
        _, screening = screen_cube(cube)
        days = cube["time_s2"].values.astype("datetime64[D]")
        t = int(np.flatnonzero(days == np.datetime64(day))[0])
        clear = cube["valid"].values[t].astype(bool)
        assert not (screening.screened & ~cube["valid"].values.astype(bool)).any()
        return float(screening.screened[t].sum() / clear.sum())

    # Haze over much of a frame Sen2Cor called clear (pictures in the rule).
    assert share_on("be-flanders-a_2017-2018.nc", "2018-07-13") > 0.2
    # Cereal harvested between two acquisitions: whole parcels brighter in every band.
    assert share_on("hu-alfold_2021.nc", "2021-07-15") < 0.002
    # A cube without blue (the 20 m bands only) is said so, not screened.
    cube = read_cube(cubes_dir / "be-flanders-c_2018-2019.nc")
    same, screening = screen_cube(cube)
    assert not screening.applicable and screening.count == 0
    np.testing.assert_array_equal(same["valid"].values, cube["valid"].values)
    assert "lacks the blue or red band" in screening.summary()


@pytest.mark.parametrize("method", ["linear", "whittaker"])
def test_a_screened_pixel_is_reconstructed_not_kept(flanders_cube, method: str) -> None:
    cube = flanders_cube.isel(time_s2=slice(55, 80))
    screened_cube, screening = screen_cube(cube, nearby=True)
    frame_index = int(np.argmax(screening.screened.sum(axis=(1, 2))))
    assert screening.screened[frame_index].sum() > 100
    assert f"Screened out {screening.haze_count:,} pixel observations" in screening.summary()
    # the page's notes say it in one plain sentence, with the share of all clear observations
    assert screening.headline() == (
        f"{screening.count:,} pixel observations the scene mask called clear "
        f"({screening.count / screening.clear_before:.1%} of them) were taken for haze or "
        "cloud it missed, or for no view of the ground, and are reconstructed, not kept as "
        "observed (how: in the details below)."
    )
    # Screened once, never again: a second pass would find new spikes among what is left, and
    # a Run's later reconstructions (a download, a query date) would differ from its frames.
    again, second = screen_cube(screened_cube)
    assert again is screened_cube and second.count == 0
    assert second.summary() == screening.summary()
    assert second.headline() == screening.summary()  # nothing new taken out: what was said
    np.testing.assert_array_equal(screened_cube["s2"].values, cube["s2"].values)
    date = cube["time_s2"].values[frame_index : frame_index + 1]
    around_too = ReconstructOptions(screen_haze=True, screen_haze_nearby=True)
    out = reconstruct(cube, date, method, around_too)["s2"].values[0]
    plain = reconstruct(cube, date, method, ReconstructOptions())["s2"].values[0]
    observed = cube["s2"].values[frame_index]
    hazy = screening.screened[frame_index]
    around = screening.nearby[frame_index]
    assert around.sum() > 100  # thinner haze left around it, taken too
    kept = cube["valid"].values[frame_index].astype(bool) & ~hazy & ~around
    bands = np.isfinite(observed).any(axis=(1, 2))
    np.testing.assert_array_equal(plain[:, hazy][bands], observed[:, hazy][bands])
    assert np.abs(out[:, hazy][bands] - observed[:, hazy][bands]).mean() > RISE
    np.testing.assert_array_equal(plain[:, around][bands], observed[:, around][bands])
    assert not np.array_equal(out[:, around][bands], observed[:, around][bands])
    np.testing.assert_array_equal(out[:, kept][bands], observed[:, kept][bands])
    # Not asked for (the default: it failed its rule), the pixels around the haze are kept.
    alone = reconstruct(cube, date, method, ReconstructOptions(screen_haze=True))["s2"].values[0]
    np.testing.assert_array_equal(alone[:, around][bands], observed[:, around][bands])
    assert np.abs(alone[:, hazy][bands] - observed[:, hazy][bands]).mean() > RISE


def test_the_clear_pixels_around_screened_haze_are_taken_with_it() -> None:
    size = 2 * NEARBY_PX + 1
    clear = np.ones((3, 80, 80), dtype=bool)
    screened = np.zeros_like(clear)
    screened[0, 10:15, 10:15] = True  # 25 of a window's up to 1,089 clear pixels: over 2 %
    screened[2, 40, 40] = True  # a single pixel: never 2 % of a full window
    around = haze_nearby(screened, clear)
    assert not around[1].any() and not around[2].any()  # nothing screened, or too little
    assert not (around & screened).any()  # what the screen took is not counted twice
    # Taken: clear pixels whose window holds the whole patch (25 of 1,089: 2.3 %), or most of
    # it where the cube's edge cuts the window (25 of 289); left: one that sees a row of it
    # (5 of 957) and one too far to see any.
    assert around[0, 0, 0] and around[0, 10 + NEARBY_PX, 10 + NEARBY_PX]
    assert not around[0, 14 + NEARBY_PX, 12] and not around[0, 79, 79]
    # The share is of the acquisition's clear pixels in the window: cloud does not dilute it.
    one = np.zeros((1, size, size), dtype=bool)
    one[0, 0, :22] = True  # 22 of the 1,089 pixels of the centre's window: 2.02 %
    full = np.ones_like(one)
    assert haze_nearby(one, full)[0, NEARBY_PX, NEARBY_PX]
    one[0, 0, 21] = False  # 21: 1.93 %
    assert not haze_nearby(one, full)[0, NEARBY_PX, NEARBY_PX]
    mostly_cloudy = np.zeros_like(one)
    mostly_cloudy[0, :2, :] = True  # 66 clear pixels, 21 of them screened
    mostly_cloudy[0, NEARBY_PX, NEARBY_PX] = True
    assert haze_nearby(one, mostly_cloudy)[0, NEARBY_PX, NEARBY_PX]
    assert not haze_nearby(one, mostly_cloudy)[0, NEARBY_PX + 1, NEARBY_PX]  # cloudy: not judged
    assert NEARBY_SHARE == 0.02


def test_the_real_haze_is_taken_with_its_surroundings_and_nothing_where_there_is_none(
    cubes_dir,
) -> None:
    """The probe's finding (hazy_scene_probe.txt), on the pixels the extension takes: they
    read bluer than their own series, as thin haze does; a cube without haze loses none."""
    from core.cube import read_cube
    from core.model.features import bracketing_indices
    from core.timeline import to_days

    cube = read_cube(cubes_dir / "be-flanders-a_2017-2018.nc")
    out, screening = screen_cube(cube, nearby=True)
    spike_only, alone = screen_cube(cube)  # off unless asked: it failed its rule
    np.testing.assert_array_equal(alone.screened, screening.screened)  # the same spikes
    assert alone.nearby is None and screening.nearby_count > 1000
    np.testing.assert_array_equal(
        out["valid"].values.astype(bool),
        spike_only["valid"].values.astype(bool) & ~screening.nearby,
    )
    assert screening.count == alone.count + screening.nearby_count
    assert f"So are the {screening.nearby_count:,} clear ones around them" in screening.summary()
    # Blue against the chord of the same pixel's observations the screen kept.
    kept = out["valid"].values.astype(bool)
    s2, days = cube["s2"].values, to_days(cube["time_s2"].values)
    prev, nxt = bracketing_indices(kept, exclusive=True)
    t, y, x = np.nonzero(screening.nearby & (prev >= 0) & (nxt < len(days)))
    before, after = prev[t, y, x], nxt[t, y, x]
    weight = (days[t] - days[before]) / (days[after] - days[before])
    blue = S2_BANDS.index("B02")
    chord = s2[before, blue, y, x] * (1 - weight) + s2[after, blue, y, x] * weight
    assert np.median(s2[t, blue, y, x] - chord) > 0.02
    # hu-alfold's 17 screened pixels are scattered: nothing around them is taken.
    _, none = screen_cube(read_cube(cubes_dir / "hu-alfold_2021.nc"), nearby=True)
    assert none.haze_count > 0 and none.nearby_count == 0
    assert "So are" not in none.summary()
    assert not ReconstructOptions().screen_haze_nearby  # haze_nearby_rule.txt: failed


def scenes_cube(shares: list[float], imaged: list[float] | None = None) -> tuple:
    """Reflectance (T, B, 10, 10) and clear (T, 10, 10): acquisition t images its first
    ``imaged[t]`` share of the pixels (all by default), of which its first ``shares[t]`` of the
    whole grid are clear."""
    n = len(shares)
    s2 = np.full((n, len(S2_BANDS), 10, 10), np.nan, dtype=np.float32)
    clear = np.zeros((n, 10, 10), dtype=bool)
    for t, share in enumerate(shares):
        seen = round(100 * (imaged or [1.0] * n)[t])
        s2[t, :4].reshape(4, -1)[:, :seen] = 0.1
        clear[t].reshape(-1)[: round(100 * share)] = True
    return s2, clear


def test_a_mostly_cloudy_scene_is_dropped_whole_and_a_partly_clear_one_is_kept() -> None:
    s2, clear = scenes_cube([1.0, 0.1, 0.24, 0.25, 0.6, 0.0])
    dropped = sparse_scenes(s2, clear)
    assert dropped.any(axis=(1, 2)).tolist() == [False, True, True, False, False, False]
    np.testing.assert_array_equal(dropped[1], clear[1])  # every clear pixel of it, none other
    assert not (dropped & ~clear).any()


def test_the_share_is_of_the_pixels_the_scene_images() -> None:
    # The edge of a swath: 20 % of the grid imaged, all of it clear, is a clear scene; 20 % of
    # the grid clear where it images all of it is a mostly cloudy one.
    s2, clear = scenes_cube([0.2, 0.2], imaged=[0.2, 1.0])
    assert sparse_scenes(s2, clear).any(axis=(1, 2)).tolist() == [False, True]
    assert SPARSE_SCENE_SHARE == 0.25


def test_the_scene_screen_on_a_real_cube_says_what_it_dropped(cubes_dir) -> None:
    from core.cube import read_cube

    cube = read_cube(cubes_dir / "be-flanders-c_2018-2019.nc")
    valid = cube["valid"].values.astype(bool)
    imaged = np.isfinite(cube["s2"].values).any(axis=1)
    share = valid.sum(axis=(1, 2)) / np.maximum(imaged.sum(axis=(1, 2)), 1)
    out, screening = screen_cube(cube, haze=False, scenes=True)
    gone = screening.dropped.any(axis=(1, 2))
    assert gone.sum() >= 5
    assert (share[gone] < SPARSE_SCENE_SHARE).all() and (share[~gone & (share > 0)] >= 0.25).all()
    np.testing.assert_array_equal(out["valid"].values.astype(bool), valid & ~screening.dropped)
    said = screening.summary()
    assert said.startswith(f"Dropped the {screening.dropped_count:,} clear-labelled pixel")
    assert f"of {int(gone.sum())} mostly cloudy acquisition(s)" in said
    assert "Haze" not in said  # not asked for
    # Both screens: the haze one's words first (here: it could not screen), then the scenes'.
    _, both = screen_cube(cube, scenes=True)
    assert both.summary() == f"{both._haze_summary()} {said}"
    # Asked for through the options, every method reconstructs those pixels, keeps none.
    t = int(np.flatnonzero(gone)[np.argmax(screening.dropped[gone].sum(axis=(1, 2)))])
    date = cube["time_s2"].values[t : t + 1]
    kept = reconstruct(cube, date, "linear", ReconstructOptions())["s2"].values[0]
    redone = reconstruct(cube, date, "linear", ReconstructOptions(screen_scenes=True))
    pixels = screening.dropped[t]
    bands = np.isfinite(cube["s2"].values[t]).any(axis=(1, 2))
    observed = cube["s2"].values[t][:, pixels][bands]
    np.testing.assert_array_equal(kept[:, pixels][bands], observed)
    assert not np.array_equal(redone["s2"].values[0][:, pixels][bands], observed)


def test_red_at_the_floor_is_taken_out_and_a_scene_full_of_it_whole() -> None:
    # Red at the floor sends NDVI to 1 whatever the near infrared: no observation of a surface.
    s2, clear = scenes_cube([1.0, 1.0, 1.0, 0.5])
    s2[:, S2_BANDS.index("B04")] = np.where(np.isfinite(s2[:, 0]), 0.05, np.nan)
    red = s2[:, S2_BANDS.index("B04")].reshape(4, -1)
    red[1, :3] = RED_FLOOR  # 3 % of a scene: those pixels alone
    red[2, :10] = -0.002  # 10 % (a product that stores negative reflectance): the whole scene
    red[3, 60:] = RED_FLOOR  # at the floor but not clear: nothing to take out
    out = red_floor(s2, clear)
    assert out.reshape(4, -1).sum(axis=1).tolist() == [0, 3, 100, 0]
    assert FLOOR_SCENE_SHARE == 0.1
    # A cube without red is not screened.
    s2[:, S2_BANDS.index("B04")] = np.nan
    assert not red_floor(s2, clear).any()


def test_the_real_over_corrected_scene_is_taken_out_whatever_is_asked(cubes_dir) -> None:
    from core.cube import read_cube

    # be-flanders-a's 2017-12-27, labelled vegetation: red at the floor on 793 of its 1,328
    # clear pixels, NDVI 0.999. Elsewhere four single pixels; none in the held-out cube.
    cube = read_cube(cubes_dir / "be-flanders-a_2017-2018.nc")
    valid = cube["valid"].values.astype(bool)
    out, screening = screen_cube(cube, haze=False)
    days = cube["time_s2"].values.astype("datetime64[D]")
    t = int(np.flatnonzero(days == np.datetime64("2017-12-27"))[0])
    np.testing.assert_array_equal(screening.floored[t], valid[t])
    assert screening.floored_count == valid[t].sum() + 4
    assert not out["valid"].values[t].any()
    said = screening.summary()
    assert said.startswith(f"Took out {screening.floored_count:,} pixel observations")
    assert "on 5 acquisition(s)" in said and "Haze" not in said
    held_out = read_cube(cubes_dir / "hu-alfold_2021.nc")
    assert screen_cube(held_out, haze=False)[1].floored_count == 0
    # No screen asked for: the floor screen still runs, and every method says what it took out.
    crop = cube.isel(time_s2=slice(t - 2, t + 3), y=slice(0, 24), x=slice(0, 24))
    result = reconstruct(crop, crop["time_s2"].values[2:3], "linear", ReconstructOptions())
    assert result.attrs["haze_screen"].startswith("Took out")
    floored = screening.floored[t, :24, :24]
    red = result["s2"].values[0, S2_BANDS.index("B04")][floored]  # reconstructed, not kept
    assert np.isfinite(red).mean() > 0.5 and np.nanmin(red) > 2 * RED_FLOOR
    # Nothing at the floor, nothing asked: the cube as it came, nothing said.
    plain = cube.isel(time_s2=slice(t + 5, t + 9), y=slice(0, 24), x=slice(0, 24))
    clean = reconstruct(plain, plain["time_s2"].values[1:2], "linear", ReconstructOptions())
    assert "haze_screen" not in clean.attrs


def test_training_reads_a_cube_without_its_red_at_the_floor(cubes_dir) -> None:
    from core.cube import read_cube
    from core.model.training import load_series

    # Until 2026-12-06 `train` took the over-corrected scene (NDVI 0.999) as context and truth
    # while every reconstruction took it out.
    path = cubes_dir / "be-flanders-a_2017-2018.nc"
    floored = screen_cube(read_cube(path), haze=False)[1].floored
    series = load_series(path)
    assert series.floored.startswith(f"Took out {int(floored.sum()):,} pixel observations")
    assert np.isnan(series.clear_s2.transpose(1, 0, 2, 3)[:, floored]).all()
    kept = read_cube(path)["valid"].values.astype(bool) & ~floored
    assert np.isfinite(series.clear_s2.transpose(1, 0, 2, 3)[3][kept]).all()  # the rest kept
    assert load_series(cubes_dir / "hu-alfold_2021.nc").floored == ""
