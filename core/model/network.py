"""The network: a space-time transformer over S2 and S1 frames at their own dates.

Shapes: a batch of E episodes, each with T S2 frames and T1 S1 frames (padded to the longest
in the batch), H x W pixels cut into P = (H/p) x (W/p) patch tokens of width D.

One block = spatial attention among the P tokens of each frame (S2 and S1 frames alike), then
temporal attention among all frames of one patch location (S2 and S1 together; rotary encoding
of the real acquisition day, optionally a learned bias on bucketed day differences
(``ModelConfig.time_buckets``, off by default); no date pairing or resampling is ever
done), then an MLP. The mean head maps each S2 token to a correction of the leave-one-out
interpolation (zero-initialised: the untrained model *is* the interpolation). The flow head
is a small conditional velocity field over the residual of one patch, conditioned on the
token's features: it is run many times per request while the trunk runs once. With
``ModelConfig.scale_head``, a scale head predicts how large each value's residual is (a Laplace
scale b per pixel and band); the flow head then generates residual / b, and samples are
mean + b x (generated), so the spread follows the expected error from pixel to pixel.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import InputError
from core.model.config import VIEW_COUNTS, ModelConfig
from core.model.features import (
    N_BANDS,
    S1_CHANNELS,
    S1_SEASON_CHANNELS,
    S2_SEASON_CHANNELS,
    s2_channel_count,
)

INITIAL_LOG_SCALE = math.log(0.15)
"""Initial log scale of the residual, model units (0.15 = reflectance error 0.03)."""
LOG_SCALE_RANGE = (-7.0, 3.0)
"""Clamp of the predicted log scale (about 2e-4 to 4 reflectance)."""
TIME_EMBED = 16
"""Width of the flow time embedding (sin and cos of 8 octaves)."""
FLOW_BF16_ENV = "FIELDFLOW_FLOW_BF16"
"""Environment variable: ``1`` / ``0`` samples the flow head in bfloat16 on the CPU or not;
unset, it does where the CPU multiplies bfloat16 natively (:func:`cpu_has_native_bf16`)."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bfloat16 instructions (AVX512-BF16 or AMX; read from
    /proc/cpuinfo, so False off Linux). Elsewhere bfloat16 is emulated and slower than float32.
    Decided by the hardware, not by a timing, so one machine always samples the same way."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.partition(":")[2].split()))
    return False


def flow_in_bf16(device_type: str) -> bool:
    """Whether the flow head samples in bfloat16 on ``device_type`` ("cpu" or "cuda").

    Only on the CPU (a GPU samples in float32): the flow head's matrix products are the
    largest part of a Run's CPU time, and with native bfloat16 they take 2.2-2.8 x less
    (``benchmarks/flow_bf16.txt``: be-flanders-a, 45 k residuals x 4 steps, 0.98 -> 0.36 s).
    The samples move by 0.0005 reflectance on average (under 1 % of their spread); the best
    estimate does not depend on them. See :data:`FLOW_BF16_ENV`.
    """
    if device_type != "cpu":
        return False
    text = os.environ.get(FLOW_BF16_ENV, "").strip()
    if text in ("0", "1"):
        return text == "1"
    if text:
        raise InputError(f"{FLOW_BF16_ENV} must be 1 (bfloat16) or 0 (float32), not {text!r}.")
    return cpu_has_native_bf16()


DIHEDRAL_VIEWS = (
    (0, False),
    (2, False),
    (0, True),
    (2, True),
    (1, False),
    (3, False),
    (1, True),
    (3, True),
)
"""The eight views of a square, as (quarter turns, then mirrored left-right), in the order
:meth:`FieldFlowNet.estimate` takes them: the first is the input as given, and the first four
keep its height and width."""


def to_view(x: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """``x`` (..., H, W) seen in ``view``: turned, then mirrored, as training augments."""
    turns, mirrored = view
    x = torch.rot90(x, turns, dims=(-2, -1))
    return x.flip(-1) if mirrored else x


def from_view(x: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """The inverse of :func:`to_view`."""
    turns, mirrored = view
    if mirrored:
        x = x.flip(-1)
    return torch.rot90(x, -turns, dims=(-2, -1))


def time_embedding(tau: torch.Tensor) -> torch.Tensor:
    """Flow time tau (M,) in [0, 1] -> (M, TIME_EMBED) sines and cosines of 8 octaves."""
    freqs = torch.arange(TIME_EMBED // 2, device=tau.device, dtype=tau.dtype)
    phase = tau[:, None] * (2.0**freqs) * math.pi
    return torch.cat([phase.sin(), phase.cos()], dim=1)


def rotary_angles(
    days: torch.Tensor, dim: int, min_period: float, max_period: float
) -> torch.Tensor:
    """Rotation angles for continuous positions ``days`` (..., N) -> (..., N, dim // 2)."""
    periods = torch.logspace(
        math.log10(min_period), math.log10(max_period), dim // 2, device=days.device
    )
    return days[..., None] * (2 * math.pi / periods)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + dim/2) of ``x`` (..., N, dim) by angles given as their
    ``cos``, ``sin`` (..., N, dim // 2). Relative: q.k depends only on angle differences."""
    half = x.shape[-1] // 2
    x = x.contiguous()  # q and k arrive as strided views of qkv: copying first is faster
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def bucket_day_differences(days: torch.Tensor, buckets: int) -> torch.Tensor:
    """|day_i - day_j| (..., N, N) into ``buckets`` log-spaced classes (0: same day)."""
    diff = (days[..., :, None] - days[..., None, :]).abs()
    scaled = torch.log2(1.0 + diff) * (buckets - 1) / math.log2(1.0 + 1024.0)
    return scaled.floor().clamp(0, buckets - 1).long()


class SpatialAttention(nn.Module):
    """Self-attention among the patch tokens of one frame: (F, P, D) -> (F, P, D)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, tokens, width = x.shape
        qkv = self.qkv(self.norm(x)).view(frames, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(y.transpose(1, 2).reshape(frames, tokens, width))


class TemporalAttention(nn.Module):
    """Attention among all frames at one patch location, timed by real acquisition days.

    Input (S, N, D) for S sequences (episode x patch) of N frames; ``rotary`` the (cos, sin)
    of the frames' day angles (S, 1, N, head_dim // 2); ``bias`` None, an additive float mask
    or a bool mask (True: may attend), broadcastable to (S, heads, N, N).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.width // config.heads
        self.config = config
        self.norm = nn.LayerNorm(config.width)
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None
    ) -> torch.Tensor:
        seqs, n, width = x.shape
        qkv = self.qkv(self.norm(x)).view(seqs, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (S, heads, N, hd)
        q = apply_rotary(q, *rotary)
        k = apply_rotary(k, *rotary)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return x + self.out(y.transpose(1, 2).reshape(seqs, n, width))


class Block(nn.Module):
    """Spatial attention, temporal attention, MLP (all pre-norm residual)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.spatial = SpatialAttention(config.width, config.heads)
        self.temporal = TemporalAttention(config)
        hidden = int(config.width * config.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.LayerNorm(config.width),
            nn.Linear(config.width, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.width),
        )

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None
    ) -> torch.Tensor:
        episodes, n, tokens, width = x.shape
        x = self.spatial(x.reshape(episodes * n, tokens, width)).view(episodes, n, tokens, width)
        seq = x.permute(0, 2, 1, 3).reshape(episodes * tokens, n, width)
        seq = self.temporal(seq, rotary, bias)
        x = seq.view(episodes, tokens, n, width).permute(0, 2, 1, 3)
        return x + self.mlp(x)


class FlowHead(nn.Module):
    """Velocity v(r_t, t | token features) of the residual of one patch (p*p*10 values)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        out = config.patch * config.patch * N_BANDS
        layers: list[nn.Module] = [
            nn.Linear(out + config.width + TIME_EMBED, config.flow_hidden),
            nn.SiLU(),
        ]
        for _ in range(config.flow_layers - 1):
            layers += [nn.Linear(config.flow_hidden, config.flow_hidden), nn.SiLU()]
        layers.append(nn.Linear(config.flow_hidden, out))
        self.net = nn.Sequential(*layers)
        self.cond = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, config.width))

    def forward(
        self, state: torch.Tensor, tau: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """state (M, p*p*10), tau (M,) in [0, 1], features (M, D) -> velocity (M, p*p*10)."""
        return self.net(torch.cat([state, self.cond(features), time_embedding(tau)], dim=1))

    def velocity_given(
        self, features: torch.Tensor
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The velocity of samples conditioned on ``features`` (M, D), as a function of state
        (K*M, p*p*10) and tau (K*M,), rows sample-major: the same as
        ``forward(state, tau, features.repeat(K, 1))`` (up to rounding), but the features'
        share of the first layer is computed once, not once per sample and solver step."""
        first = self.net[0]
        n_state = first.in_features - features.shape[-1] - TIME_EMBED
        w_state, w_cond, w_time = (
            w.T.contiguous()
            for w in first.weight.split([n_state, features.shape[-1], TIME_EMBED], dim=1)
        )
        fixed = torch.addmm(first.bias, self.cond(features), w_cond)  # (M, hidden)
        rest = self.net[1:]

        def velocity(state: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
            hidden = (state @ w_state).view(-1, *fixed.shape) + fixed
            hidden = hidden.view(state.shape[0], -1) + time_embedding(tau) @ w_time
            for layer in rest:  # activations in place: a fifth faster on these wide tensors
                hidden = (
                    F.silu(hidden, inplace=True) if isinstance(layer, nn.SiLU) else layer(hidden)
                )
            return hidden

        return velocity


class FieldFlowNet(nn.Module):
    """Trunk + mean head + flow head. See the module docstring for the data flow."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        p, width = config.patch, config.width
        self.s2_embed = nn.Linear(
            s2_channel_count(config.smooth_features, config.whittaker_features) * p * p, width
        )
        self.s1_embed = nn.Linear(S1_CHANNELS * p * p, width)
        self.modality = nn.Parameter(torch.zeros(2, width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.time_bias = (
            nn.Parameter(torch.zeros(config.depth, config.heads, config.time_buckets))
            if config.time_buckets > 0
            else None
        )
        self.norm = nn.LayerNorm(width)
        self.mean_head = nn.Linear(width, p * p * N_BANDS)
        nn.init.zeros_(self.mean_head.weight)
        nn.init.zeros_(self.mean_head.bias)
        self.flow_head = FlowHead(config)
        self.scale_head: nn.Linear | None = None
        if config.scale_head:
            self.scale_head = nn.Linear(width, p * p * N_BANDS)
            nn.init.zeros_(self.scale_head.weight)
            nn.init.constant_(self.scale_head.bias, INITIAL_LOG_SCALE)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(E, N, C, H, W) -> (E, N, P, C*p*p)."""
        e, n, c, h, w = x.shape
        p = self.config.patch
        x = x.view(e, n, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(e, n, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(E, N, P, 10*p*p) -> (E, N, 10, H, W)."""
        e, n, _, _ = tokens.shape
        p = self.config.patch
        x = tokens.view(e, n, height // p, width // p, N_BANDS, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(e, n, N_BANDS, height, width)

    def encode(
        self,
        s2: torch.Tensor,
        s2_days: torch.Tensor,
        s1: torch.Tensor,
        s1_days: torch.Tensor,
        s2_unseen: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token features of the S2 frames.

        Args:
            s2: S2 channels (E, T, s2_channel_count(...) of the config, H, W).
            s2_days: (E, T) days, relative to any origin (only differences matter).
            s1: S1 channels (E, T1, S1_CHANNELS, H, W); T1 may be 0. Episodes of a batch with
                fewer S1 frames are padded with no-data frames (data flag 0), not masked.
            s1_days: (E, T1).
            s2_unseen: None, or (E, T) bool: S2 frames no other frame attends to (each still
                attends to every frame and to itself). Inference marks the query dates with no
                acquisition so: each then reads the series as if it were the only date asked
                for, and the acquisitions read it as if no date were asked for, however many
                dates share the pass (a daily curve), and however they are grouped.

        Returns:
            features (E, T, P, D).
        """
        t2 = s2.shape[1]
        if not self.config.day_of_year:  # withheld: as a training episode without its calendar
            s2 = s2.clone()
            s2[:, :, S2_SEASON_CHANNELS] = 0.0
            s1 = s1.clone()
            s1[:, :, S1_SEASON_CHANNELS] = 0.0
        tokens = self.s2_embed(self.patchify(s2)) + self.modality[0]
        days = s2_days
        if s1.shape[1] > 0:
            s1_tokens = self.s1_embed(self.patchify(s1)) + self.modality[1]
            tokens = torch.cat([tokens, s1_tokens], dim=1)
            days = torch.cat([s2_days, s1_days], dim=1)
        n_tokens = tokens.shape[2]
        cfg = self.config
        angles = rotary_angles(
            days, cfg.width // cfg.heads, cfg.rope_min_period_days, cfg.rope_max_period_days
        )
        # (E, N, hd/2) -> (E*P, 1, N, hd/2), shared by every block and head.
        rotary = tuple(
            f(angles).repeat_interleave(n_tokens, dim=0)[:, None] for f in (torch.cos, torch.sin)
        )
        buckets = (
            bucket_day_differences(days, cfg.time_buckets) if self.time_bias is not None else None
        )
        allowed = None  # (E, 1, N, N): may frame i attend to frame j
        if s2_unseen is not None and bool(s2_unseen.any()):
            seen = torch.cat(
                [~s2_unseen, s2_unseen.new_ones(s2_unseen.shape[0], days.shape[1] - t2)], 1
            )
            itself = torch.eye(days.shape[1], dtype=torch.bool, device=days.device)
            allowed = (seen[:, None, :] | itself)[:, None]
        x = tokens
        for depth, block in enumerate(self.blocks):
            bias = None
            if self.time_bias is not None:
                bias = self.time_bias[depth][:, buckets].permute(1, 0, 2, 3)  # (E, h, N, N)
                if allowed is not None:
                    bias = bias.masked_fill(~allowed, float("-inf"))
                bias = bias.repeat_interleave(n_tokens, dim=0)
            elif allowed is not None:  # one episode broadcasts over its patches as it is
                bias = allowed if allowed.shape[0] == 1 else allowed.repeat_interleave(n_tokens, 0)
            x = block(x, rotary, bias)
        return self.norm(x[:, :t2])

    def estimate(
        self,
        s2: torch.Tensor,
        s2_days: torch.Tensor,
        s1: torch.Tensor,
        s1_days: torch.Tensor,
        s2_unseen: torch.Tensor | None = None,
        frames: torch.Tensor | None = None,
        views: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and mean correction of an episode's S2 frames, the correction averaged over
        the first ``views`` of :data:`DIHEDRAL_VIEWS` (each view's turned back first).

        The arguments are :meth:`encode`'s; ``frames`` picks the S2 frames returned (an index
        or bool tensor over T; None: all). Training augments with every view, so each is an
        input the network knows. Returns the features (E, T', P, D) of the input as given (the
        flow head's condition) and the correction (E, T', 10, H, W), model units.
        """
        if views not in VIEW_COUNTS:
            raise ValueError(f"views must be one of {VIEW_COUNTS}, not {views}")
        height, width = s2.shape[-2:]
        features = correction = None
        for view in DIHEDRAL_VIEWS[:views]:
            seen = self.encode(to_view(s2, view), s2_days, to_view(s1, view), s1_days, s2_unseen)
            if frames is not None:
                seen = seen[:, frames]
            size = (width, height) if view[0] % 2 else (height, width)
            part = from_view(self.mean_correction(seen, *size), view)
            correction = part if correction is None else correction + part
            if features is None:
                features = seen
        return features, correction / views

    def mean_correction(self, features: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Correction to the interpolation, (E, T, 10, H, W) in model units."""
        return self.unpatchify(self.mean_head(features), height, width)

    def log_scale(self, features: torch.Tensor, height: int, width: int) -> torch.Tensor | None:
        """Log of the residual scale b, (E, T, 10, H, W) in model units; None without a scale
        head (then b = 1)."""
        if self.scale_head is None:
            return None
        raw = self.unpatchify(self.scale_head(features), height, width)
        return raw.clamp(*LOG_SCALE_RANGE)

    def scale_generated(
        self, generated: torch.Tensor, features: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """Residual samples from what the flow head generated (K, T, 10, H, W) for one episode
        with ``features`` (1, T, P, D): times b with a scale head, as they are without one."""
        log_b = self.log_scale(features, height, width)
        return generated if log_b is None else generated * torch.exp(log_b[0])[None]

    def sample_residuals(
        self,
        features: torch.Tensor,
        height: int,
        width: int,
        samples: int,
        steps: int,
        generator: torch.Generator,
        solver: Callable[[Callable, torch.Tensor, int], torch.Tensor],
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """K residual samples (K, T, 10, H, W), model units, for one episode's ``features``
        (1, T, P, D): the flow head integrated from noise by ``solver`` in ``steps`` steps,
        then :meth:`scale_generated`. ``tokens`` (P,) bool: sample only these patches (the
        others' residuals are 0); None: all. The noise is drawn on the CPU by ``generator``
        (sample-major), so a seed gives the same draws on every device."""
        picked = features if tokens is None else features[:, :, tokens]
        dim = self.config.patch**2 * N_BANDS
        n_rows = samples * picked.shape[1] * picked.shape[2]
        noise = torch.randn(n_rows, dim, generator=generator).to(features.device)
        precision = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if flow_in_bf16(features.device.type)
            else contextlib.nullcontext()
        )
        with precision:  # the state stays float32: each step adds to it in float32
            velocity = self.flow_head.velocity_given(picked.reshape(-1, picked.shape[-1]))
            generated = solver(velocity, noise, steps)
        generated = generated.float().view(samples, picked.shape[1], -1, dim)
        if tokens is not None:
            full = generated.new_zeros(samples, features.shape[1], features.shape[2], dim)
            full[:, :, tokens] = generated
            generated = full
        residual = torch.stack([self.unpatchify(r[None], height, width)[0] for r in generated])
        return self.scale_generated(residual, features, height, width)
