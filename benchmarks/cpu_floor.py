"""What a GPU cannot speed up: the model's CPU-side work on a large field, with a tiny network.

    python benchmarks/cpu_floor.py [--size 512] [--threads 2] [--top 40]

Trains a throw-away tiny checkpoint (``python -m core train --tiny``, seconds), then
reconstructs the benchmark cube of ``python -m core bench`` (be-flanders-a mirror-tiled to
``--size`` px, 70 S2 dates, 20 query dates, K = 8, the default options: the field blend on)
once under cProfile and prints the profile. The tiny network costs little, so what remains is
the numpy around it: the tiles' input features, the blend's Whittaker smoother, the per-field
fits, the output's percentiles and the tile loop's bookkeeping.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bench import make_bench_cube, query_dates
from core.cli import main as cli
from core.config import Settings
from core.cube import read_cube
from core.reconstruct import ReconstructOptions, reconstruct


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "tiny.pt"
        if cli(["train", "--tiny", "--out", str(checkpoint), "--threads", str(args.threads)]):
            return 1
        source = read_cube(Settings.from_env().cubes_dir / "be-flanders-a_2017-2018.nc")
        cube = make_bench_cube(source, args.size, 70)
        query = query_dates(cube, 20)
        options = ReconstructOptions(samples=8, checkpoint=checkpoint)
        profile = cProfile.Profile()
        began = time.perf_counter()
        profile.enable()
        reconstruct(cube, query, "model", options)
        profile.disable()
    print(f"size {args.size} px, tiny network, K = 8: {time.perf_counter() - began:.1f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":  # the smoother's worker processes re-import this module
    raise SystemExit(main())
