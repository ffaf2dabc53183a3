"""Flow maths against analytic answers, and the network's time-encoding properties."""

from __future__ import annotations

import math

import pytest
import torch

from core.model.config import ModelConfig
from core.model.features import s2_channel_count
from core.model.flow import euler_solve, heun_solve, path_point, velocity_target
from core.model.network import FieldFlowNet, apply_rotary, rotary_angles

MU, SIGMA = 2.0, 0.5


def gaussian_velocity(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Exact rectified-flow velocity from N(0, 1) noise to N(MU, SIGMA^2) data."""
    t = tau.view(-1, *([1] * (x.dim() - 1)))
    var = (1 - t) ** 2 + t**2 * SIGMA**2
    return MU + (t * SIGMA**2 - (1 - t)) * (x - t * MU) / var


def test_path_and_target_are_the_straight_line() -> None:
    noise, data = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, -1.0]])
    assert torch.equal(path_point(noise, data, torch.tensor([0.0])), noise)
    assert torch.equal(path_point(noise, data, torch.tensor([1.0])), data)
    assert torch.allclose(path_point(noise, data, torch.tensor([0.25])), torch.tensor([[0.5, 0.5]]))
    assert torch.equal(velocity_target(noise, data), data - noise)


@pytest.mark.parametrize(
    ("solver", "steps", "tol"), [(euler_solve, 200, 2e-2), (heun_solve, 20, 2e-3)]
)
def test_solvers_transport_noise_to_the_analytic_map(solver, steps, tol) -> None:
    z = torch.linspace(-2, 2, 9)[:, None]
    x1 = solver(gaussian_velocity, z, steps)
    # The flow of a Gaussian path is the monotone map z -> MU + SIGMA z.
    assert torch.allclose(x1, MU + SIGMA * z, atol=tol)


def test_each_solver_asks_the_velocity_at_its_scheme_s_times() -> None:
    """dx/dtau = 2 tau from x = 0: explicit Euler (the velocity at each step's start) ends at
    1 - 1/steps exactly, Heun (the trapezoid of both ends) at 1 exactly (review 29: Euler read
    at each step's end passed the tolerance of the transport test above)."""
    seen: list[float] = []

    def ramp(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        seen.append(float(tau[0]))
        return (2 * tau).view(-1, 1).expand_as(x)

    x0 = torch.zeros(3, 1, dtype=torch.float64)
    end = euler_solve(ramp, x0, 4)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert torch.allclose(end, torch.full_like(x0, 0.75))
    seen.clear()
    end = heun_solve(ramp, x0, 4)
    assert seen == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]
    assert torch.allclose(end, torch.ones_like(x0))


def test_heun_beats_euler_at_equal_steps() -> None:
    z = torch.linspace(-2, 2, 9)[:, None]
    exact = MU + SIGMA * z
    err_euler = (euler_solve(gaussian_velocity, z, 8) - exact).abs().max()
    err_heun = (heun_solve(gaussian_velocity, z, 8) - exact).abs().max()
    assert err_heun < err_euler / 4


def test_rotary_scores_depend_only_on_day_differences() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    days = torch.tensor([0.0, 3.0, 10.0, 40.0, 200.0])

    def scores(d: torch.Tensor) -> torch.Tensor:
        a = rotary_angles(d, 16, 4.0, 1500.0)
        return apply_rotary(q, a.cos(), a.sin()) @ apply_rotary(k, a.cos(), a.sin()).T

    assert torch.allclose(scores(days), scores(days + 1234.5), atol=1e-3)
    assert not torch.allclose(scores(days), scores(days * 2), atol=1e-2)


def test_network_is_invariant_to_a_shift_of_all_dates() -> None:
    torch.manual_seed(0)
    config = ModelConfig(width=16, depth=2, heads=2, flow_hidden=16, flow_layers=1)
    net = FieldFlowNet(config).eval()
    s2 = torch.randn(1, 5, s2_channel_count(config.smooth_features), 8, 8)
    s1 = torch.randn(1, 3, 7, 8, 8)
    d2 = torch.tensor([[0.0, 5.0, 12.0, 30.0, 31.0]])
    d1 = torch.tensor([[2.0, 14.0, 29.0]])
    with torch.no_grad():
        a = net.encode(s2, d2, s1, d1)
        b = net.encode(s2, d2 + 500.0, s1, d1 + 500.0)
        c = net.encode(s2, d2, s1, d1 + 20.0)  # moving S1 relative to S2 must matter
    assert torch.allclose(a, b, atol=1e-3)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("time_buckets", [0, 8])
@pytest.mark.parametrize("episodes", [1, 2])
def test_unseen_frames_change_nothing_but_their_own_features(time_buckets, episodes) -> None:
    # Query dates with no acquisition enter unseen: each reads the series, none is read. Then
    # the acquisitions' features are those without any query date, and a query date's are the
    # same whatever other query dates share the pass (a daily curve, in any grouping).
    torch.manual_seed(0)
    config = ModelConfig(
        width=16, depth=2, heads=2, flow_hidden=16, flow_layers=1, time_buckets=time_buckets
    )
    net = FieldFlowNet(config).eval()
    if net.time_bias is not None:
        torch.nn.init.normal_(net.time_bias)
    channels = s2_channel_count(config.smooth_features)
    acquisitions = torch.randn(episodes, 5, channels, 8, 8)
    queries = torch.randn(episodes, 3, channels, 8, 8)
    s1, d1 = torch.randn(episodes, 2, 7, 8, 8), torch.tensor([[3.0, 20.0]]).repeat(episodes, 1)
    d_acq = torch.tensor([[0.0, 5.0, 12.0, 30.0, 31.0]]).repeat(episodes, 1)
    d_query = torch.tensor([[7.0, 8.0, 25.0]]).repeat(episodes, 1)
    unseen = torch.tensor([[False] * 5 + [True] * 3]).repeat(episodes, 1)
    with torch.no_grad():
        alone = net.encode(acquisitions, d_acq, s1, d1)
        both = net.encode(
            torch.cat([acquisitions, queries], 1), torch.cat([d_acq, d_query], 1), s1, d1, unseen
        )
        one = net.encode(
            torch.cat([acquisitions, queries[:, 1:2]], 1),
            torch.cat([d_acq, d_query[:, 1:2]], 1),
            s1,
            d1,
            unseen[:, :6],
        )
        seen_by_all = net.encode(
            torch.cat([acquisitions, queries], 1), torch.cat([d_acq, d_query], 1), s1, d1
        )
    assert torch.allclose(both[:, :5], alone, atol=1e-5)
    assert torch.allclose(both[:, 6], one[:, 5], atol=1e-5)
    assert not torch.allclose(seen_by_all[:, :5], alone, atol=1e-3)  # plain attention reads them


def test_patchify_round_trip() -> None:
    net = FieldFlowNet(ModelConfig(width=16, depth=1, heads=2, flow_hidden=16, flow_layers=1))
    x = torch.arange(2 * 3 * 10 * 8 * 12, dtype=torch.float32).view(2, 3, 10, 8, 12)
    tokens = net.patchify(x)
    assert tokens.shape == (2, 3, (8 // 4) * (12 // 4), 10 * 16)
    assert torch.equal(net.unpatchify(tokens, 8, 12), x)
    assert math.isclose(float(tokens[0, 0, 0, 0]), float(x[0, 0, 0, 0, 0]))


def test_flow_velocity_given_features_equals_the_full_forward() -> None:
    """Sampling computes the features' share of the flow head once; it must be the same
    velocity as the full forward on the features repeated for every sample."""
    torch.manual_seed(0)
    config = ModelConfig(width=16, depth=1, heads=2, flow_hidden=32, flow_layers=2)
    head = FieldFlowNet(config).flow_head
    samples, tokens = 3, 7
    features = torch.randn(tokens, config.width)
    state = torch.randn(samples * tokens, config.patch**2 * 10)
    for tau in (torch.full((samples * tokens,), 0.25), torch.rand(samples * tokens)):
        full = head(state, tau, features.repeat(samples, 1))
        torch.testing.assert_close(head.velocity_given(features)(state, tau), full)
