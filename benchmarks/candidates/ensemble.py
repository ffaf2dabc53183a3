"""Step 1 of ensemble_rule.txt: the mean of several networks' best estimates, scored by
benchmarks/seed_spread.py as if it were the model.

    python benchmarks/candidates/ensemble.py --members A.pt,B.pt[,C.pt] -- [seed_spread options]

The model method is swapped, for this process only, for one that runs the shipped inference
(core.model.inference.model_method) once per member on the same observations and averages the
members' best estimates (no samples: run with ``--network-alone``). Everything else, the draws,
the hidden pixels and the scoring, is seed_spread's, so the figures pair with its earlier JSON.
The first member is the one seed_spread names and whose record says which cubes were seen;
every member must have held out the same sites.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core import reconstruct  # noqa: E402
from core.reconstruct import Prediction, ReconstructOptions  # noqa: E402

MEMBERS_VARIABLE = "FIELDFLOW_ENSEMBLE_MEMBERS"
"""The members, comma-separated: read at each call, since core.reconstruct imports this module
afresh by name."""


def averaged(observed: xr.Dataset, query: np.ndarray, options: ReconstructOptions) -> Prediction:
    """The members' mean best estimate (a deterministic method: no samples, no band)."""
    from core.model.inference import model_method

    members = [Path(m) for m in os.environ[MEMBERS_VARIABLE].split(",")]
    total: np.ndarray | None = None
    attrs: dict[str, object] = {}
    for member in members:
        prediction = model_method(
            observed, query, replace(options, checkpoint=member, checkpoint_version=None)
        )
        total = prediction.mean if total is None else total + prediction.mean
        attrs = attrs or prediction.attrs
    assert total is not None
    return Prediction(mean=(total / len(members)).astype(np.float32), attrs=attrs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", required=True, help="checkpoints, comma-separated")
    args, rest = parser.parse_known_args()
    members = [str(Path(m).absolute()) for m in args.members.split(",") if m.strip()]
    missing = [m for m in members if not Path(m).is_file()]
    if len(members) < 2 or missing:
        raise SystemExit(f"--members needs two or more checkpoint files (missing: {missing}).")
    os.environ[MEMBERS_VARIABLE] = ",".join(members)
    reconstruct.METHODS["model"] = "benchmarks.candidates.ensemble:averaged"
    rest = [a for a in rest if a != "--"]
    sys.argv = ["seed_spread.py", "--checkpoint", members[0], *rest]
    runpy.run_path(str(ROOT / "benchmarks" / "seed_spread.py"), run_name="__main__")


if __name__ == "__main__":
    main()
