"""What a model Run says of its accuracy on the field itself, against the yardstick.

    python benchmarks/field_scores.py CUBE[:CHECKPOINT[:ADAPT_STEPS]] ... [--threads 2]

Each argument is a shared cube's name (``../shared/data/cubes/CUBE.nc``), optionally a
checkpoint (default: the shipped one) and tuning steps (default 50, the app's). Reconstructs
two dates of the whole cube with the app's model settings (K = 8, the band fitted on the
field, the field blend) and prints the field's own scores that every model Run records
(:func:`core.model.blend.field_scores`: the model, the network alone, Whittaker and linear on
the field's clear pixels hidden in turn; in NDVI too, per pixel and on each hidden date's
mean, where the cube has red and NIR), their ratio and the Run's note. Compare the ratio with
the yardstick's on the same cube (``benchmarks/seed_spread.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import read_cube
from core.model.inference import clear_field_cache
from core.reconstruct import ReconstructOptions, reconstruct
from core.season import accuracy_headline, fit_notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="CUBE[:CHECKPOINT[:ADAPT_STEPS]]")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Settings.from_env().cubes_dir
    for spec in args.runs:
        name, checkpoint, adapt = [*spec.split(":"), "", "50"][:3]
        cube = read_cube(folder / f"{name}.nc")
        options = ReconstructOptions(
            samples=8,
            calibrate_field=True,
            blend_field=True,
            adapt_steps=int(adapt or 50),
            checkpoint=Path(checkpoint) if checkpoint else None,
        )
        clear_field_cache()
        began = time.perf_counter()
        attrs = reconstruct(cube, cube["time_s2"].values[5:7], "model", options).attrs
        took = time.perf_counter() - began
        model, network, whittaker, linear = (float(v) for v in attrs["model_field_mae"])
        print(
            f"{name}, {Path(checkpoint).name if checkpoint else 'shipped'}, tuned "
            f"{options.adapt_steps} steps ({took:.1f} s): MAE model {model:.5f}, network alone "
            f"{network:.5f}, Whittaker {whittaker:.5f}, linear {linear:.5f} on "
            f"{int(attrs['model_field_mae_values']):,} values; model / the better baseline "
            f"{model / min(whittaker, linear):.3f}",
            flush=True,
        )
        if "model_field_ndvi_mae" in attrs:  # a cube with red and NIR
            pixel = ", ".join(f"{v:.4f}" for v in attrs["model_field_ndvi_mae"])
            mean = attrs.get("model_field_mean_ndvi_mae")
            dates = "" if mean is None else ", ".join(f"{v:.4f}" for v in mean)
            print(
                f"  NDVI MAE (model, Whittaker, linear): per pixel {pixel} on "
                f"{int(attrs['model_field_ndvi_pixels']):,} pixels; a hidden date's mean "
                f"{dates or 'not scored'} on {int(attrs['model_field_ndvi_frames'])} dates",
                flush=True,
            )
        print("  page: " + str(accuracy_headline(attrs)), flush=True)
        print("  " + next(n for n in fit_notes(attrs) if n.startswith("Accuracy")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
