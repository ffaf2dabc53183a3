"""Two ``seed_spread.py --json`` runs on the same seeds, paired: what a change did to the bands.

    python benchmarks/paired_bands.py BEFORE.json AFTER.json

Per task: whether every MAE ratio and the reflectance band's coverage are the same in both runs
(a change to a band only must not move them), the per-pixel NDVI band's interval score summed
over the seeds and on how many seeds it fell, how often the estimate lay outside its own NDVI
band, the NDVI band's coverage, and the curve band's interval score and coverage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = (json.loads(p.read_text(encoding="utf-8")) for p in (args.before, args.after))
    if before["seeds"] != after["seeds"] or before["cubes"] != after["cubes"]:
        raise SystemExit("the two runs are not on the same seeds and cubes: nothing to pair")
    n = len(before["seeds"])
    print(f"{args.before.name} -> {args.after.name}: seeds {before['seeds']}")
    print(f"cubes {before['cubes']}")
    for key, b in before["ratios"].items():
        a = after["ratios"].get(key)
        if a is None:
            continue
        print(
            f"{key}: MAE ratios identical {a['per_seed'] == b['per_seed']}, reflectance band "
            f"coverage identical {a['coverage'] == b['coverage']}"
        )
        sb, sa = (np.array(r["ndvi_interval_score"], float) for r in (b, a))
        cb, ca = (np.array(r["field_ndvi_interval_score"], float) for r in (b, a))
        print(
            f"  per-pixel NDVI band interval score, summed {np.nansum(sb):.4f} -> "
            f"{np.nansum(sa):.4f} ({(np.nansum(sa) / np.nansum(sb) - 1) * 100:+.1f} %), lower on "
            f"{int((sa < sb).sum())} of {n} seeds"
        )
        for name, r in (("before", b), ("after", a)):
            misses = np.array(r["ndvi_band_misses_estimate"], float)
            cover = np.array(r["ndvi_coverage"], float)
            print(
                f"  {name:6s} estimate outside its NDVI band: median {np.nanmedian(misses):.3f}, "
                f"most {np.nanmax(misses):.3f}; NDVI band coverage median "
                f"{np.nanmedian(cover):.2f} [{np.nanmin(cover):.2f} - {np.nanmax(cover):.2f}]"
            )
        fb, fa = (np.array(r["field_ndvi_coverage"], float) for r in (b, a))
        print(
            f"  curve band interval score, summed {np.nansum(cb):.4f} -> {np.nansum(ca):.4f} "
            f"({(np.nansum(ca) / np.nansum(cb) - 1) * 100:+.1f} %), lower on "
            f"{int((ca < cb).sum())} of {n} seeds; its coverage median {np.nanmedian(fb):.2f} "
            f"-> {np.nanmedian(fa):.2f}, mean {np.nanmean(fb):.3f} -> {np.nanmean(fa):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
