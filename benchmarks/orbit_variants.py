"""Copies of a held-out cube whose radar mixes two viewing geometries, simulated.

    python benchmarks/orbit_variants.py OUT [--cube be-flanders-c_2018-2019]
    FIELDFLOW_DATA_DIR=OUT/full python benchmarks/seed_spread.py --network-alone \\
        --cube be-flanders-c_2018-2019 --json full.json
    (and so on for OUT/labelled and OUT/offset, with --against full.json)

Every training cube's radar is one geometry (ascending GRD, no ``orbit_state``), while
Planetary Computer's ``sentinel-1-rtc`` mixes ascending and descending passes and several
relative orbits, whose backscatter differs by a level. No real cube of that kind is at hand, so
this makes one from the cube's real radar (``benchmarks/candidates/orbit_geometry_rule.txt``):

- ``full``: the cube as it is;
- ``labelled``: every second S1 acquisition labelled ``descending`` (relative orbit 37, the
  others ascending 88), values unchanged: what the orbit input alone does;
- ``offset``: labelled so, and those acquisitions raised by ``--vv-db`` (1.0) in VV and
  ``--vh-db`` (1.5) in VH: a level between geometries, constant as on flat land.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.radar_variants import write_variants
from core.config import Settings
from core.cube import read_cube


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cube", default="be-flanders-c_2018-2019")
    parser.add_argument("--vv-db", type=float, default=1.0)
    parser.add_argument("--vh-db", type=float, default=1.5)
    args = parser.parse_args()
    cube = read_cube(Settings.from_env().cubes_dir / f"{args.cube}.nc")
    if "s1" not in cube:
        raise SystemExit(f"{args.cube} has no radar to vary.")
    second = np.arange(cube.sizes["time_s1"]) % 2 == 1
    orbit = np.where(second, "descending", "ascending")
    relative = np.where(second, 37, 88).astype(np.int32)
    labelled = cube.assign_coords(
        orbit_state=("time_s1", orbit), relative_orbit=("time_s1", relative)
    )
    offset = labelled.copy(deep=True)
    level = np.array([args.vv_db, args.vh_db], dtype=np.float32)[None, :, None, None]
    offset["s1"].values[second] += level
    write_variants(args.out, args.cube, {"full": cube, "labelled": labelled, "offset": offset})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
