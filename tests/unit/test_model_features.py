"""The model's input features: leave-one-out interpolation and smoother, S1 anomalies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.model.config import ModelConfig
from core.model.features import (
    GAP_CAP_DAYS,
    GAP_PREV_CHANNEL,
    S2_CHANNELS,
    S2_SMOOTH_CHANNELS,
    S2_WHITTAKER_CHANNELS,
    Frames,
    gap_days,
    interpolate_at_frames,
    kernel_smooth_loo,
    s1_anomalies,
    s2_channel_count,
    s2_channels,
    whittaker_at_frames,
)


def _series(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    days = np.sort(rng.uniform(0, 300, n))
    values = rng.random((n, 10, 4, 5)).astype(np.float32)
    values[rng.random(values.shape) < 0.4] = np.nan
    return values, days


def _frames(values: np.ndarray, days: np.ndarray) -> Frames:
    height, width = values.shape[2:]
    return Frames(
        s2=values,
        days=days,
        doy=days % 365,
        band_present=np.ones(10, bool),
        s1=np.zeros((0, 3, height, width), np.float32),
        s1_days=np.zeros(0),
        s1_doy=np.zeros(0),
        s1_ascending=np.zeros(0, bool),
    )


def test_leave_one_out_features_ignore_the_frame_itself() -> None:
    values, days = _series()
    changed = values.copy()
    changed[7] = 0.9
    for feature in (
        lambda v: interpolate_at_frames(v, days, exclusive=True)[0],
        lambda v: kernel_smooth_loo(v, days)[0],
    ):
        np.testing.assert_array_equal(feature(values)[7], feature(changed)[7])
        assert not np.array_equal(feature(values)[8], feature(changed)[8])


def test_leave_one_out_interpolation_matches_np_interp_of_the_other_frames() -> None:
    values, days = _series()
    interp, d_prev, d_next = interpolate_at_frames(values, days, exclusive=True)
    for t, band, y, x in [(0, 0, 0, 0), (7, 3, 2, 1), (15, 9, 3, 4), (29, 5, 1, 2)]:
        series = values[:, band, y, x]
        others = np.isfinite(series) & (np.arange(days.size) != t)
        expected = np.interp(days[t], days[others], series[others])  # nearest beyond the ends
        assert interp[t, band, y, x] == pytest.approx(expected, rel=1e-5)
        before, after = days[others & (days < days[t])], days[others & (days > days[t])]
        assert d_prev[t, band, y, x] == pytest.approx(
            days[t] - before.max() if before.size else np.inf
        )
        assert d_next[t, band, y, x] == pytest.approx(
            after.min() - days[t] if after.size else np.inf
        )


def test_interpolation_per_pixel_pattern_equals_band_by_band() -> None:
    """Where every band the cube has is observed together, the neighbours are found once per
    pixel; a band absent from the cube and a pixel with one band missing on its own (handled
    band by band) must give exactly what each band alone gives."""
    rng = np.random.default_rng(3)
    days = np.sort(rng.uniform(0, 300, 40))
    values = rng.random((40, 10, 6, 7)).astype(np.float32)
    values[rng.random((40, 1, 6, 7)).repeat(10, axis=1) < 0.5] = np.nan  # clouds: all bands
    values[:, 4] = np.nan  # a band the cube lacks
    values[:, 2, 3, 3] = np.nan  # a pixel never observed
    values[11, 7, 1, 2] = np.nan  # nodata in one band of one clear pixel
    values[12, 7, 1, 2] = 0.5
    for exclusive in (True, False):
        whole = interpolate_at_frames(values, days, exclusive)
        for band in range(10):
            alone = interpolate_at_frames(values[:, band : band + 1], days, exclusive)
            for got, expected in zip(whole, alone, strict=True):
                np.testing.assert_array_equal(got[:, band : band + 1], expected)


def test_kernel_smoother_matches_a_direct_weighted_mean() -> None:
    values, days = _series()
    smooth, weight = kernel_smooth_loo(values, days, bandwidth=20.0)
    t, band, y, x = 12, 3, 2, 1
    series = values[:, band, y, x]
    w = np.exp(-0.5 * ((days - days[t]) / 20.0) ** 2) * (np.abs(days - days[t]) <= 60.0)
    w[t] = 0.0
    w = np.where(np.isfinite(series), w, 0.0)
    assert weight[t, band, y, x] == pytest.approx(w.sum(), rel=1e-5)
    assert smooth[t, band, y, x] == pytest.approx(
        np.nansum(w * np.nan_to_num(series)) / w.sum(), rel=1e-5
    )


def test_kernel_smoother_keeps_a_constant_and_says_nan_when_nothing_is_near() -> None:
    days = np.array([0.0, 5.0, 10.0, 400.0])
    values = np.full((4, 1, 1, 1), 0.3, dtype=np.float32)
    smooth, weight = kernel_smooth_loo(values, days)
    np.testing.assert_allclose(smooth[:3, 0, 0, 0], 0.3, rtol=1e-6)
    assert np.isnan(smooth[3, 0, 0, 0]) and weight[3, 0, 0, 0] == 0.0


def test_s2_channels_with_and_without_the_smoother() -> None:
    values, days = _series(n=12)
    frames = _frames(values, days)
    plain, base = s2_channels(frames, smooth_features=False)
    rich, base_too = s2_channels(frames, smooth_features=True)
    assert plain.shape[1] == S2_CHANNELS == s2_channel_count(False)
    assert rich.shape[1] == S2_CHANNELS + S2_SMOOTH_CHANNELS == s2_channel_count(True)
    np.testing.assert_array_equal(rich[:, :S2_CHANNELS], plain)
    np.testing.assert_array_equal(base, base_too)
    assert np.isfinite(rich).all()


def test_gap_channels_decode_to_the_days_to_the_other_clear_observations() -> None:
    days = np.array([0.0, 10.0, 40.0, 41.0])
    values = np.full((4, 10, 2, 2), 0.2, np.float32)
    values[3, :, 0, 0] = np.nan  # pixel (0, 0) is not clear on day 41
    frames = Frames(
        s2=values,
        days=days,
        doy=days,
        band_present=np.ones(10, bool),
        s1=np.zeros((0, 3, 2, 2), np.float32),
        s1_days=np.zeros(0),
        s1_doy=np.zeros(0),
        s1_ascending=np.zeros(0, bool),
    )
    channels, _ = s2_channels(frames)
    prev = gap_days(channels[:, GAP_PREV_CHANNEL, 0, 0])
    nxt = gap_days(channels[:, GAP_PREV_CHANNEL + 1, 0, 0])
    np.testing.assert_allclose(prev, [GAP_CAP_DAYS, 10, 30, 1], rtol=1e-5)  # leave-one-out
    np.testing.assert_allclose(nxt, [10, 30, GAP_CAP_DAYS, GAP_CAP_DAYS], rtol=1e-5)
    assert gap_days(channels[2, GAP_PREV_CHANNEL + 1, 1, 1]) == pytest.approx(1, rel=1e-5)


def test_s1_anomalies_remove_a_per_pixel_offset() -> None:
    rng = np.random.default_rng(1)
    s1 = rng.normal(-12, 2, (20, 2, 3, 3)).astype(np.float32)
    shifted = s1 + rng.normal(0, 3, (1, 1, 3, 3)).astype(np.float32)  # e.g. GRD vs RTC
    np.testing.assert_allclose(s1_anomalies(s1), s1_anomalies(shifted), atol=1e-4)


def test_s1_anomalies_of_a_crop_are_the_fields_cut_to_it() -> None:
    # Training and per-field fits take each episode's anomalies from its crop alone
    # (core.model.training.make_episode); they must be exactly the whole field's.
    rng = np.random.default_rng(2)
    s1 = rng.normal(-12, 2, (30, 2, 40, 50)).astype(np.float32)
    s1[rng.random(s1.shape) < 0.2] = np.nan  # border noise, missing looks
    crop = (slice(None), slice(None), slice(7, 39), slice(11, 43))
    np.testing.assert_array_equal(s1_anomalies(s1[crop]), s1_anomalies(s1)[crop])


def test_checkpoints_from_before_the_smoother_load_without_it() -> None:
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "smooth_features"}
    assert ModelConfig.from_dict(old).smooth_features is False
    assert ModelConfig.from_dict(ModelConfig().to_dict()).smooth_features is True


def test_whittaker_channels_are_the_baseline_read_at_every_frame() -> None:
    from core.baselines import smooth_whittaker

    values, days = _series(n=16)
    values = values * 0.4  # reflectance-like
    values[5] = np.nan  # a frame nothing was seen in (a hidden frame, a date asked for)
    rich, base = s2_channels(_frames(values, days), smooth_features=True, whittaker_features=True)
    assert rich.shape[1] == s2_channel_count(True, True)
    assert s2_channel_count(True, True) == S2_CHANNELS + S2_SMOOTH_CHANNELS + S2_WHITTAKER_CHANNELS
    without, _ = s2_channels(_frames(values, days), smooth_features=True)
    np.testing.assert_array_equal(rich[:, : without.shape[1]], without)  # appended, nothing moved
    curve = rich[:, without.shape[1] :] / 5.0  # REFL_SCALE
    seen = np.isfinite(values).any(axis=(1, 2, 3))
    expected = np.maximum(smooth_whittaker(values[seen], days[seen], days), 0.0)
    np.testing.assert_allclose(curve, np.where(np.isfinite(expected), expected, base / 5.0), 1e-5)
    assert np.isfinite(rich).all()


def test_whittaker_channels_ignore_frames_with_nothing_seen() -> None:
    values, days = _series(n=16)
    values = values * 0.4
    full = whittaker_at_frames(values, days)
    # A date asked for (a frame with no observation) between two acquisitions.
    asked = np.sort(np.append(days, days[6] + 0.5 * (days[7] - days[6])))
    blank = np.insert(values, 7, np.nan, axis=0)
    with_query = whittaker_at_frames(blank, asked)
    np.testing.assert_allclose(np.delete(with_query, 7, axis=0), full, atol=1e-6)
    assert np.isfinite(with_query[7]).any()


def test_whittaker_channels_bridge_a_gap_with_a_curve_not_a_chord() -> None:
    # A season's peak inside a 45-day gap: the smoother's fill keeps rising past the chord.
    days = np.arange(0.0, 150.0, 5.0)
    truth = 0.1 + 0.3 * np.sin(np.pi * days / 150.0)
    values = np.broadcast_to(truth[:, None, None, None], (days.size, 10, 2, 2)).copy()
    gap = (days > 52) & (days < 98)
    values[gap] = np.nan
    curve = whittaker_at_frames(values, days)[:, 0, 0, 0]
    chord = interpolate_at_frames(values, days, exclusive=False)[0][:, 0, 0, 0]
    middle = np.flatnonzero(gap)[gap.sum() // 2]
    assert abs(curve[middle] - truth[middle]) < 0.5 * abs(chord[middle] - truth[middle])


def test_checkpoints_from_before_the_whittaker_channels_load_without_them() -> None:
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "whittaker_features"}
    assert ModelConfig.from_dict(old).whittaker_features is False


def test_a_pixel_never_seen_is_filled_with_its_band_s_mean_over_the_observations() -> None:
    """Not over the interpolation, whose values depend on which dates are asked for (review 29:
    the mean over the interpolation passed)."""
    from core.model.features import fill_missing

    observed = np.full((3, 10, 2, 2), np.nan, np.float32)
    observed[0, :, 0, 0] = 0.2
    observed[2, :, 0, 0] = 0.4
    interp = np.full_like(observed, np.nan)
    interp[:, :, 0, 0] = 0.9  # a value the observations never had
    present = np.ones(10, bool)
    present[9] = False
    filled = fill_missing(interp, present, observed)
    np.testing.assert_allclose(filled[:, :9, 1, 1], 0.3)  # the observations' mean
    np.testing.assert_array_equal(filled[:, 9, 1, 1], 0.0)  # an absent band: 0
    np.testing.assert_allclose(filled[:, :, 0, 0], 0.9)  # what was interpolated is kept


def test_a_radar_pixel_missing_one_polarisation_counts_as_not_seen() -> None:
    """VV-VH needs both: a pixel with VV and no VH is read as no radar, all its anomalies 0
    (review 29: counting it seen passed)."""
    from core.model.features import s1_channels

    values, days = _series(6)
    s1 = np.full((2, 3, 4, 5), 1.5, np.float32)
    s1[0, 1, 0, 0] = np.nan  # VH missing on one pixel of the first frame
    s1[1, :, 2, 3] = np.nan  # nothing on one pixel of the second
    frames = dataclasses.replace(
        _frames(values, days),
        s1=s1,
        s1_days=np.array([10.0, 20.0]),
        s1_doy=np.array([10.0, 20.0]),
        s1_ascending=np.array([True, False]),
    )
    channels = s1_channels(frames)
    has = channels[:, 3]
    assert has[0, 0, 0] == 0 and has[1, 2, 3] == 0
    assert has.sum() == 2 * 4 * 5 - 2
    np.testing.assert_array_equal(channels[0, :3, 0, 0], 0.0)
    assert (channels[0, :3, 1, 1] != 0).all()


def test_a_window_takes_the_radar_within_its_span_and_the_margin_on_both_sides() -> None:
    """Review 29: dropping the margin after the window's last date passed."""
    from core.model.features import series_inputs, window_inputs

    values, days = _series(12)
    s1_days = np.arange(-20.0, 330.0, 6.0)
    n = s1_days.size
    frames = dataclasses.replace(
        _frames(values, days),
        s1=np.zeros((n, 3, 4, 5), np.float32),
        s1_days=s1_days,
        s1_doy=s1_days % 365,
        s1_ascending=np.zeros(n, bool),
    )
    window = window_inputs(series_inputs(frames), 3, 8, 10.0)
    lo, hi = days[3] - 10.0, days[7] + 10.0
    np.testing.assert_array_equal(window.s1_days, s1_days[(s1_days >= lo) & (s1_days <= hi)])
    assert window.s1_days.min() < days[3] and window.s1_days.max() > days[7]
    assert window.s1.shape[0] == window.s1_days.size
