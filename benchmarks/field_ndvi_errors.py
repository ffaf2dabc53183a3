"""Signed errors of each frame's field-mean NDVI (what the NDVI curve shows), per method.

    python benchmarks/field_ndvi_errors.py CUBE_NAME [CUBE_NAME ...]

Each cube (a name in the shared cubes folder) is cut and degraded as the yardstick does
(``core.evaluate``: centre crop, its missing / cloud / gap tasks, seed 0), but each task is run
on its own. Per scored frame: the mean over its hidden clear pixels of the reconstructed NDVI
minus the true one, for linear, Whittaker, the network alone and the model with the field
blend (K = 1). Prints, per cube and task, each method's mean signed error, its mean absolute
error and the per-frame errors. Training cubes are in-sample for the network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube, validate_cube
from core.evaluate import Protocol, centre_crop, hide, plan_tasks
from core.indices import ndvi
from core.reconstruct import ReconstructOptions, reconstruct
from core.timeline import calendar_day

METHODS = (
    ("linear", "linear", ReconstructOptions()),
    ("whittaker", "whittaker", ReconstructOptions()),
    ("network", "model", ReconstructOptions(blend_field=False)),
    ("model", "model", ReconstructOptions()),
)


def main() -> int:
    protocol = Protocol()
    cubes = Settings.from_env().cubes_dir
    for name in sys.argv[1:]:
        cube = centre_crop(validate_cube(read_cube(cubes / f"{name}.nc")), protocol.max_size)
        plan = plan_tasks(cube, name, protocol)
        true_ndvi = ndvi(cube["s2"].values, band_axis=1)
        for task in plan.sets():
            if not task.applicable:
                continue
            degraded = hide(cube, task.hidden, protocol)
            frames = list(task.frames)
            query = calendar_day(cube["time_s2"].values[frames]).astype("datetime64[ns]")
            scored = task.hidden & cube["valid"].values.astype(bool)
            parts = []
            for label, method, options in METHODS:
                result = reconstruct(degraded, query, method, options)["ndvi"].values
                errors = []
                for row, frame in enumerate(frames):
                    ok = scored[frame] & np.isfinite(true_ndvi[frame]) & np.isfinite(result[row])
                    if ok.any():
                        errors.append(result[row][ok].mean() - true_ndvi[frame][ok].mean())
                if not errors:
                    continue
                e = np.asarray(errors)
                listed = " ".join(f"{v:+.3f}" for v in e)
                parts.append(f"{label}: mean {e.mean():+.3f} MAE {np.abs(e).mean():.3f} [{listed}]")
            if parts:
                print(f"{name} {task.task}: " + " | ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
