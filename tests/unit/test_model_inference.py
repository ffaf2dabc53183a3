"""The model method: masking, identity at initialisation, S1/band absence, tiling, samples,
checkpoints, devices, and that a tiny model can learn one series."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.curve import ndvi_curve
from core.errors import InputError
from core.model.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    training_sites,
    weights_digest,
)
from core.model.config import ModelConfig, TrainConfig
from core.model.features import N_BANDS, S1_CHANNELS, s2_channel_count
from core.model.inference import (
    clear_field_cache,
    frames_unseen,
    loaded_checkpoint,
    on_cadence,
    plan_passes,
    query_kernel,
    resolve_device,
    temporal_windows,
    tile_origins,
)
from core.model.network import DIHEDRAL_VIEWS, FieldFlowNet, from_view, to_view
from core.model.training import (
    Episode,
    collate,
    jitter_blank_dates,
    load_series,
    losses,
    make_episode,
)
from core.reconstruct import ReconstructOptions, pinned, reconstruct
from core.timeline import calendar_day

TINY = ModelConfig(
    width=16, depth=1, heads=2, flow_hidden=32, flow_layers=1, tile=32, tile_overlap=8, s2_window=12
)
WHITTAKER = dataclasses.replace(TINY, whittaker_features=True)
"""TINY with the Whittaker smoother's channels (``ModelConfig.whittaker_features``)."""


def _checkpoint(tmp_path, *, perturb: bool, config: ModelConfig = TINY) -> str:
    torch.manual_seed(0)
    model = FieldFlowNet(config)
    if perturb:  # a model that is not the identity, so masking tests mean something
        with torch.no_grad():
            model.mean_head.weight.normal_(0, 0.05)
    path = tmp_path / f"model-{int(perturb)}.pt"
    save_checkpoint(Checkpoint(model=model, record={"seen_sites": ["nowhere"]}), path)
    return str(path)


def _crop(cube, size: int = 24, frames: slice = slice(0, 20)):
    return cube.isel(y=slice(0, size), x=slice(0, size), time_s2=frames)


def hidden_bright_and_dark(cube):
    """Two copies of a crop of ``cube`` whose frame 6 has a cloudy 7 x 7 block (valid 0) with
    very different values under it (0.9 and 0.01): a method that never reads a hidden value
    gives both the same answer."""
    cube = _crop(cube).copy(deep=True)
    cube["valid"][6, 5:12, 5:12] = 0
    bright, dark = cube.copy(deep=True), cube.copy(deep=True)
    bright["s2"][6, :, 5:12, 5:12] = 0.9
    dark["s2"][6, :, 5:12, 5:12] = 0.01
    return bright, dark


def _options(path: str, **kwargs) -> ReconstructOptions:
    """The network alone unless asked: the field blend has its own tests."""
    return ReconstructOptions(checkpoint=path, device="cpu", **{"blend_field": False, **kwargs})


def test_untrained_model_equals_linear_interpolation(flanders_cube, tmp_path) -> None:
    cube = _crop(flanders_cube)
    times = cube["time_s2"].values
    # Acquisition times (cloud removal) and a date between acquisitions (anytime query).
    query = np.concatenate([times[[3, 8]], times[[5]] + np.timedelta64(2, "D")])
    # The network's own estimate at every day (smoothing would mix days around the kinks).
    options = _options(_checkpoint(tmp_path, perturb=False), smooth_days=0)
    model = reconstruct(cube, query, "model", options)
    linear = reconstruct(cube, query, "linear")
    both = np.isfinite(linear["s2"].values)
    assert both.sum() > 1000
    np.testing.assert_allclose(model["s2"].values[both], linear["s2"].values[both], atol=2e-5)


def test_every_day_queried_runs_in_grouped_passes_and_misses_none(flanders_cube, tmp_path) -> None:
    cube = _crop(flanders_cube, size=16)
    times = cube["time_s2"].values
    first, last = times[0].astype("datetime64[D]"), times[-1].astype("datetime64[D]")
    days = np.arange(first, last + 1)
    # Every day (more passes than one window): the acquisitions at their own times (a query on
    # an acquisition day is that acquisition), the other days at midnight.
    others = days[~np.isin(days, times.astype("datetime64[D]"))].astype("datetime64[ns]")
    query = np.sort(np.concatenate([times, others]))
    # The network's own estimate at every day (smoothing would mix days around the kinks).
    options = _options(_checkpoint(tmp_path, perturb=False), smooth_days=0)
    model = reconstruct(cube, query, "model", options)
    linear = reconstruct(cube, query, "linear")
    both = np.isfinite(linear["s2"].values)
    assert both.mean() > 0.5
    np.testing.assert_allclose(model["s2"].values[both], linear["s2"].values[both], atol=2e-5)


@pytest.mark.parametrize("config", [TINY, WHITTAKER], ids=["plain", "whittaker"])
def test_hidden_pixel_values_never_reach_the_model(flanders_cube, tmp_path, config) -> None:
    path = _checkpoint(tmp_path, perturb=True, config=config)
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6, 7]]
    a = reconstruct(bright, query, "model", _options(path)).s2.values
    b = reconstruct(dark, query, "model", _options(path)).s2.values
    np.testing.assert_array_equal(a, b)
    # ...while a visible pixel's value does reach it.
    dark["s2"][7, :, 0, 0] = 0.5
    dark["valid"][7, 0, 0] = 1
    c = reconstruct(dark, query, "model", _options(path, keep_observed=False)).s2.values
    d = reconstruct(bright, query, "model", _options(path, keep_observed=False)).s2.values
    assert not np.array_equal(c, d)


def test_the_views_are_the_squares_eight_symmetries_and_each_turns_back() -> None:
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)  # H != W
    for view in DIHEDRAL_VIEWS:
        assert torch.equal(from_view(to_view(x, view), view), x), view
    square = torch.arange(16.0).view(4, 4)
    assert len({tuple(to_view(square, v).flatten().tolist()) for v in DIHEDRAL_VIEWS}) == 8
    # The first four keep height and width (a window's shape), the others swap them.
    assert [to_view(x, v).shape[-2:] for v in DIHEDRAL_VIEWS] == [(8, 12)] * 4 + [(12, 8)] * 4


def _window_tensors(config: ModelConfig, height: int, width: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    s2 = torch.randn(1, 5, s2_channel_count(config), height, width, generator=generator)
    s1 = torch.randn(1, 4, S1_CHANNELS, height, width, generator=generator)
    return s2, torch.tensor([[0.0, 5, 10, 20, 35]]), s1, torch.tensor([[1.0, 7, 13, 25]])


def test_an_estimate_over_all_eight_views_turns_with_its_input() -> None:
    """Averaged over the whole group, the correction of a turned or mirrored input is the
    turned or mirrored correction, whatever the weights: a view taken or undone the wrong way
    round breaks this. One view, the input as given, does not have the property."""
    torch.manual_seed(0)
    model = FieldFlowNet(TINY).eval()
    with torch.no_grad():
        model.mean_head.weight.normal_(0, 0.05)  # else every correction is 0
    s2, days, s1, s1_days = _window_tensors(TINY, 8, 12)
    frames = torch.tensor([1, 3])
    with torch.no_grad():
        features, averaged = model.estimate(s2, days, s1, s1_days, frames=frames, views=8)
        _, alone = model.estimate(s2, days, s1, s1_days, frames=frames, views=1)
        for view in DIHEDRAL_VIEWS[1:]:
            turned = model.estimate(
                to_view(s2, view), days, to_view(s1, view), s1_days, frames=frames, views=8
            )[1]
            torch.testing.assert_close(turned, to_view(averaged, view), atol=1e-5, rtol=1e-4)
            turned_alone = model.estimate(
                to_view(s2, view), days, to_view(s1, view), s1_days, frames=frames, views=1
            )[1]
            assert (turned_alone - to_view(alone, view)).abs().max() > 1e-3
        # The flow head's condition is the input as given, and one view is today's estimate.
        encoded = model.encode(s2, days, s1, s1_days)[:, frames]
        torch.testing.assert_close(features, encoded)
        torch.testing.assert_close(alone, model.mean_correction(encoded, 8, 12))
    assert averaged.shape == (1, 2, 10, 8, 12)
    with pytest.raises(ValueError, match="views must be one of"):
        model.estimate(s2, days, s1, s1_days, views=3)


def test_a_reconstruction_over_eight_views_keeps_hidden_pixels_out_and_moves_the_estimate(
    flanders_cube, tmp_path
) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6, 7]]
    views = _options(path, views=8, samples=2)
    a = reconstruct(bright, query, "model", views)
    b = reconstruct(dark, query, "model", views)
    np.testing.assert_array_equal(a.s2.values, b.s2.values)
    np.testing.assert_array_equal(a.s2_p90.values, b.s2_p90.values)
    one = reconstruct(bright, query, "model", _options(path, samples=2)).s2.values
    hidden = ~np.isnan(one) & (bright["valid"].values[[6, 7]] == 0)[:, None]
    assert hidden.any() and not np.allclose(a.s2.values[hidden], one[hidden], atol=1e-4)
    with pytest.raises(InputError, match="--views must be 1, 2, 4 or 8, not 3"):
        reconstruct(bright, query, "model", _options(path, views=3))


def test_model_works_without_s1_and_with_missing_bands(cubes_dir, flanders_cube, tmp_path) -> None:
    from core.cube import read_cube

    path = _checkpoint(tmp_path, perturb=True)
    es = read_cube(cubes_dir / "es-field_2019.nc").isel(y=slice(8, 40), x=slice(8, 40))
    query = es["time_s2"].values[[4, 10]] + np.timedelta64(1, "D")
    out = reconstruct(es, query, "model", _options(path))
    present = [list(out.band.values).index(b) for b in ("B04", "B08")]
    absent = [i for i in range(10) if i not in present]
    assert np.isfinite(out["s2"].values[:, present]).mean() > 0.5
    assert np.isnan(out["s2"].values[:, absent]).all()
    assert np.isfinite(out["ndvi"].values).mean() > 0.5

    cube = _crop(flanders_cube)
    q = cube["time_s2"].values[[9]] + np.timedelta64(1, "D")
    with_s1 = reconstruct(cube, q, "model", _options(path)).s2.values
    without = reconstruct(
        cube.drop_vars(["s1", "time_s1", "polarization"]), q, "model", _options(path)
    ).s2.values
    assert np.isfinite(without).all()
    assert not np.allclose(with_s1, without)


def test_tiles_and_windows_cover_a_large_long_request(flanders_cube, tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    cube = flanders_cube.isel(y=slice(0, 50), x=slice(0, 45), time_s2=slice(0, 40))
    times = cube["time_s2"].values
    query = np.array([times[1], times[20], times[38]]).astype("datetime64[D]")
    query = (query + np.timedelta64(1, "D")).astype("datetime64[ns]")
    out = reconstruct(cube, query, "model", _options(path, samples=3))
    assert out["s2"].shape == (3, 10, 50, 45)
    assert np.isfinite(out["s2"].values).all()
    assert (out["s2_p10"].values <= out["s2_p90"].values + 1e-6).all()
    assert (out["s2_p90"].values - out["s2_p10"].values).mean() > 0


def test_window_and_tile_helpers_cover_everything_once() -> None:
    frames = np.array([0, 5, 30, 59, 99])
    windows = temporal_windows(100, frames, 40)
    assigned = np.concatenate([q for _, _, q in windows])
    assert sorted(assigned.tolist()) == [0, 1, 2, 3, 4]
    for start, stop, queries in windows:
        assert stop - start == 40
        assert all(start <= frames[q] < stop for q in queries)
    assert tile_origins(100, 64, 16) == [0, 36]
    assert tile_origins(30, 64, 16) == [0]


def test_dense_queries_join_the_acquisitions_instead_of_crowding_them_out() -> None:
    rng = np.random.default_rng(0)
    acquired = np.zeros(160, dtype=bool)
    acquired[np.sort(rng.choice(160, 30, replace=False))] = True
    every_day = np.arange(160)
    passes = plan_passes(acquired, every_day, 40)
    answered = np.concatenate([p.queries for p in passes])
    assert sorted(answered.tolist()) == every_day.tolist()  # each query once
    for p in passes:
        assert np.all(np.diff(p.frames) > 0)
        np.testing.assert_array_equal(p.frames[p.targets], every_day[p.queries])
        assert acquired[p.frames].sum() == 30  # the whole window of acquisitions, always
        assert (~acquired[p.frames]).sum() <= 40  # and at most a window of query-only dates
    assert len(passes) == 4  # 130 query-only dates
    # Queries on acquisition days only (every frame is an acquisition): one plain window.
    (single,) = plan_passes(np.ones(30, dtype=bool), np.array([0, 10, 29]), 40)
    np.testing.assert_array_equal(single.frames, np.arange(30))
    np.testing.assert_array_equal(single.targets, [0, 10, 29])


def test_a_date_gets_the_same_acquisitions_however_the_dates_are_asked_for() -> None:
    # With query-only dates unseen by the other frames (frames_unseen), a date's estimate
    # depends only on the acquisitions of its pass. Those must not depend on the other dates
    # asked for: a day alone, in a chunk of the app's daily curve, or in the whole curve.
    acquisitions = np.arange(0, 400, 5)  # over a year, an acquisition every 5 days
    acquisitions = acquisitions[(acquisitions < 200) | (acquisitions >= 260)]  # a 2-month gap

    def context(days: np.ndarray) -> dict[int, tuple[int, ...]]:
        # The series' frames are the acquisitions and the dates asked for (frames_for_query).
        frames = np.union1d(acquisitions, days)
        acquired = np.isin(frames, acquisitions)
        out = {}
        for p in plan_passes(acquired, np.searchsorted(frames, days), 40):
            for q in p.queries:
                out[int(days[q])] = tuple(frames[p.frames[acquired[p.frames]]].tolist())
        return out

    whole = context(np.arange(400))
    assert len(whole) == 400
    for lo in range(0, 400, 40):
        assert context(np.arange(lo, min(lo + 40, 400))) == {
            d: whole[d] for d in range(lo, min(lo + 40, 400))
        }
    for day in (0, 3, 131, 230, 399):
        assert context(np.array([day])) == {day: whole[day]}


def test_only_query_only_dates_are_unseen() -> None:
    assert frames_unseen(np.ones(4, dtype=bool)) is None
    np.testing.assert_array_equal(
        frames_unseen(np.array([True, False, True, False])), [False, True, False, True]
    )


@pytest.mark.parametrize(
    ("smooth_days", "config"), [(0, TINY), (2, TINY), (0, WHITTAKER)], ids=["0", "2", "whittaker"]
)
def test_a_dates_estimate_does_not_depend_on_the_other_dates_asked_for(
    flanders_cube, tmp_path, smooth_days, config
) -> None:
    # A date asked for alone, or among every day of the period (the app's daily curve, in
    # chunks or in one call), gets the same estimate: query-only dates are unseen by the
    # other frames, and a date's acquisitions do not depend on the others (plan_passes).
    # The Whittaker channels are fitted to the acquisitions alone, so they keep this too.
    path = _checkpoint(tmp_path, perturb=True, config=config)
    cube = _crop(flanders_cube, size=16)
    days = cube["time_s2"].values.astype("datetime64[D]")
    asked = np.array([days[3], days[5] + 2, days[12] + 1, days[17]]).astype("datetime64[ns]")
    every_day = np.arange(days[0], days[-1] + 1).astype("datetime64[ns]")
    assert every_day.size > 3 * TINY.s2_window  # several passes
    options = _options(path, smooth_days=smooth_days)
    alone = reconstruct(cube, asked, "model", options)
    among = reconstruct(cube, np.union1d(asked, every_day), "model", options)
    among = among.sel(time=alone["time"].values)
    np.testing.assert_allclose(among["s2"].values, alone["s2"].values, atol=1e-5)
    observed = alone["observed"].values.astype(bool)
    assert (~observed).sum() > 500  # mostly estimates, not kept observations


def test_a_date_off_the_cadence_mixes_the_days_around_it_within_the_period() -> None:
    base = np.datetime64("2021-03-01")
    acquired = (base + np.array([0, 5, 15, 17]).astype("timedelta64[D]")).astype("datetime64[ns]")
    acquired = acquired + np.timedelta64(10, "h")  # 10:00 UTC
    query = np.arange(base, base + np.timedelta64(18, "D")).astype("datetime64[ns]")
    kernel = query_kernel(query, acquired, 2)
    np.testing.assert_allclose(kernel.weight.sum(axis=1), 1.0, rtol=1e-6)
    # Two orbits: days 0, 5, 10, 15 (+ 5 n) and 17 (2, 7, 12, ...) are on the cadence.
    np.testing.assert_array_equal(kernel.direct, np.isin(np.arange(18) % 5, [0, 2]))
    np.testing.assert_array_equal(on_cadence(query, acquired), kernel.direct)
    for q in range(18):
        used = kernel.weight[q] > 0
        days = (kernel.dates[kernel.index[q, used]] - query[q]) // np.timedelta64(1, "D")
        if kernel.direct[q]:
            assert days.tolist() == [0]
            continue
        assert set(days.tolist()) == {d for d in range(-2, 3) if 0 <= q + d <= 17}
        raw = 3 - np.abs(days)  # triangular: 1 2 3 2 1
        np.testing.assert_allclose(kernel.weight[q, used], raw / raw.sum(), rtol=1e-6)
    # Day 9 mixes days 7-11, whatever else is asked.
    alone = query_kernel(query[[9]], acquired, 2)
    assert alone.dates.size == 5 and not alone.direct[0]
    # 0: the network at every date asked for.
    plain = query_kernel(query, acquired, 0)
    np.testing.assert_array_equal(plain.dates, query)
    assert plain.direct.all()
    with pytest.raises(InputError, match="smooth-days"):
        query_kernel(query, acquired, -1)


def test_a_smoothed_date_is_the_weighted_mean_of_the_frames_around_it(
    flanders_cube, tmp_path
) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    cube = _crop(flanders_cube, size=16)
    days = cube["time_s2"].values.astype("datetime64[D]")
    every = np.arange(days[0] + 1, days[-1])
    free = every[~on_cadence(every, cube["time_s2"].values)]
    asked = free[:: max(1, len(free) // 6)][:6].astype("datetime64[ns]")
    options = _options(path, smooth_days=2, samples=4)
    out = reconstruct(cube, asked, "model", options)
    kernel = query_kernel(asked, cube["time_s2"].values, 2)
    # The network's own frames at those dates, observed pixels kept as a user sees them.
    at = reconstruct(cube, kernel.dates, "model", _options(path, samples=4, smooth_days=0))
    want = np.einsum("qm,qmbyx->qbyx", kernel.weight, at["s2"].values[kernel.index])
    np.testing.assert_allclose(out["s2"].values, want, atol=1e-5)
    assert not kernel.direct.any() and not out["observed"].values.any()
    own = at.sel(time=asked)
    assert np.abs(own["s2"].values - out["s2"].values).mean() > 1e-4  # it does mix
    # The samples are the network's own at the date (only it is sampled), around the mix.
    width, own_width = ((r["s2_p90"] - r["s2_p10"]).values for r in (out, own))
    assert np.isfinite(width).all() and (width > 0).mean() > 0.9
    assert np.median(width) == pytest.approx(np.median(own_width), rel=0.2)


def test_samples_are_reproducible_with_a_seed(flanders_cube, tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    cube = _crop(flanders_cube, size=16)
    q = cube["time_s2"].values[[4]] + np.timedelta64(1, "D")
    a = reconstruct(cube, q, "model", _options(path, samples=4, seed=3))
    b = reconstruct(cube, q, "model", _options(path, samples=4, seed=3))
    c = reconstruct(cube, q, "model", _options(path, samples=4, seed=4))
    np.testing.assert_array_equal(a["s2_p90"].values, b["s2_p90"].values)
    assert not np.array_equal(a["s2_p90"].values, c["s2_p90"].values)


def test_checkpoint_round_trip(tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    loaded = load_checkpoint(path)
    again = tmp_path / "again.pt"
    save_checkpoint(dataclasses.replace(loaded, spread_scale=1.7), again)
    reloaded = load_checkpoint(again)
    assert reloaded.config == TINY
    assert reloaded.spread_scale == pytest.approx(1.7)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reloaded.model.state_dict()[key])
    record = json.loads(again.with_suffix(".json").read_text())
    assert record["weights_sha256"] == weights_digest(reloaded.model.state_dict())
    assert record["model_config"]["width"] == TINY.width
    assert training_sites(again) == ["nowhere"]


def test_a_checkpoint_replaced_at_the_same_path_is_used_at_its_next_run(
    flanders_cube, tmp_path
) -> None:
    """A model retrained in place (``train --out`` onto the file the app or a worker uses) is
    loaded anew, not answered by the copy loaded before: the output names the new weights and
    differs, and the app's Run key changes with it."""
    from core.config import checkpoint_version
    from core.field import field_from_geojson
    from core.season import SeasonRequest

    path = _checkpoint(tmp_path, perturb=True)
    cube, query = _crop(flanders_cube), flanders_cube["time_s2"].values[[6, 7]]
    first = reconstruct(cube, query, "model", _options(path))
    version = checkpoint_version(Path(path))
    request = SeasonRequest(
        field=field_from_geojson(
            {
                "type": "Polygon",
                "coordinates": [[[3, 50.8], [3.01, 50.8], [3.01, 50.81], [3, 50.8]]],
            }
        ),
        start=dt.date(2018, 5, 1),
        end=dt.date(2018, 6, 1),
        method="model",
        options=_options(path),
    )
    key = request.key("http://stac")
    # a Run pins the version at its start (core.season.compute_season): the same Run
    as_run = dataclasses.replace(request, options=pinned(request.options, "model"))
    assert as_run.options.checkpoint_version == version and as_run.key("http://stac") == key
    linear = dataclasses.replace(request, method="linear")
    linear_key = linear.key("http://stac")
    other = _replace_checkpoint(path, seed=1)
    second = reconstruct(cube, query, "model", _options(path))
    assert checkpoint_version(Path(path)) != version
    assert first.attrs["model_weights_sha256"] != second.attrs["model_weights_sha256"]
    assert second.attrs["model_weights_sha256"] == weights_digest(other.state_dict())
    assert not np.allclose(first["s2"].values, second["s2"].values)
    assert request.key("http://stac") != key
    assert linear.key("http://stac") == linear_key  # a Run without the model is the same Run


def _replace_checkpoint(path: str, seed: int) -> FieldFlowNet:
    """Save another model at ``path`` (as ``train --out`` onto it would); returns it."""
    torch.manual_seed(seed)
    other = FieldFlowNet(TINY)
    with torch.no_grad():
        other.mean_head.weight.normal_(0, 0.05)
    save_checkpoint(Checkpoint(model=other, record={"seen_sites": ["nowhere"]}), path)
    stat = os.stat(path)  # a clock too coarse to tell two writes apart must not matter here
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    return other


def test_a_curve_whose_checkpoint_is_replaced_midway_never_mixes_two_models(
    flanders_cube, tmp_path
) -> None:
    """A checkpoint replaced while a curve (a Run's chunks) computes: the chunks after it are
    made with the copy loaded before, so the curve is the first model's throughout; a process
    with no copy of it (a Dask worker joining late, a cache that dropped it) stops with a
    message instead of making the rest with the new weights. Unpinned, the next curve uses the
    new model."""
    path = _checkpoint(tmp_path, perturb=True)
    cube = _crop(flanders_cube)
    days = calendar_day(cube["time_s2"].values)
    start, end = str(days[0]), str(days[-1])
    reference = ndvi_curve(cube, start, end, method="model", options=_options(path))
    made_with: list[str] = []

    def replace_after_the_first(_dates, result, *, forget: bool = False) -> None:
        made_with.append(result.attrs["model_weights_sha256"])
        if len(made_with) == 1:
            _replace_checkpoint(path, seed=len(made_with) + 10 * forget)
            if forget:
                loaded_checkpoint.cache_clear()

    curve = ndvi_curve(
        cube, start, end, method="model", options=_options(path), on_chunk=replace_after_the_first
    )
    assert len(made_with) >= 2 and len(set(made_with)) == 1
    np.testing.assert_array_equal(curve["ndvi"].to_numpy(), reference["ndvi"].to_numpy())

    made_with.clear()
    with pytest.raises(InputError, match="was replaced or removed while this computation"):
        ndvi_curve(
            cube,
            start,
            end,
            method="model",
            options=_options(path),
            on_chunk=functools.partial(replace_after_the_first, forget=True),
        )
    assert len(made_with) == 1
    after = ndvi_curve(cube, start, end, method="model", options=_options(path))
    assert not np.allclose(after["ndvi"].to_numpy(), reference["ndvi"].to_numpy())


def test_bad_checkpoints_are_refused_clearly(tmp_path) -> None:
    with pytest.raises(InputError, match="No model checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="Cannot read the model checkpoint") as caught:
        load_checkpoint(broken)
    assert "\n" not in str(caught.value)  # one line, not torch's page of advice
    assert str(caught.value).endswith("written by 'python -m core train'?")
    # A checkpoint cut short (an interrupted copy) says the same.
    from core.config import DEFAULT_CHECKPOINT

    cut = tmp_path / "cut.pt"
    cut.write_bytes(DEFAULT_CHECKPOINT.read_bytes()[:100_000])
    with pytest.raises(InputError, match=r"Cannot read the model checkpoint .*cut\.pt"):
        load_checkpoint(cut)
    # Some other PyTorch file, and a checkpoint whose weights do not fit its configuration.
    other = tmp_path / "other.pt"
    for payload in ([1, 2], {"weights": torch.zeros(2)}):
        torch.save(payload, other)
        with pytest.raises(InputError, match="is a PyTorch file but not a FieldFlow model"):
            load_checkpoint(other)
    edited = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    name = next(iter(edited["state_dict"]))
    edited["state_dict"][name] = torch.zeros(3)
    del edited["weights_sha256"]  # an edit that also dropped the digest
    torch.save(edited, other)
    with pytest.raises(InputError, match=r"weights do not fit its configuration \(RuntimeError"):
        load_checkpoint(other)


def test_a_checkpoint_with_flipped_bytes_in_its_weights_is_refused(tmp_path) -> None:
    # torch loads such a file without complaint (its archive's checksums are not verified):
    # the digest saved with the weights is what tells.
    from core.config import DEFAULT_CHECKPOINT

    data = bytearray(DEFAULT_CHECKPOINT.read_bytes())
    weights = torch.load(DEFAULT_CHECKPOINT, weights_only=True)["state_dict"]
    largest = max(weights.values(), key=torch.Tensor.numel)
    at = bytes(data).find(largest.reshape(-1).view(torch.uint8).numpy().tobytes())
    assert at > 0
    data[at + 1000] ^= 0xFF
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    torch.load(damaged, weights_only=True)  # torch itself sees nothing wrong
    with pytest.raises(InputError, match="is damaged: its weights do not match the digest"):
        load_checkpoint(damaged)
    assert load_checkpoint(DEFAULT_CHECKPOINT).record  # the shipped one carries a true digest


def test_a_checkpoint_whose_weights_are_not_numbers_is_refused(tmp_path) -> None:
    # A diverged training's weights, saved with a true digest (as the train command did before
    # it refused to save them): loading says what happened instead of reconstructing NaN.
    from core.config import DEFAULT_CHECKPOINT
    from core.model.checkpoint import save_checkpoint

    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT)
    with torch.no_grad():
        next(checkpoint.model.parameters()).fill_(float("nan"))
    save_checkpoint(checkpoint, tmp_path / "diverged.pt")
    with pytest.raises(InputError, match=r"weights that are not numbers .* lower --lr"):
        load_checkpoint(tmp_path / "diverged.pt")


def test_a_checkpoint_with_changed_settings_is_refused(tmp_path) -> None:
    # A band width or config value changed (by hand, or a damaged copy) loads without error
    # and the model answers differently: the settings digest tells.
    from core.config import DEFAULT_CHECKPOINT

    payload = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    assert "settings_sha256" in payload  # the shipped one carries it
    edited = tmp_path / "edited.pt"
    for change in (
        lambda p: p.update(spread_scale=p["spread_scale"] * 1.01),
        lambda p: p["model_config"].update(tile=p["model_config"]["tile"] // 2),
        lambda p: p["record"].update(seen_sites=[]),
    ):
        changed = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
        change(changed)
        torch.save(changed, edited)
        with pytest.raises(InputError, match="is damaged: its settings"):
            load_checkpoint(edited)


def test_device_selection() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("visible", [True, False])
def test_auto_picks_the_gpu_exactly_when_one_is_visible(monkeypatch, visible) -> None:
    """The choice itself, on a machine with or without a GPU (review 29: "auto" never picking
    the GPU passed here, where none is visible). Only what torch reports is set; the choice is
    the product's code."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    assert resolve_device("auto") == ("cuda" if visible else "cpu")
    assert resolve_device("cpu") == "cpu"
    if visible:
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_model_runs_on_cuda(flanders_cube, tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    cube = _crop(flanders_cube, size=16)
    q = cube["time_s2"].values[[4]] + np.timedelta64(1, "D")
    gpu = reconstruct(cube, q, "model", ReconstructOptions(checkpoint=path, device="cuda"))
    cpu = reconstruct(cube, q, "model", ReconstructOptions(checkpoint=path, device="cpu"))
    np.testing.assert_allclose(gpu["s2"].values, cpu["s2"].values, atol=1e-4)


def test_tiny_model_overfits_one_series(cubes_dir) -> None:
    series = load_series(cubes_dir / "be-flanders-a_2017-2018.nc")
    rng = np.random.default_rng(0)
    episode: Episode | None = None
    while episode is None:
        episode = make_episode(series, 10, 16, rng, s1_dropout=0.0, smooth_features=True)
    batch = collate([episode])
    torch.manual_seed(0)
    model = FieldFlowNet(dataclasses.replace(TINY, width=32))
    config = TrainConfig()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    first = float(losses(model, batch, config, generator)["l1"].detach())
    for _ in range(150):
        parts = losses(model, batch, config, generator)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
    last = float(losses(model, batch, config, generator)["l1"].detach())
    assert last < 0.5 * first


@pytest.mark.parametrize("config", [TINY, WHITTAKER], ids=["plain", "whittaker"])
def test_per_field_adaptation_learns_from_clear_pixels_only(
    flanders_cube, tmp_path, config
) -> None:
    from core.model.inference import cached_checkpoint

    path = _checkpoint(tmp_path, perturb=True, config=config)
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6, 7]]
    before = {k: v.clone() for k, v in cached_checkpoint(path, "cpu").model.state_dict().items()}
    tuned = _options(path, adapt_steps=3)
    clear_field_cache()
    a = reconstruct(bright, query, "model", tuned).s2.values
    clear_field_cache()  # tune afresh on the dark cube: no reuse of the first tuning
    b = reconstruct(dark, query, "model", tuned).s2.values
    np.testing.assert_array_equal(a, b)  # hidden values reach neither the tuning nor the model
    plain = reconstruct(bright, query, "model", _options(path)).s2.values
    assert not np.array_equal(a, plain)  # the tuning changed the answer...
    after = cached_checkpoint(path, "cpu").model.state_dict()
    for key, value in before.items():  # ...but not the shared, cached checkpoint
        assert torch.equal(value, after[key])


def test_per_field_adaptation_batch_does_not_follow_the_training_batch(
    cubes_dir, monkeypatch
) -> None:
    from core.model import training

    sizes: list[int] = []
    real_collate = training.collate

    def counting_collate(episodes, device="cpu"):
        sizes.append(len(episodes))
        return real_collate(episodes, device)

    monkeypatch.setattr(training, "collate", counting_collate)
    series = load_series(cubes_dir / "es-field_2019.nc")
    config = TrainConfig(batch_size=8, crop=16, min_frames=6, max_frames=8)
    training.adapt(FieldFlowNet(TINY), series, 2, config)
    assert sizes == [training.ADAPT_BATCH_SIZE] * 2
    sizes.clear()
    training.adapt(FieldFlowNet(TINY), series, 1, config, batch_size=3)
    assert sizes == [3]


@pytest.mark.parametrize("share", [None, 0.0, 1.0])
def test_per_field_adaptation_hides_long_gaps_in_the_share_asked_for(
    cubes_dir, monkeypatch, share
) -> None:
    from core.model import training

    asked: list[bool | None] = []
    real_make_episode = training.make_episode

    def recording(*args, **kwargs):
        asked.append(kwargs.get("long_gap"))
        return real_make_episode(*args, **kwargs)

    monkeypatch.setattr(training, "make_episode", recording)
    monkeypatch.setattr(training, "ADAPT_LONG_GAP_SHARE", share)
    series = load_series(cubes_dir / "es-field_2019.nc")
    config = TrainConfig(crop=16, min_frames=6, max_frames=8)
    training.adapt(FieldFlowNet(TINY), series, 2, config)
    assert len(asked) >= 2 * training.ADAPT_BATCH_SIZE
    # None: make_episode draws it as training does (LONG_GAP_SHARE); else the share decides.
    assert set(asked) == {None: {None}, 0.0: {False}, 1.0: {True}}[share]


def test_per_field_adaptation_and_calibration_report_each_step(cubes_dir) -> None:
    # A Run's bar moves during them, and a Run no longer wanted stops there (core.jobs).
    from core.model import training
    from core.progress import listening

    heard: list[tuple[str, int, int]] = []
    series = load_series(cubes_dir / "es-field_2019.nc")
    config = TrainConfig(batch_size=8, crop=16, min_frames=6, max_frames=8)
    with listening(lambda *step: heard.append(step)):
        model = training.adapt(FieldFlowNet(TINY), series, 3, config)
    assert heard == [(training.ADAPT_BEAT, i, 3) for i in (0, 1, 2, 3)]  # 0: under way
    episodes = training.validation_episodes(
        [series], 2, config, seed=0, smooth_features=TINY.smooth_features, patch=TINY.patch
    )
    assert episodes
    heard.clear()
    with listening(lambda *step: heard.append(step)):
        training.episode_predictions(model, episodes, samples=2, steps=1)
    assert heard == [(training.MEASURE_BEAT, i + 1, len(episodes)) for i in range(len(episodes))]


def test_per_field_adaptation_tunes_once_per_cube(flanders_cube, tmp_path, monkeypatch) -> None:
    import core.model.training as training

    runs = []
    real_adapt = training.adapt
    monkeypatch.setattr(training, "adapt", lambda *a, **k: runs.append(1) or real_adapt(*a, **k))
    cube = _crop(flanders_cube)
    path = _checkpoint(tmp_path, perturb=True)
    tuned = _options(path, adapt_steps=2)
    clear_field_cache()
    days = cube["time_s2"].values
    first = reconstruct(cube, days[[3]], "model", tuned).s2.values
    reconstruct(cube, days[[5, 6]], "model", tuned)  # another chunk of the same Run
    again = reconstruct(cube, days[[3]], "model", tuned).s2.values
    assert len(runs) == 1
    np.testing.assert_array_equal(first, again)
    other = cube.copy(deep=True)
    t, y, x = np.argwhere(other["valid"].values == 1)[0]
    other["valid"][t, y, x] = 0  # one more cloudy pixel is a different field state
    reconstruct(other, days[[3]], "model", tuned)
    assert len(runs) == 2
    clear_field_cache()
    retuned = reconstruct(cube, days[[3]], "model", tuned).s2.values
    assert len(runs) == 3
    np.testing.assert_allclose(retuned, first, atol=1e-5)  # seeded: the cache changes no answer


def test_per_field_adaptation_skips_too_short_series_and_says_so(flanders_cube, tmp_path) -> None:
    # Since 2026-12-05 not an error: a batch failed such a field, and the app's Run went on
    # untuned. Every caller now goes on untuned, and the output says why.
    from core.season import fit_notes

    path = _checkpoint(tmp_path, perturb=True)
    cube = _crop(flanders_cube, frames=slice(0, 3))
    query = cube["time_s2"].values[[1]]
    out = reconstruct(cube, query, "model", _options(path, adapt_steps=2))
    plain = reconstruct(cube, query, "model", _options(path))
    np.testing.assert_array_equal(out["s2"].values, plain["s2"].values)
    assert out.attrs["model_tuning_skipped"] == 1 and plain.attrs["model_tuning_skipped"] == 0
    assert fit_notes(out.attrs)[0].startswith("Not tuned to this field: tuning needs at least 4")
    with pytest.raises(InputError, match="--adapt-steps must be between 0 and 5000"):
        reconstruct(cube, query, "model", _options(path, adapt_steps=-1))


def test_calibration_fits_the_spread_to_80_percent_coverage(cubes_dir) -> None:
    from core.model.training import calibrate, validation_episodes

    series = load_series(cubes_dir / "es-field_2019.nc")
    config = TrainConfig(crop=16, min_frames=6, max_frames=8)
    episodes = validation_episodes([series], 4, config, 0, TINY.smooth_features)
    assert len(episodes) == 4
    torch.manual_seed(0)
    figures = calibrate(FieldFlowNet(TINY), episodes, samples=8, steps=2)
    assert figures["n_values"] > 1000
    assert figures["coverage_calibrated"] == pytest.approx(0.8, abs=0.01)
    assert figures["spread_scale"] != pytest.approx(1.0, abs=0.01)
    short = dataclasses.replace(series, clear_s2=series.clear_s2[:3])
    assert validation_episodes([short], 4, config, 0) == []  # too short: none, not an error


def test_a_fields_observations_still_lend_real_cloud_masks_to_its_episodes(flanders_cube) -> None:
    from core.model.training import series_from_cube
    from core.reconstruct import observations

    # Per-field tuning and calibration see the cube as methods do: NaN wherever not clear.
    raw = series_from_cube(flanders_cube, "raw")
    seen = series_from_cube(observations(flanders_cube), "observed")
    np.testing.assert_allclose(seen.clear_fraction, raw.clear_fraction)
    assert ((seen.clear_fraction > 0.1) & (seen.clear_fraction < 0.9)).sum() >= 10


def test_per_field_calibration_rescales_the_band_from_clear_pixels_only(
    flanders_cube, tmp_path
) -> None:
    from core.model.inference import cached_checkpoint, default_steps, field_checkpoint

    path = _checkpoint(tmp_path, perturb=True)
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6]] + np.timedelta64(1, "D")
    plain_options = _options(path, samples=8)
    fitted = dataclasses.replace(plain_options, calibrate_field=True, error_band=False)
    clear_field_cache()
    a = reconstruct(bright, query, "model", fitted)
    clear_field_cache()
    b = reconstruct(dark, query, "model", fitted)
    np.testing.assert_array_equal(a["s2_p90"].values, b["s2_p90"].values)  # hidden values unseen
    plain = reconstruct(bright, query, "model", plain_options)
    np.testing.assert_array_equal(a["s2"].values, plain["s2"].values)  # the mean is untouched
    base = cached_checkpoint(path, "cpu")
    field = field_checkpoint(base, bright, fitted, default_steps(base, fitted), "cpu")
    assert field.spread_scale != pytest.approx(base.spread_scale, rel=0.01)
    assert field.model is base.model  # calibration trains nothing
    width = (a["s2_p90"] - a["s2_p10"]).values
    plain_width = (plain["s2_p90"] - plain["s2_p10"]).values
    ok = plain_width > 1e-4
    ok &= (a["s2_p10"].values > 0) & (plain["s2_p10"].values > 0)  # not cut at 0 reflectance
    ratio = np.median(width[ok] / plain_width[ok])
    assert ratio == pytest.approx(field.spread_scale / base.spread_scale, rel=0.02)
    # One sample has no band to fit; a series too short to hide anything keeps the spread.
    single = dataclasses.replace(fitted, samples=1)
    assert field_checkpoint(base, bright, single, 8, "cpu") is base
    short = _crop(flanders_cube, frames=slice(0, 3))
    assert field_checkpoint(base, short, fitted, 8, "cpu").spread_scale == base.spread_scale


def test_tuning_and_calibration_work_on_a_field_whose_side_is_not_a_whole_patch(
    flanders_cube, tmp_path
) -> None:
    from core.model.inference import cached_checkpoint, field_checkpoint

    cube = flanders_cube.isel(y=slice(0, 13), x=slice(0, 17), time_s2=slice(0, 20))
    path = _checkpoint(tmp_path, perturb=True)
    base = cached_checkpoint(path, "cpu")
    options = _options(path, samples=8, adapt_steps=2, calibrate_field=True)
    clear_field_cache()
    field = field_checkpoint(base, cube, options, 2, "cpu")
    assert field.model is not base.model  # tuned ...
    assert field.spread_scale != pytest.approx(base.spread_scale, rel=0.01)  # ... and calibrated
    query = cube["time_s2"].values[[4]] + np.timedelta64(1, "D")
    out = reconstruct(cube, query, "model", dataclasses.replace(options, steps=2))
    assert out["s2_p90"].shape[-2:] == (13, 17)


def test_a_training_episode_s_hidden_pixels_never_reach_its_inputs(cubes_dir) -> None:
    """What an episode scores is what it hid: wherever its truth holds a value, the network's
    input reads the pixel as not clear and holds no reflectance there (review 28: leaving the
    hidden pixels in the inputs was caught only by a band test, by its side effects)."""
    series = load_series(cubes_dir / "be-flanders-a_2017-2018.nc")
    episodes = seen = 0
    for seed in range(8):
        episode = make_episode(series, 10, 16, np.random.default_rng(seed), 0.0, long_gap=None)
        if episode is None:
            continue
        episodes += 1
        hidden = np.isfinite(episode.truth).any(axis=1)  # (T, H, W), as the network sees them
        assert hidden.any()
        channels = episode.inputs.s2
        clear_flag = channels[:, N_BANDS]
        assert (clear_flag[hidden] == 0).all()
        assert (channels[:, :N_BANDS].transpose(1, 0, 2, 3)[:, hidden] == 0).all()
        seen += int((clear_flag[~hidden] == 1).sum())
    assert episodes >= 6
    assert seen > 0  # what was not hidden is still seen


def test_long_gap_can_be_forced_for_stratified_episodes(cubes_dir) -> None:
    series = load_series(cubes_dir / "es-field_2019.nc")
    more = 0
    for seed in range(6):
        hidden = {}
        for gap in (False, True):
            episode = make_episode(series, 10, 16, np.random.default_rng(seed), 0.0, long_gap=gap)
            hidden[gap] = -1 if episode is None else int(np.isfinite(episode.truth).sum())
        assert hidden[True] >= hidden[False]  # the same episode, plus a gap
        more += hidden[True] > hidden[False]
    assert more >= 3


@pytest.mark.parametrize("jitter", [0.0, 0.2])
def test_spectral_jitter_scales_each_band_of_an_episode(cubes_dir, jitter) -> None:
    series = load_series(cubes_dir / "be-flanders-a_2017-2018.nc")
    level = np.linspace(0.05, 0.5, 10, dtype=np.float32)[None, :, None, None]
    flat = dataclasses.replace(
        series, clear_s2=np.where(np.isfinite(series.clear_s2), level, np.nan)
    )
    rng = np.random.default_rng(3)
    episode = None
    while episode is None:
        episode = make_episode(flat, 10, 16, rng, s1_dropout=0.0, spectral_jitter=jitter)
    gains = []
    for band in range(10):
        values = episode.truth[:, band][np.isfinite(episode.truth[:, band])]
        assert values.size > 0
        assert np.ptp(values) < 1e-6  # one gain per band for the whole episode
        gains.append(values[0] / level[0, band, 0, 0])
    gains = np.array(gains)
    if jitter == 0:
        np.testing.assert_allclose(gains, 1.0, rtol=1e-6)
    else:
        assert np.abs(np.log(gains)).max() > 0.01  # reflectance was changed ...
        assert np.ptp(np.log(gains)) > 0.01  # ... and not by one gain for all bands
        assert np.abs(np.log(gains)).max() < 6 * 1.5 * jitter


def test_spread_fit_matches_the_band_of_every_scaled_draw() -> None:
    """fit_spread sorts the samples once; it must find the scale a search over the band of
    ``mean + s * draws`` itself finds, and that scale must cover 80 %."""
    from core.model.calibration import coverage, fit_spread

    rng = np.random.default_rng(3)
    n = 20_000
    mean = rng.normal(0.2, 0.1, n)
    draws = rng.normal(0.0, 1.0, (5, n)) * rng.gamma(2.0, 0.02, n)  # per-value spread
    truth = mean + rng.standard_t(3, n) * 0.03  # heavy tails, unrelated to the spread

    def covered(scale: float) -> float:
        low, high = np.percentile(mean[None] + scale * draws, [10, 90], axis=0)
        return float(np.mean((truth >= low) & (truth <= high)))

    scale = fit_spread(mean, draws, truth)
    assert covered(scale) == pytest.approx(0.8, abs=1e-3)
    assert covered(scale * 0.98) < 0.8 <= covered(scale * 1.02)
    for s in (0.3, 1.0, scale, 4.0):
        assert coverage(mean, draws, truth, s) == pytest.approx(covered(s), abs=1e-4)


def test_samples_keep_their_spread_where_tiles_overlap(flanders_cube, tmp_path) -> None:
    """Two tiles' samples are independent draws: averaged with the ramp weights they would
    shrink the band in the overlap (to 0.71 x at its centre); taken from one tile they don't."""
    path = _checkpoint(tmp_path, perturb=True)
    cube = flanders_cube.isel(y=slice(0, 32), x=slice(0, 56), time_s2=slice(0, 20))
    assert tile_origins(56, TINY.tile, TINY.tile_overlap) == [0, 24]  # overlap: columns 24-31
    times = cube["time_s2"].values
    query = times[[3, 9, 15]] + np.timedelta64(1, "D")
    options = _options(path, samples=48, keep_samples=True, smooth_days=0)  # the tiles alone
    out = reconstruct(cube, query, "model", options)
    samples = out["s2_samples"].values  # (K, Q, B, H, W)
    spread = np.nanstd(samples, axis=0).mean(axis=(0, 1, 2))  # per column
    single, overlap = spread[8:20].mean(), spread[26:30].mean()
    assert overlap / single == pytest.approx(1.0, abs=0.12)
    # The mean is the ramp-weighted blend, and the samples sit around it.
    np.testing.assert_allclose(samples.mean(axis=0), out["s2"].values, atol=spread.max())


def test_a_tile_s_blend_weight_falls_towards_each_of_its_edges() -> None:
    """Over ``overlap`` pixels from every edge the weight falls linearly (1/4, 2/4, 3/4 for 3
    pixels), 1 inside; so across two tiles' overlap one fades out as the other fades in
    (review 29: a ramp rising again at the far edges passed every test)."""
    from core.model.inference import blend_weights

    weights = blend_weights(10, 12, 3)
    assert weights.shape == (10, 12)
    row = weights[5]
    np.testing.assert_allclose(row, [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(weights[:, 6], [0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])
    # two tiles of 12 px overlapping by 3: across the overlap the first's share falls
    first, second = blend_weights(1, 12, 3)[0, 9:], blend_weights(1, 12, 3)[0, :3]
    share = first / (first + second)
    assert np.all(np.diff(share) < 0)
    assert blend_weights(4, 4, 0).min() == 1.0  # no overlap: all 1


def test_each_pixel_takes_its_samples_from_the_tile_it_is_deepest_in() -> None:
    from core.model.inference import blend_weights, patches_touched, tile_owners

    origins = tile_origins(100, 64, 16)  # [0, 36]
    tiles = [(y0, x0) for y0 in origins for x0 in origins]
    owner = tile_owners(100, 100, tiles, 64, 16)
    assert set(np.unique(owner)) == {0, 1, 2, 3}
    ramps = []
    for y0, x0 in tiles:  # every tile's ramp over the whole field, 0 outside it
        full = np.zeros((100, 100), np.float32)
        full[y0 : y0 + 64, x0 : x0 + 64] = blend_weights(64, 64, 16)
        ramps.append(full)
    deepest = np.max(ramps, axis=0)
    np.testing.assert_array_equal(np.take_along_axis(np.array(ramps), owner[None], 0)[0], deepest)
    assert owner[10, 10] == 0 and owner[90, 90] == 3 and owner[10, 90] == 1
    # Tokens to sample: the patches holding an owned pixel (a 6 x 10 block in 4 px patches).
    owned = np.zeros((8, 12), bool)
    owned[2:8, 2:12] = True
    touched = patches_touched(owned, 4).reshape(2, 3)
    np.testing.assert_array_equal(touched, [[True, True, True], [True, True, True]])
    owned[:, :] = False
    owned[5, 9] = True
    np.testing.assert_array_equal(patches_touched(owned, 4).reshape(2, 3), [[0, 0, 0], [0, 0, 1]])


def test_flow_precision_follows_the_setting_and_a_gpu_stays_float32(monkeypatch) -> None:
    from core.model.network import FLOW_BF16_ENV, cpu_has_native_bf16, flow_in_bf16

    monkeypatch.delenv(FLOW_BF16_ENV, raising=False)
    assert flow_in_bf16("cpu") == cpu_has_native_bf16()
    for setting, expected in (("1", True), ("0", False), (" 1 ", True)):
        monkeypatch.setenv(FLOW_BF16_ENV, setting)
        assert flow_in_bf16("cpu") is expected
        assert flow_in_bf16("cuda") is False
    monkeypatch.setenv(FLOW_BF16_ENV, "yes")
    with pytest.raises(InputError, match=r"must be 1 .* or 0"):
        flow_in_bf16("cpu")


def test_bf16_flow_moves_the_samples_a_little_and_the_estimate_not_at_all(
    flanders_cube, monkeypatch
) -> None:
    """The shipped checkpoint: sampled in bfloat16 the draws stay within a few per cent of
    their spread of the float32 draws from the same noise; the best estimate is the same."""
    from core.model.network import FLOW_BF16_ENV

    cube = _crop(flanders_cube, size=32, frames=slice(0, 24))
    query = cube["time_s2"].values[[3, 10, 17]]
    options = ReconstructOptions(samples=6, seed=2, keep_samples=True, blend_field=False)
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv(FLOW_BF16_ENV, setting)
        results[setting] = reconstruct(cube, query, "model", options)
    plain, half = results["0"], results["1"]
    assert plain.attrs["model_flow_precision"] == "float32"
    assert half.attrs["model_flow_precision"] == "bfloat16"
    np.testing.assert_array_equal(plain["s2"].values, half["s2"].values)
    draws_a, draws_b = plain["s2_samples"].values, half["s2_samples"].values
    spread = np.nanstd(draws_a - plain["s2"].values[None])
    moved = np.nanmean(np.abs(draws_a - draws_b))
    assert spread > 0.005 and 0 < moved < 0.05 * spread


@pytest.mark.parametrize("config", [TINY, WHITTAKER], ids=["plain", "whittaker"])
def test_tile_inputs_are_the_same_in_order_with_any_number_of_threads(
    flanders_cube, monkeypatch, config
) -> None:
    # With the Whittaker channels, worked out once for the field and cut to each tile: the
    # same as the tile's own (the smoother is per pixel), padding included (38 px: 2 px pad).
    from core.model.features import series_inputs
    from core.model.inference import (
        FEATURE_THREADS_ENV,
        feature_threads,
        pad_to_multiple,
        prepare_series,
        tile_frames,
        tile_inputs,
    )

    size = 38
    cube = _crop(flanders_cube, size=size, frames=slice(0, 16))
    frames = prepare_series(cube, cube["time_s2"].values[[2, 9]]).frames
    origins = tile_origins(size, 32, 8)
    tiles = [(y0, x0) for y0 in origins for x0 in origins]
    runs = {}
    for threads in ("0", "1", "3"):
        monkeypatch.setenv(FEATURE_THREADS_ENV, threads)
        assert feature_threads("cpu") == feature_threads("cuda") == int(threads)
        runs[threads] = list(tile_inputs(frames, tiles, config, feature_threads()))
    for y0, x0 in (tiles[0], tiles[-1]):
        tile, h, w = pad_to_multiple(
            tile_frames(frames, slice(y0, min(y0 + 32, size)), slice(x0, min(x0 + 32, size))),
            config.patch,
        )
        expected = series_inputs(tile, config.smooth_features, config.whittaker_features)
        index = tiles.index((y0, x0))
        for run in runs.values():
            assert len(run) == len(tiles) == 4
            assert run[index][:2] == (h, w)
            np.testing.assert_allclose(run[index][2].s2, expected.s2, atol=1e-6)
    assert runs["0"][-1][2].s2.shape[1] == s2_channel_count(
        config.smooth_features, config.whittaker_features
    )
    for run in runs.values():
        for (h_a, w_a, a), (h_b, w_b, b) in zip(runs["0"], run, strict=True):
            assert (h_a, w_a) == (h_b, w_b)
            np.testing.assert_array_equal(a.s2, b.s2)
            np.testing.assert_array_equal(a.base, b.base)
    monkeypatch.setenv(FEATURE_THREADS_ENV, "many")
    with pytest.raises(InputError, match="whole number of threads"):
        feature_threads()
    monkeypatch.delenv(FEATURE_THREADS_ENV)
    assert feature_threads("cpu") == 0 and 1 <= feature_threads("cuda") <= 4


def test_unseen_share_marks_an_episodes_blank_frames_and_reaches_the_network(cubes_dir) -> None:
    # Training can meet blank frames as inference meets dates with no acquisition: unseen.
    series = load_series(cubes_dir / "es-field_2019.nc")
    marked = []
    for seed in range(8):
        episode = make_episode(
            series,
            12,
            16,
            np.random.default_rng(seed),
            0.0,
            smooth_features=TINY.smooth_features,
            long_gap=True,
            unseen_share=1.0,
        )
        if episode is None or episode.unseen is None:
            continue
        marked.append(episode)
        blank = ~(episode.inputs.s2[:, 10] > 0).any(axis=(1, 2))  # channel 10: the clear flag
        np.testing.assert_array_equal(episode.unseen, blank)
        plain = make_episode(series, 12, 16, np.random.default_rng(seed), 0.0, long_gap=True)
        assert plain.unseen is None
    assert len(marked) >= 4
    batch = collate([marked[0], marked[0]])
    assert batch.unseen is not None and batch.unseen.shape == (2, marked[0].inputs.s2.shape[0])
    torch.manual_seed(0)
    model = FieldFlowNet(TINY)
    with torch.no_grad():
        model.mean_head.weight.normal_(0, 0.05)

    def loss(b) -> float:
        parts = losses(model, b, TrainConfig(), torch.Generator().manual_seed(0))
        return float(parts["l1"])

    assert loss(batch) != loss(dataclasses.replace(batch, unseen=None))


def test_date_jitter_moves_only_blank_frames_and_keeps_the_dates_in_order() -> None:
    # Frames 1, 2 and 4 have no observation; 2 can only move earlier, and only past 1 if it moved.
    days = np.array([0.0, 5.0, 6.0, 7.0, 20.0, 25.0])
    doy = days + 100
    s2 = np.ones((6, 10, 2, 2), np.float32)
    s2[[1, 2, 4]] = np.nan
    moved = []
    for seed in range(40):
        d, y = days.copy(), doy.copy()
        jitter_blank_dates(d, y, s2, slice(0, 6), 1.0, np.random.default_rng(seed))
        assert np.all(np.diff(d) > 0)
        np.testing.assert_array_equal(y - d, doy - days)  # day of year moves with the date
        np.testing.assert_array_equal(d[[0, 3, 5]], days[[0, 3, 5]])  # observed: never moved
        assert d[2] <= 6.0  # the observed frame 1 day later blocks any later shift
        shift = d - days
        assert set(np.abs(shift[[1, 4]])) <= {0.0, 1.0, 2.0}
        moved.append(shift[4])
    assert {-2.0, -1.0, 1.0, 2.0} <= set(moved)  # every shift occurs
    d = days.copy()
    jitter_blank_dates(d, doy.copy(), s2, slice(0, 6), 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(d, days)  # share 0: nothing moves


def test_date_jitter_reaches_the_episodes_dates_and_features(cubes_dir) -> None:
    # A moved frame's inputs are computed at its new date (the interpolation there), as a date
    # off the cadence is at inference; frames with observations keep their dates.
    series = load_series(cubes_dir / "es-field_2019.nc")
    checked = 0
    for seed in range(8):
        kwargs = dict(smooth_features=TINY.smooth_features, long_gap=True)
        plain = make_episode(series, 12, 16, np.random.default_rng(seed), 0.0, **kwargs)
        moved = make_episode(
            series, 12, 16, np.random.default_rng(seed), 0.0, date_jitter=1.0, **kwargs
        )
        if plain is None:
            continue
        blank = ~(plain.inputs.s2[:, 10] > 0).any(axis=(1, 2))  # channel 10: the clear flag
        shift = moved.inputs.days - plain.inputs.days
        assert np.all(shift[~blank] == 0)
        assert set(np.abs(shift[blank])) <= {0.0, 1.0, 2.0}
        np.testing.assert_array_equal(moved.truth, plain.truth)
        if np.any(shift[blank] != 0):
            checked += 1
            t = np.flatnonzero(shift != 0)[0]
            assert not np.allclose(moved.inputs.base[t], plain.inputs.base[t])
    assert checked >= 3


def test_radar_frames_without_a_pixel_of_both_polarizations_change_nothing(
    flanders_cube, tmp_path
) -> None:
    # Review 14: all-NaN S1 frames (a cube from another tool, a crop over a swath's edge)
    # moved the field-mean NDVI by up to 0.011 against the same cube without them.
    path = _checkpoint(tmp_path, perturb=True)
    cube = _crop(flanders_cube)
    q = cube["time_s2"].values[[9]] + np.timedelta64(1, "D")
    options = _options(path, samples=2, seed=3)
    no_s1 = cube.drop_vars(["s1", "time_s1", "polarization", "orbit_state"], errors="ignore")
    empty = cube.copy(deep=True)
    empty["s1"].values[:] = np.nan
    vv_only = cube.copy(deep=True)
    vv_only["s1"].values[:, 1] = np.nan
    expected = reconstruct(no_s1, q, "model", options)
    for variant in (empty, vv_only):
        got = reconstruct(variant, q, "model", options)
        np.testing.assert_array_equal(got["s2"].values, expected["s2"].values)
        np.testing.assert_array_equal(got["s2_p90"].values, expected["s2_p90"].values)
    # real radar with some empty frames among it: as the real radar alone
    some = cube.copy(deep=True)
    some["s1"].values[::3] = np.nan
    kept = cube.isel(time_s1=[i for i in range(cube.sizes["time_s1"]) if i % 3])
    np.testing.assert_array_equal(
        reconstruct(some, q, "model", options)["s2"].values,
        reconstruct(kept, q, "model", options)["s2"].values,
    )


def test_a_field_of_a_few_pixels_is_told_it_is_too_small_not_short_of_acquisitions(
    flanders_cube, tmp_path
) -> None:
    # Review 14: a 3 x 3 px field with 22 clear days was told "too few clear acquisitions"
    # for its blend and its band, and so to choose a longer period.
    from core.season import fit_notes

    path = _checkpoint(tmp_path, perturb=True)
    options = _options(path, samples=8, calibrate_field=True, blend_field=True, seed=1)
    cube = flanders_cube.isel(y=slice(10, 13), x=slice(10, 13), time_s2=slice(0, 60))
    clear_days = int(cube["valid"].values.any(axis=(1, 2)).sum())
    assert clear_days >= 10
    q = cube["time_s2"].values[[20]] + np.timedelta64(1, "D")
    notes = " ".join(fit_notes(reconstruct(cube, q, "model", options).attrs))
    assert "too few clear acquisitions" not in notes, notes
    assert "Field blend: the field is too small to measure it on (too few clear pixels" in notes
    assert "Uncertainty band: the field is too small to fit it on" in notes
    # a field of few clear acquisitions is still told so
    few = flanders_cube.isel(y=slice(0, 24), x=slice(0, 24), time_s2=slice(0, 30)).copy(deep=True)
    clear = np.flatnonzero(few["valid"].values.any(axis=(1, 2)))
    few["valid"].values[clear[2:]] = 0
    notes = " ".join(
        fit_notes(reconstruct(few, few["time_s2"].values[[5]], "model", options).attrs)
    )
    assert "Field blend: too few clear acquisitions to measure it" in notes, notes


def test_a_copy_of_the_same_checkpoint_elsewhere_is_the_same_version(tmp_path) -> None:
    """A Dask worker with its own install of FieldFlow (or its own copy of the models folder)
    holds the same file under another modification time: it is the same model, and a Run
    pinned to it on the app's machine is made with it there (review 19: every model Run on
    such a worker failed as "replaced while this computation was using it"). Another model
    at that path is refused, and the message names that cause too."""
    import shutil

    from core.config import checkpoint_version
    from core.model.inference import cached_checkpoint

    path = Path(_checkpoint(tmp_path, perturb=True))
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    stat = os.stat(copy)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 7 * 10**9))
    assert os.stat(copy).st_mtime_ns != os.stat(path).st_mtime_ns
    version = checkpoint_version(path)
    assert checkpoint_version(copy) == version
    loaded_checkpoint.cache_clear()
    assert cached_checkpoint(str(copy), "cpu", version).weights_sha256 == (
        cached_checkpoint(str(path), "cpu").weights_sha256
    )
    _replace_checkpoint(str(copy), seed=3)
    loaded_checkpoint.cache_clear()  # a process that had not loaded it (a worker joining)
    assert checkpoint_version(copy) != version
    with pytest.raises(InputError, match="another model than the one the computation began"):
        cached_checkpoint(str(copy), "cpu", version)
    copy.unlink()
    with pytest.raises(InputError, match="or is not at that path on this machine"):
        cached_checkpoint(str(copy), "cpu", version)


def test_a_worker_holding_another_model_at_the_path_is_told_as_such_not_as_replaced(
    flanders_cube, tmp_path
) -> None:
    """Review 21: a worker whose own install of FieldFlow ships another model: every model Run
    failed with "... was replaced or removed while this computation was using it ... Run it
    again", though nothing had been replaced and running again gave the same. This app's file
    is still the version the Run pinned, so the worker's copy is named as the cause."""
    import shutil

    from core.config import DEFAULT_CHECKPOINT, REPO_ROOT
    from core.distributed import connect, submit_reconstruction
    from core.reconstruct import pinned
    from tests.support.dask_processes import DaskProcesses

    install = tmp_path / "install"  # the worker's own FieldFlow, another model in its assets
    shutil.copytree(REPO_ROOT / "core", install / "core", ignore=shutil.ignore_patterns("__py*"))
    (install / "assets").mkdir()
    _replace_checkpoint(str(install / "assets" / DEFAULT_CHECKPOINT.name), seed=5)
    cube = flanders_cube.isel(y=slice(0, 16), x=slice(0, 16), time_s2=slice(0, 12))
    cube = cube.isel(time_s1=slice(0, 12))
    options = pinned(ReconstructOptions(samples=1), "model")
    with DaskProcesses(tmp_path / "dask") as processes:
        processes.worker("own", fieldflow=False, env={"PYTHONPATH": str(install)})
        processes.wait_for_workers(1)
        with connect(processes.address) as cluster, pytest.raises(InputError) as caught:
            submit_reconstruction(cluster, cube, cube["time_s2"].values[3:5], "model", options)
    said = str(caught.value)
    assert said.startswith(
        f"A worker of the Dask cluster at {processes.address} holds another model at the path "
        "of the model checkpoint shipped in assets/ than this app does"
    ), said
    assert "replaced or removed while" not in said and "Run it again" not in said
