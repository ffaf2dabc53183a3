"""The Whittaker smoother in one process and in worker processes, by field size.

    python benchmarks/whittaker_workers.py [--sizes 128,256,512] [--workers 1,2] [--repeats 3]

The smoother (``core.baselines.smooth_whittaker``, GCV per series, as the ``whittaker`` method
and the model's field blend run it) on the benchmark cube (``core.bench.make_bench_cube``: the
real be-flanders-a cube mirror-tiled to the size, 70 S2 dates, its real clouds) at 20 query
dates, with ``FIELDFLOW_WHITTAKER_WORKERS`` set to each worker count (1: in this process).
Worker processes are only used from ``PARALLEL_MIN_SERIES`` series on; below that every count
runs in one process. Prints the median wall time per size and count, and checks that the
results agree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.baselines import PARALLEL_MIN_SERIES, WORKERS_ENV, smooth_whittaker
from core.bench import machine_description, make_bench_cube, query_dates
from core.config import Settings
from core.cube import read_cube
from core.reconstruct import observations
from core.timeline import to_days


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = read_cube(Settings.from_env().cubes_dir / "be-flanders-a_2017-2018.nc")
    machine = machine_description(probe_torch=False)
    print(f"{machine}; worker processes from {PARALLEL_MIN_SERIES:,} series", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        cube = observations(make_bench_cube(source, size, 70))
        values = cube["s2"].values
        days = to_days(cube["time_s2"].values)
        query = to_days(query_dates(cube, 20))
        reference = None
        for workers in (int(w) for w in args.workers.split(",")):
            os.environ[WORKERS_ENV] = str(workers)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = smooth_whittaker(values, days, query)
                times.append(time.perf_counter() - start)
            if reference is None:
                reference = out
            agree = np.allclose(out, reference, rtol=1e-6, atol=1e-7, equal_nan=True)
            print(
                f"{size} px ({values[0].size:,} series), {workers} worker(s): median "
                f"{statistics.median(times):.1f} s of {[round(t, 1) for t in times]}; "
                f"same result: {agree}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
