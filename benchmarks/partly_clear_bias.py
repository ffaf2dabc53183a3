"""Are the "clear" pixels of a mostly cloudy acquisition to be trusted?

    python benchmarks/partly_clear_bias.py [--screen-haze]

For every acquisition of the shared cubes with NDVI (red and NIR, B08 or B8A) that is
partly clear (some of its pixels clear, under 95 %), the mean NDVI of its clear pixels is
compared with the mean NDVI of the same pixels on the nearest acquisition within 10 days that
is 95 % clear or more (five pixels in common at least). Vegetation moves little in 10 days;
clouds' edges, thin cloud and haze that the scene mask calls clear pull NDVI down. Printed per
band of clear share: how many acquisitions, the median and mean absolute difference, and the
share below -0.1. ``--screen-haze`` applies :mod:`core.screening` first. This decided the CSV's
``observed_ndvi``: empty below half clear (core.curve).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.indices import ndvi
from core.screening import screen_cube

NEAR_DAYS = 10
WHOLLY_CLEAR = 0.95
BUCKETS = ((0.0, 0.05), (0.05, 0.10), (0.10, 0.25), (0.25, 0.50), (0.50, WHOLLY_CLEAR))


def differences(path: Path, screen: bool) -> list[tuple[float, float]]:
    """(clear share, NDVI difference) for each partly clear acquisition of the cube."""
    cube = read_cube(path)
    if screen:
        cube, _ = screen_cube(cube)
    values = ndvi(cube["s2"].values, band_axis=1)
    usable = cube["valid"].values.astype(bool) & np.isfinite(values)
    share = usable.reshape(len(usable), -1).mean(axis=1)
    days = cube["time_s2"].values.astype("datetime64[D]").astype(np.int64)
    found = []
    for t in np.flatnonzero((share > 0) & (share < WHOLLY_CLEAR)):
        near = np.flatnonzero((np.abs(days - days[t]) <= NEAR_DAYS) & (share >= WHOLLY_CLEAR))
        if near.size == 0:
            continue
        u = near[np.argmin(np.abs(days[near] - days[t]))]
        both = usable[t] & usable[u]
        if both.sum() >= 5:
            found.append((float(share[t]), float(values[t][both].mean() - values[u][both].mean())))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screen-haze", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[float, float]] = []
    for path in sorted(Settings.from_env().cubes_dir.glob("*.nc")):
        rows += differences(path, args.screen_haze)  # a cube without NDVI has none clear
    table = np.array(rows)
    print(f"{len(table)} partly clear acquisitions with a clear one within {NEAR_DAYS} days")
    for low, high in BUCKETS:
        diff = table[(table[:, 0] > low) & (table[:, 0] <= high), 1]
        if diff.size:
            print(
                f"clear {low:.2f}-{high:.2f}: {diff.size:3d} acquisitions; NDVI of the clear "
                f"pixels minus the same pixels' on the nearest clear day: median "
                f"{np.median(diff):+.3f}, mean |difference| {np.abs(diff).mean():.3f}, "
                f"below -0.1 on {np.mean(diff < -0.1):.0%}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
