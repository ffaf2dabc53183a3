"""Do the clear pixels the haze screen leaves in a hazy scene carry thinner haze?

    python benchmarks/hazy_scene_probe.py [--window 64] [CUBE ...]

Exploratory (review 30's H1: a hazy acquisition the screen let through dipped the curve). Each
shared cube with blue and red is screened as the app did before this probe
(:func:`core.screening.screen_cube` without ``nearby``, the extension the probe led to),
then cut into windows of ``--window`` pixels, about a field's cube. For every window and
acquisition with clear pixels left after the screen, the share of its clear pixels the haze
screen took out is set beside what its remaining clear pixels read against the chord of the
same pixels' remaining clear observations within 30 days on both sides (the screen's own
reference): the median rise in blue and the median NDVI difference. Printed per bucket of the
screened share: how many window-acquisitions, the median of those medians and the share of
them whose NDVI reads more than 0.05 below the chord. Haze raises blue and lowers NDVI; a
window-acquisition the screen did not touch should read near 0 on both.
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
from core.model.features import bracketing_indices
from core.screening import BLUE, NEIGHBOUR_DAYS, can_screen, clear_observations, screen_cube
from core.timeline import to_days

BUCKETS = ((0.0, 0.0), (1e-9, 0.02), (0.02, 0.10), (0.10, 0.25), (0.25, 0.50), (0.50, 1.0))
MIN_LEFT = 16
"""Remaining clear pixels with a chord a window-acquisition needs to be counted."""


def rows_of(path: Path, window: int) -> list[tuple[str, str, int, float, float, float]]:
    """(cube, day, window index, screened share, median blue rise, median NDVI difference)."""
    cube = read_cube(path)
    s2 = cube["s2"].values
    valid = cube["valid"].values.astype(bool)
    clear = clear_observations(s2, valid)
    if not can_screen(s2, clear):
        return []
    screened_cube, screening = screen_cube(cube, nearby=False)  # the spike screen alone
    kept = screened_cube["valid"].values.astype(bool) & clear
    days = to_days(cube["time_s2"].values)
    index = ndvi(s2, band_axis=1)
    prev, nxt = bracketing_indices(kept, exclusive=True)
    n, _, h, w = s2.shape
    rows, cols = np.indices((h, w))
    found = []
    for t in range(n):
        if not kept[t].any():
            continue
        before, after = np.clip(prev[t], 0, n - 1), np.clip(nxt[t], 0, n - 1)
        near = (prev[t] >= 0) & (nxt[t] < n)
        near &= (days[t] - days[before] <= NEIGHBOUR_DAYS) & (
            days[after] - days[t] <= NEIGHBOUR_DAYS
        )
        span = np.maximum(days[after] - days[before], 1e-9)
        weight = np.where(near, (days[t] - days[before]) / span, 0)
        blue = s2[:, BLUE]
        blue_rise = s2[t, BLUE] - (
            blue[before, rows, cols] * (1 - weight) + blue[after, rows, cols] * weight
        )
        ndvi_diff = index[t] - (
            index[before, rows, cols] * (1 - weight) + index[after, rows, cols] * weight
        )
        day = str(cube["time_s2"].values[t])[:10]
        corners = [
            (y, x)
            for y in range(0, h - window + 1, window)
            for x in range(0, w - window + 1, window)
        ]
        for k, (y, x) in enumerate(corners):
            box = (slice(y, y + window), slice(x, x + window))
            was = int(clear[t][box].sum())
            taken = int(screening.screened[t][box].sum())
            left = kept[t][box] & near[box] & np.isfinite(ndvi_diff[box])
            if was == 0 or left.sum() < MIN_LEFT:
                continue
            found.append(
                (
                    path.stem,
                    day,
                    k,
                    taken / was,
                    float(np.nanmedian(blue_rise[box][left])),
                    float(np.median(ndvi_diff[box][left])),
                )
            )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cubes", nargs="*", type=Path)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    paths = args.cubes or sorted((Settings.from_env().data_dir / "cubes").glob("*.nc"))
    found = [row for path in paths for row in rows_of(path, args.window)]
    print(
        f"# python benchmarks/hazy_scene_probe.py --window {args.window}: "
        f"{len(found)} window-acquisitions with {MIN_LEFT}+ clear pixels left and a chord"
    )
    share = np.array([r[3] for r in found])
    for lo, hi in BUCKETS:
        pick = [
            r for r, s in zip(found, share, strict=True) if (s == 0 if hi == 0 else lo <= s <= hi)
        ]
        if not pick:
            print(f"screened {lo:.0%}-{hi:.0%}: none")
            continue
        blue = np.array([r[4] for r in pick])
        diff = np.array([r[5] for r in pick])
        where = sorted({r[0].split("_")[0] for r in pick})
        print(
            f"screened {lo:.0%}-{hi:.0%}: {len(pick):5d}; remaining pixels vs their chord: "
            f"blue {np.nanmedian(blue):+.4f}, NDVI {np.median(diff):+.3f}, "
            f"NDVI below -0.05 on {np.mean(diff < -0.05):.0%} ({', '.join(where)})"
        )
        if lo >= 0.02:
            for r in sorted(pick, key=lambda r: -r[3]):
                print(
                    f"    {r[0]} {r[1]} window {r[2]}: screened {r[3]:.0%}, "
                    f"blue {r[4]:+.4f}, NDVI {r[5]:+.3f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
