"""Copies of a held-out cube with its radar changed, to score what the radar gives the model.

    python benchmarks/radar_variants.py OUT [--cube be-flanders-c_2018-2019]
    FIELDFLOW_DATA_DIR=OUT/no_s1 python benchmarks/seed_spread.py --network-alone \\
        --cube be-flanders-c_2018-2019 --json no_s1.json
    (and so on for OUT/full, OUT/vh_like_vv, OUT/vh_flat, with --against no_s1.json)

Writes four data folders under OUT, each with ``cubes/<cube>.nc`` (what ``FIELDFLOW_DATA_DIR``
points at): ``full`` (the cube as it is), ``no_s1`` (its radar removed: what the model gets
from a cube without radar, or, today, with VV only), and two stand-ins for a VV-only series,
VH hidden: ``vh_like_vv`` (VH := VV - 7 dB: the VH anomaly follows VV's and the VV-VH anomaly
is 0) and ``vh_flat`` (VH := -20 dB where VV has data: the VH anomaly is 0 and VV-VH follows
VV). The levels do not matter: every radar channel is an anomaly about its pixel's mean
(``core.model.features.s1_anomalies``). See ``benchmarks/candidates/vv_only_rule.txt``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube, write_cube


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cube", default="be-flanders-c_2018-2019")
    args = parser.parse_args()
    cube = read_cube(Settings.from_env().cubes_dir / f"{args.cube}.nc")
    if "s1" not in cube:
        raise SystemExit(f"{args.cube} has no radar to vary.")
    vv = cube["s1"].sel(polarization="VV").values
    like_vv = cube.copy(deep=True)
    like_vv["s1"].loc[{"polarization": "VH"}] = vv - 7.0
    flat = cube.copy(deep=True)
    flat["s1"].loc[{"polarization": "VH"}] = np.where(np.isfinite(vv), -20.0, np.nan)
    radar = [name for name in cube.data_vars if "time_s1" in cube[name].dims]
    no_s1 = cube.drop_vars(radar).drop_dims("time_s1", errors="ignore")
    variants = {"full": cube, "no_s1": no_s1, "vh_like_vv": like_vv, "vh_flat": flat}
    write_variants(args.out, args.cube, variants)
    return 0


def write_variants(out: Path, cube_name: str, variants: dict[str, xr.Dataset]) -> None:
    """Each variant as ``out/<name>/cubes/<cube_name>.nc`` (a ``FIELDFLOW_DATA_DIR``)."""
    for name, variant in variants.items():
        folder = out / name / "cubes"
        folder.mkdir(parents=True, exist_ok=True)
        write_cube(variant, folder / f"{cube_name}.nc")
        print(folder / f"{cube_name}.nc", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
