"""Rectified flow: the probability path, its training target and ODE solvers.

Convention (torchcfm / flow_matching, the opposite of the AGFlow paper's): tau = 0 is noise,
tau = 1 is data. Path x_tau = (1 - tau) * noise + tau * data; velocity target data - noise;
sampling integrates dx/dtau = v(x, tau) from tau = 0 to 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""v(x (M, ...), tau (M,)) -> velocity shaped like x."""


def path_point(noise: torch.Tensor, data: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """x_tau on the straight path; ``tau`` (M,) broadcasts over the trailing dims."""
    t = tau.view(-1, *([1] * (data.dim() - 1)))
    return (1.0 - t) * noise + t * data


def velocity_target(noise: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """The conditional velocity the network regresses onto."""
    return data - noise


def sample_tau(
    n: int, generator: torch.Generator | None = None, device: str = "cpu"
) -> torch.Tensor:
    """Training times: logit-normal(0, 1), which weights the middle of the path (helps few-step
    sampling)."""
    return torch.sigmoid(torch.randn(n, generator=generator, device=device))


def euler_solve(velocity: Velocity, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate from tau = 0 to 1 with ``steps`` explicit Euler steps."""
    x = x0
    dt = 1.0 / steps
    for i in range(steps):
        tau = torch.full((x.shape[0],), i * dt, dtype=x.dtype, device=x.device)
        x = x + dt * velocity(x, tau)
    return x


def heun_solve(velocity: Velocity, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate from tau = 0 to 1 with ``steps`` Heun (trapezoidal predictor-corrector) steps."""
    x = x0
    dt = 1.0 / steps
    for i in range(steps):
        tau0 = torch.full((x.shape[0],), i * dt, dtype=x.dtype, device=x.device)
        v0 = velocity(x, tau0)
        x_pred = x + dt * v0
        v1 = velocity(x_pred, tau0 + dt)
        x = x + 0.5 * dt * (v0 + v1)
    return x


SOLVERS: dict[str, Callable[[Velocity, torch.Tensor, int], torch.Tensor]] = {
    "euler": euler_solve,
    "heun": heun_solve,
}
