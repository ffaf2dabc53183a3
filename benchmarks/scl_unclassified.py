"""Are Sen2Cor's "unclassified" pixels (SCL 7, masked as cloud here) clouds or ground?

    python benchmarks/scl_unclassified.py

For every acquisition of the shared cubes with a scene classification, the pixels of one
class are compared with the same pixels on the nearest acquisition within 10 days that is 95 %
clear or more: the median difference of NDVI and of blue reflectance (B02, which clouds and
haze raise), for SCL 7 (unclassified), beside the classes counted clear (4 vegetation,
5 not vegetated) and the cloud classes (8, 9, 10) for scale. Vegetation moves little in 10
days; a class that is ground should differ as little as the clear classes do. Nothing in the
product reads this; it measures whether counting class 7 as clear (it is not) is worth a
trial.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import S2_BANDS, SCL_NAMES, read_cube
from core.indices import ndvi

NEAR_DAYS = 10
WHOLLY_CLEAR = 0.95
GROUPS = {"4-5 (clear)": (4, 5), "7 (unclassified)": (7,), "8-10 (cloud)": (8, 9, 10)}


def main() -> int:
    blue = S2_BANDS.index("B02")
    found: dict[str, dict[str, list[float]]] = {g: {"ndvi": [], "blue": []} for g in GROUPS}
    pixels = dict.fromkeys(GROUPS, 0)
    for path in sorted(Settings.from_env().cubes_dir.glob("*.nc")):
        cube = read_cube(path)
        if "scl" not in cube:
            continue
        s2, scl = cube["s2"].values, cube["scl"].values
        index = ndvi(s2, band_axis=1)
        clear = cube["valid"].values.astype(bool)
        share = clear.reshape(len(clear), -1).mean(axis=1)
        days = cube["time_s2"].values.astype("datetime64[D]").astype(np.int64)
        for t in range(len(days)):
            near = np.flatnonzero((np.abs(days - days[t]) <= NEAR_DAYS) & (share >= WHOLLY_CLEAR))
            near = near[near != t]
            if near.size == 0:
                continue
            u = near[np.argmin(np.abs(days[near] - days[t]))]
            for group, classes in GROUPS.items():
                where = np.isin(scl[t], classes) & clear[u]
                if where.sum() < 5:
                    continue
                pixels[group] += int(where.sum())
                for name, values in (("ndvi", index), ("blue", s2[:, blue])):
                    a, b = values[t][where], values[u][where]
                    ok = np.isfinite(a) & np.isfinite(b)
                    if ok.sum() >= 5:
                        found[group][name].append(float(np.median(a[ok] - b[ok])))
    print(f"each acquisition: median against the same pixels, nearest clear day ({NEAR_DAYS} d)")
    for group in GROUPS:
        line = [f"SCL {group:18s} {pixels[group]:8,d} pixels"]
        for name in ("ndvi", "blue"):
            d = np.array(found[group][name])
            if d.size:
                line.append(
                    f"{name}: {d.size:3d} acquisitions, median {np.median(d):+.3f} "
                    f"[{np.percentile(d, 25):+.3f} .. {np.percentile(d, 75):+.3f}]"
                )
        print("; ".join(line))
    print("(classes: " + ", ".join(f"{k} {v}" for k, v in SCL_NAMES.items()) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
