"""Do the clear pixels next to a cloud mask read like their neighbours further out?

    python benchmarks/cloud_edge_bias.py

For every acquisition of the shared cubes that is partly clear, each clear pixel's distance
to the nearest masked pixel is measured (in pixels, the chessboard distance: 1 = touching),
and its NDVI and blue reflectance (B02) are compared with the same pixel's on the nearest
acquisition within 10 days that is 95 % clear or more. Printed per distance: the pixels, the
median NDVI and blue difference. Clouds' edges and haze the scene mask misses sit next to
what it masked, so a bias that fades with the distance is what a dilation of the mask (a
buffer of N pixels, as Fmask and s2cloudless apply) would remove. Nothing in the product
reads this.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import S2_BANDS, read_cube
from core.indices import ndvi

NEAR_DAYS = 10
WHOLLY_CLEAR = 0.95
DISTANCES = (1, 2, 3, 4, 6, 10)  # the last bucket: this far or further


def main() -> int:
    blue = S2_BANDS.index("B02")
    diffs: dict[int, dict[str, list[np.ndarray]]] = {d: {"ndvi": [], "blue": []} for d in DISTANCES}
    for path in sorted(Settings.from_env().cubes_dir.glob("*.nc")):
        cube = read_cube(path)
        s2 = cube["s2"].values
        index = ndvi(s2, band_axis=1)
        clear = cube["valid"].values.astype(bool)
        share = clear.reshape(len(clear), -1).mean(axis=1)
        days = cube["time_s2"].values.astype("datetime64[D]").astype(np.int64)
        for t in np.flatnonzero((share > 0) & (share < WHOLLY_CLEAR)):
            near = np.flatnonzero((np.abs(days - days[t]) <= NEAR_DAYS) & (share >= WHOLLY_CLEAR))
            if near.size == 0:
                continue
            u = near[np.argmin(np.abs(days[near] - days[t]))]
            distance = ndimage.distance_transform_cdt(clear[t], metric="chessboard")
            both = clear[t] & clear[u]
            for low, high in zip(DISTANCES, (*DISTANCES[1:], 10**6), strict=True):
                where = both & (distance >= low) & (distance < high)
                for name, values in (("ndvi", index), ("blue", s2[:, blue])):
                    d = values[t][where] - values[u][where]
                    diffs[low][name].append(d[np.isfinite(d)])
    print(
        f"clear pixels of partly clear acquisitions against the nearest clear day ({NEAR_DAYS} d)"
    )
    for low, high in zip(DISTANCES, (*DISTANCES[1:], None), strict=True):
        span = f"{low}-{high - 1} px" if high is not None and high - 1 > low else f"{low} px"
        span = span if high is not None else f">= {low} px"
        parts = [f"from the mask {span:9s}"]
        for name in ("ndvi", "blue"):
            d = np.concatenate(diffs[low][name]) if diffs[low][name] else np.array([])
            if d.size:
                parts.append(f"{name} {d.size:8,d} px, median {np.median(d):+.4f}")
        print("; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
