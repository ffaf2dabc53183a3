"""The field blend's weights on whole cubes: how far each field leans on the Whittaker smoother.

    python benchmarks/blend_weights.py [--cube FILE ...] [--seed 0] [--out FILE]

For each cube (default: the shipped checkpoint's held-out sites) the blend is fitted as a Run
fits it (24 episodes of the cube's own clear pixels, the request's seed) on the whole cube, and
its weights are printed per band (rows) and distance to the nearest clear observation
(columns: <= 8 days, 8-20, > 20), with the time the fit took. A weight of 0 keeps the network's
estimate, 1 takes the smoother's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import DEFAULT_CHECKPOINT, Settings
from core.cube import S2_BANDS, bands_present, read_cube
from core.model.inference import cached_checkpoint, field_checkpoint
from core.reconstruct import ReconstructOptions, observations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cube", action="append", default=None, help="cube file (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the text here")
    args = parser.parse_args()
    checkpoint = cached_checkpoint(str(DEFAULT_CHECKPOINT), "cpu")
    cubes_dir = Settings.from_env().cubes_dir
    paths = args.cube or [
        str(p)
        for site in checkpoint.record.get("holdout_sites", [])
        for p in sorted(cubes_dir.glob(f"{site}_*.nc"))
    ]
    lines = []
    for path in paths:
        cube = read_cube(path)
        options = ReconstructOptions(device="cpu", seed=args.seed, blend_field=True)
        start = time.perf_counter()
        field = field_checkpoint(
            checkpoint, observations(cube), options, checkpoint.config.default_steps, "cpu"
        )
        seconds = time.perf_counter() - start
        lines.append(f"{Path(path).name}: fitted in {seconds:.1f} s (seed {args.seed})")
        if field.blend is None:
            lines.append("  too short to fit: the network alone")
            continue
        lines.append(f"  {'band':5} {'<=8 d':>6} {'8-20 d':>7} {'>20 d':>6}")
        present = bands_present(cube)
        for b, name in enumerate(S2_BANDS):
            if present[b]:
                w = field.blend.weights[b]
                lines.append(f"  {name:5} {w[0]:6.1f} {w[1]:7.1f} {w[2]:6.1f}")
        mean = np.mean(field.blend.weights[present], axis=0)
        lines.append(f"  {'mean':5} {mean[0]:6.2f} {mean[1]:7.2f} {mean[2]:6.2f}")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
