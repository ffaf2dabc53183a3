"""Spectral indices computed from cube reflectance."""

from __future__ import annotations

import numpy as np

from core.cube import S2_BANDS

RED = S2_BANDS.index("B04")
NIR = S2_BANDS.index("B08")
NIR_NARROW = S2_BANDS.index("B8A")


def ndvi(s2: np.ndarray, band_axis: int = -3) -> np.ndarray:
    """NDVI = (NIR - red) / (NIR + red) from a reflectance array in :data:`S2_BANDS` order.

    NIR is B08 where present, else B8A (the narrow NIR band, which the 4-band GreenEarthNet
    cubes carry instead). Where red or both NIR bands are NaN, or NIR + red <= 0, NDVI is NaN.
    Negative reflectance (a generated sample's noise around a dark pixel) counts as 0, so NDVI
    stays within [-1, 1]: near NIR + red = 0 a slightly negative band would otherwise send it
    to hundreds.

    Args:
        s2: reflectance with the ten bands on ``band_axis``, e.g. (T, B, H, W).
        band_axis: the axis holding the bands.

    Returns:
        NDVI with ``band_axis`` removed, float32.
    """
    s2 = np.asarray(s2, dtype=np.float32)
    red = np.maximum(np.take(s2, RED, axis=band_axis), 0.0)  # NaN stays NaN
    nir = np.take(s2, NIR, axis=band_axis)
    nir = np.maximum(np.where(np.isfinite(nir), nir, np.take(s2, NIR_NARROW, axis=band_axis)), 0.0)
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total > 0, (nir - red) / total, np.nan)
    return out.astype(np.float32)


def can_compute_ndvi(bands_present: np.ndarray) -> bool:
    """True if a cube with these bands present (bool per band) has red and some NIR band."""
    return bool(bands_present[RED] and (bands_present[NIR] or bands_present[NIR_NARROW]))
