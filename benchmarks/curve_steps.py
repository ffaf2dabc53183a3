"""What the flow head's step count costs an app Run's daily NDVI curve.

    python benchmarks/curve_steps.py [--cube ../shared/data/cubes/hu-alfold_2021.nc]
        [--steps 8,4,2] [--repeats 2] [--threads 2]

The whole cube's daily curve (:func:`core.curve.ndvi_curve`, every day from its first to its
last acquisition) with the app's model settings (K = 8, the field blend, the band fitted on the
field), once per step count and repeat; the per-field cache is emptied before each call, so
every call fits the blend and the band afresh, as a new Run does. Prints the wall time and the
median width of the curve's NDVI band (a check that the band keeps its width).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.curve import ndvi_curve
from core.model.inference import clear_field_cache
from core.reconstruct import ReconstructOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().cubes_dir / "hu-alfold_2021.nc"
    parser.add_argument("--cube", type=Path, default=default)
    parser.add_argument("--steps", default="8,4,2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cube = read_cube(args.cube)
    times = cube["time_s2"].values
    print(f"{args.cube.name}: {dict(cube.sizes)}", flush=True)
    for repeat in range(args.repeats):
        for steps in [int(s) for s in args.steps.split(",")]:
            clear_field_cache()
            options = ReconstructOptions(samples=8, calibrate_field=True, steps=steps)
            start = time.perf_counter()
            curve = ndvi_curve(
                cube, times[0], times[-1], every_days=1, method="model", options=options
            )
            seconds = time.perf_counter() - start
            width = (curve["ndvi_p90"] - curve["ndvi_p10"]).to_numpy()
            print(
                f"rep {repeat} steps {steps}: {seconds:.1f} s, {len(curve)} days, "
                f"median NDVI band width {np.nanmedian(width):.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
