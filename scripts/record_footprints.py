"""Record where a checkpoint's training cubes lie, for a checkpoint trained before
``seen_footprints`` was part of its training record; the weights are not touched.

    PYTHONPATH=. python scripts/record_footprints.py assets/model.pt --data ../shared/data/cubes

Reads every cube in ``--data`` whose ``site`` the checkpoint was trained or tuned on, writes
their footprints into the record (:attr:`core.model.checkpoint.Checkpoint.seen_footprints`), and
saves the checkpoint (and its JSON record) in place, atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from core.cube import read_cube
from core.grid import cube_lonlat_bounds
from core.model.checkpoint import load_checkpoint, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder of the training cubes")
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    before = {k: v.clone() for k, v in checkpoint.model.state_dict().items()}
    footprints: list[dict[str, object]] = []
    for path in sorted(args.data.glob("*.nc")):
        cube = read_cube(path)
        site = str(cube.attrs.get("site", path.stem))
        bounds = cube_lonlat_bounds(cube)
        if site in checkpoint.seen_sites and bounds is not None:
            footprints.append({"site": site, "bounds": [round(v, 6) for v in bounds]})
    missing = set(checkpoint.seen_sites) - {str(f["site"]) for f in footprints}
    if missing:
        print(f"no cube in {args.data} for {sorted(missing)}; nothing written", file=sys.stderr)
        return 1
    checkpoint.record["seen_footprints"] = footprints
    save_checkpoint(checkpoint, args.checkpoint)
    after = load_checkpoint(args.checkpoint).model.state_dict()
    if not all(torch.equal(before[k], after[k]) for k in before):
        raise SystemExit(f"the weights of {args.checkpoint} changed on saving; restore it")
    for entry in footprints:
        print(entry["site"], entry["bounds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
