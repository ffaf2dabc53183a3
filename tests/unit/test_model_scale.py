"""The scale head: the band follows a per-value residual scale b, which is learned from the
residual alone, never sees hidden pixels, and older checkpoints without it load unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.model.checkpoint import Checkpoint, save_checkpoint
from core.model.config import ModelConfig, TrainConfig
from core.model.inference import clear_field_cache
from core.model.network import FieldFlowNet
from core.model.training import collate, load_initial_weights, load_series, losses, make_episode
from core.reconstruct import ReconstructOptions, reconstruct
from tests.unit.test_model_inference import TINY as INFERENCE_TINY
from tests.unit.test_model_inference import _crop, hidden_bright_and_dark

TINY = dataclasses.replace(INFERENCE_TINY, scale_head=True)


def _save(model: FieldFlowNet, path) -> str:
    save_checkpoint(Checkpoint(model=model, record={"seen_sites": ["nowhere"]}), path)
    clear_field_cache()
    return str(path)


def _model(log_scale_bias: float, perturb_scale: bool = False) -> FieldFlowNet:
    torch.manual_seed(0)
    model = FieldFlowNet(TINY)
    with torch.no_grad():
        model.mean_head.weight.normal_(0, 0.05)
        model.scale_head.bias.fill_(log_scale_bias)
        if perturb_scale:
            model.scale_head.weight.normal_(0, 0.3)
    return model


def test_the_band_widens_with_the_predicted_scale_and_the_estimate_does_not_move(
    flanders_cube, tmp_path
) -> None:
    cube = _crop(flanders_cube, size=16)
    query = cube["time_s2"].values[[4]] + np.timedelta64(1, "D")  # a fully missing frame
    options = {"samples": 6, "seed": 1, "device": "cpu"}
    narrow = reconstruct(
        cube,
        query,
        "model",
        ReconstructOptions(checkpoint=_save(_model(0.0), tmp_path / "a.pt"), **options),
    )
    wide = reconstruct(
        cube,
        query,
        "model",
        ReconstructOptions(checkpoint=_save(_model(np.log(3.0)), tmp_path / "b.pt"), **options),
    )
    np.testing.assert_allclose(wide["s2"].values, narrow["s2"].values, atol=1e-6)
    for bound in ("s2_p10", "s2_p90"):
        offset_narrow = (narrow[bound] - narrow["s2"]).values
        offset_wide = (wide[bound] - wide["s2"]).values
        ok = np.isfinite(offset_narrow) & (np.abs(offset_narrow) > 1e-4)
        ok &= wide["s2_p10"].values > 0  # not cut at the band's floor, 0 reflectance
        assert ok.sum() > 200
        np.testing.assert_allclose(offset_wide[ok], 3.0 * offset_narrow[ok], rtol=1e-3, atol=1e-5)


def test_hidden_pixel_values_never_reach_the_band(flanders_cube, tmp_path) -> None:
    path = _save(_model(-1.0, perturb_scale=True), tmp_path / "m.pt")
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6, 7]]
    options = ReconstructOptions(checkpoint=path, device="cpu", samples=4, seed=0)
    a, b = (reconstruct(c, query, "model", options) for c in (bright, dark))
    for name in ("s2", "s2_p10", "s2_p90"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_the_scale_head_learns_where_the_residual_is_large(cubes_dir) -> None:
    """Trained alone on one batch (trunk frozen), the predicted scale follows |residual|."""
    series = load_series(cubes_dir / "be-flanders-a_2017-2018.nc")
    rng = np.random.default_rng(0)
    episodes = []
    while len(episodes) < 2:
        ep = make_episode(series, 10, 16, rng, s1_dropout=0.0, smooth_features=True, long_gap=True)
        if ep is not None and (not episodes or ep.inputs.s2.shape == episodes[0].inputs.s2.shape):
            episodes.append(ep)
    batch = collate(episodes)
    model = _model(0.0)
    model.requires_grad_(False)
    model.scale_head.requires_grad_(True)
    optimizer = torch.optim.Adam(model.scale_head.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    config = TrainConfig()
    first = float(losses(model, batch, config, generator)["scale_nll"].detach())
    for _ in range(150):
        nll = losses(model, batch, config, generator)["scale_nll"]
        optimizer.zero_grad()
        nll.backward()
        optimizer.step()
    assert float(losses(model, batch, config, generator)["scale_nll"].detach()) < first - 0.5
    with torch.no_grad():
        features = model.encode(batch.s2, batch.s2_days, batch.s1, batch.s1_days)
        h, w = batch.s2.shape[-2:]
        pred = batch.base + model.mean_correction(features, h, w)
        scale = torch.exp(model.log_scale(features, h, w))[batch.target].numpy()
        error = (pred - batch.truth).abs()[batch.target].numpy()
    ranks = [np.argsort(np.argsort(v)) for v in (scale, error)]
    assert np.corrcoef(*ranks)[0, 1] > 0.3
    # Its typical scale is the typical error (the Laplace optimum is the mean |residual|).
    assert np.mean(scale) == pytest.approx(np.mean(error), rel=0.3)


def test_older_checkpoints_have_no_scale_head_and_one_can_be_added() -> None:
    old = {k: v for k, v in TINY.to_dict().items() if k != "scale_head"}
    config = ModelConfig.from_dict(old)
    assert not config.scale_head
    plain = FieldFlowNet(config)
    assert plain.scale_head is None and plain.log_scale(torch.zeros(1, 1, 4, 16), 8, 8) is None
    scaled = FieldFlowNet(TINY)
    load_initial_weights(scaled, plain)
    assert torch.equal(scaled.mean_head.weight, plain.mean_head.weight)
    with pytest.raises(ValueError, match="config differs"):
        load_initial_weights(FieldFlowNet(dataclasses.replace(TINY, width=32)), plain)
    with pytest.raises(ValueError, match="config differs"):
        load_initial_weights(plain, scaled)  # a scale head is never silently dropped
