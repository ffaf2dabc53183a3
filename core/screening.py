"""Clouds the scene mask missed: clear-labelled pixels brighter in every band than their own
series says they should be.

Sen2Cor's scene classification (SCL) labels thin cloud, haze and cloud edges as vegetation or
bare soil often enough to matter: in the shared cubes 0.5-8 % of the pixel observations it
calls clear are brighter in every band than the linear interpolation of the same pixel's other
clear observations by more than 0.03 reflectance, and the frames where most are flagged show
haze, cloud edges and white cloud blobs (``benchmarks/candidates/cloud_screen_rule.txt``).
Cloud and haze add light in every band at once; what fields do in a few days (growth,
harvest, mowing, senescence) darkens some bands as it brightens others. So an observation is
screened out (treated as cloudy) when

* the same pixel has a clear observation at most :data:`NEIGHBOUR_DAYS` days before it and at
  most as many after it (across a longer gap a field can change too much to tell), and
* in every band the cube holds it is brighter than the linear interpolation between those two
  by more than :data:`RISE` reflectance.

One pass, no dilation. The threshold and the window were fixed before the screen was measured
(the rule above), not fitted on any cube.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from core.model.features import interpolate_at_frames
from core.timeline import to_days

RISE = 0.03
"""Reflectance by which an observation must exceed its series' interpolation in every band."""
NEIGHBOUR_DAYS = 30.0
"""The farthest a clear observation of the same pixel may lie on either side."""


@dataclass(frozen=True)
class Screening:
    """What a screen took out of a cube's clear pixels."""

    screened: np.ndarray
    """(T, H, W) bool: clear-labelled pixel observations screened out as missed clouds."""
    clear_before: int
    """Clear pixel observations before the screen."""

    @property
    def count(self) -> int:
        return int(self.screened.sum())

    @property
    def share(self) -> float:
        """Share of the clear pixel observations screened out (0 with none clear)."""
        return self.count / self.clear_before if self.clear_before else 0.0

    def summary(self) -> str:
        """One sentence for a Run's notes."""
        frames = int(self.screened.any(axis=(1, 2)).sum())
        return (
            f"Screened out {self.count:,} pixel observations the scene mask called clear "
            f"({self.share:.1%} of them, on {frames} acquisition(s)): brighter in every band "
            f"than the pixel's clear observations on both sides by over {RISE} reflectance, "
            "as haze and cloud edges are; they are reconstructed like cloudy ones."
        )


def missed_clouds(clear_s2: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The screen of the module docstring.

    Args:
        clear_s2: reflectance (T, B, H, W) where clear, NaN elsewhere and in absent bands.
        days: (T,) acquisition times in days (sorted).

    Returns:
        (T, H, W) bool: observations to treat as cloudy.
    """
    clear = np.isfinite(clear_s2).any(axis=1)  # (T, H, W)
    bands = np.flatnonzero(np.isfinite(clear_s2).any(axis=(0, 2, 3)))
    if bands.size == 0 or clear_s2.shape[0] < 3:
        return np.zeros(clear.shape, dtype=bool)
    values = clear_s2[:, bands]
    between, d_prev, d_next = interpolate_at_frames(values, days, exclusive=True)
    with np.errstate(invalid="ignore"):
        brighter = (values - between > RISE).all(axis=1)  # NaN compares False
    near = (d_prev <= NEIGHBOUR_DAYS).all(axis=1) & (d_next <= NEIGHBOUR_DAYS).all(axis=1)
    return clear & brighter & near


def screen_cube(cube: xr.Dataset) -> tuple[xr.Dataset, Screening]:
    """``cube`` with its missed clouds marked not valid (:func:`missed_clouds`), and what was
    screened. The reflectance is left as it is: ``valid`` is what every reader trusts."""
    valid = cube["valid"].values.astype(bool)
    s2 = cube["s2"].values
    clear_s2 = np.where(valid[:, None], s2, np.float32(np.nan)).astype(np.float32, copy=False)
    screened = missed_clouds(clear_s2, to_days(cube["time_s2"].values))
    clear_before = int((valid & np.isfinite(s2).any(axis=1)).sum())
    out = cube.copy()
    out["valid"] = cube["valid"].copy(data=(valid & ~screened).astype(cube["valid"].dtype))
    return out, Screening(screened, clear_before)
