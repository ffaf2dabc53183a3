"""Clear-labelled pixels whose red sits at the reflectance floor, per shared cube: what
:func:`core.screening.red_floor` takes out and why the scene threshold lies where it does.

    python benchmarks/red_floor.py

Prints, per cube with red (B04), the acquisitions with clear pixels, the clear pixel
observations with red at or below :data:`core.screening.RED_FLOOR`, and every acquisition that
has any: its clear pixels, how many of them are at the floor, their share, and the median NDVI
of the clear pixels there against the same pixels' on the nearest clear acquisitions before and
after (at most 30 days away), at the floor and not. Cubes without red are named and skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import S2_BANDS, read_cube
from core.indices import ndvi
from core.screening import FLOOR_SCENE_SHARE, FLOOR_TOLERANCE, RED_FLOOR, red_floor
from core.timeline import to_days

RED = S2_BANDS.index("B04")
NEAR_DAYS = 30.0


def neighbours_ndvi(values: np.ndarray, clear: np.ndarray, days: np.ndarray, t: int) -> np.ndarray:
    """(H, W): each pixel's mean NDVI over its nearest clear acquisition before ``t`` and the
    nearest after, each at most :data:`NEAR_DAYS` away (NaN where it has neither)."""
    picks = []
    for order in (range(t - 1, -1, -1), range(t + 1, len(days))):
        found = np.full(clear.shape[1:], np.nan, np.float32)
        for j in order:
            if abs(days[j] - days[t]) > NEAR_DAYS:
                break
            found = np.where(np.isnan(found) & clear[j], values[j], found)
        picks.append(found)
    stacked = np.stack(picks)
    seen = np.isfinite(stacked).sum(axis=0)
    return np.where(seen > 0, np.nansum(stacked, axis=0) / np.maximum(seen, 1), np.nan)


def main() -> int:
    cubes = sorted(Settings.from_env().cubes_dir.glob("*.nc"))
    print(
        f"red floor {RED_FLOOR} (+ {FLOOR_TOLERANCE} for the stored integers); a scene with "
        f">= {FLOOR_SCENE_SHARE:.0%} of its clear pixels at it is taken out whole"
    )
    for path in cubes:
        cube = read_cube(path)
        s2 = cube["s2"].values
        clear = cube["valid"].values.astype(bool) & np.isfinite(s2).any(axis=1)
        if not np.isfinite(s2[:, RED][clear]).any():
            print(f"\n{path.stem}: no red band, not screened")
            continue
        with np.errstate(invalid="ignore"):
            at_floor = clear & (s2[:, RED] <= RED_FLOOR + FLOOR_TOLERANCE)
        taken = red_floor(s2, clear)
        values = ndvi(s2)
        days = to_days(cube["time_s2"].values)
        frames = clear.any(axis=(1, 2))
        print(
            f"\n{path.stem}: {int(frames.sum())} acquisitions with clear pixels, "
            f"{int(clear.sum()):,} clear observations, {int(at_floor.sum())} with red at the "
            f"floor, {int(taken.sum())} taken out"
        )
        for t in np.flatnonzero(at_floor.any(axis=(1, 2))):
            near = neighbours_ndvi(values, clear, days, t)
            rows = []
            parts = (("at the floor", at_floor[t]), ("the rest", clear[t] & ~at_floor[t]))
            for name, part in parts:
                both = part & np.isfinite(near) & np.isfinite(values[t])
                if both.any():
                    rows.append(
                        f"{name} NDVI {np.median(values[t][both]):.3f} vs "
                        f"{np.median(near[both]):.3f} ({int(both.sum())} px)"
                    )
            share = at_floor[t].sum() / clear[t].sum()
            print(
                f"  {str(cube['time_s2'].values[t])[:10]}: {int(clear[t].sum())} clear, "
                f"{int(at_floor[t].sum())} at the floor ({share:.2%}), {int(taken[t].sum())} "
                f"taken out; {'; '.join(rows) or 'no neighbours'}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
