"""Several users' Runs at once in one process, as on a shared app: each Run's time, and the
process's peak memory, with the admission limits of :mod:`core.admission` given.

    python benchmarks/runs_at_once.py [--runs 3] [--size 128] [--days 120]
        [--max-runs N] [--memory-gb G] [--cube ../shared/data/cubes/be-flanders-a_2017-2018.nc]

Each Run is :func:`core.season.compute_season` with the app's model settings (K = 8, the
field blend, the band fitted on the field; untuned unless ``--adapt-steps``) as a job of a
:class:`core.jobs.JobBoard`, as the app's sessions start them; all start together, on
fields that differ by their rim (so no Run reuses another's fits). The cube is mirror-tiled
to ``--size`` px (:func:`core.bench.make_bench_cube`). ``--max-runs`` and ``--memory-gb`` are
``FIELDFLOW_MAX_RUNS`` and ``FIELDFLOW_RUN_MEMORY_GB`` (default: the machine's defaults). Run
one configuration per process: the peak memory printed is the process's (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.admission import WAITING_FOR_RUNS, run_bytes
from core.bench import make_bench_cube
from core.config import Settings
from core.cube import read_cube, write_cube
from core.demo import to_lonlat
from core.field import Field
from core.jobs import JobBoard
from core.reconstruct import ReconstructOptions
from core.season import SeasonRequest, compute_season
from core.timeline import calendar_day


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().cubes_dir / "be-flanders-a_2017-2018.nc"
    parser.add_argument("--cube", type=Path, default=default)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--adapt-steps", type=int, default=0)
    parser.add_argument("--max-runs", type=int, default=0, help="0: the machine's default")
    parser.add_argument("--memory-gb", type=float, default=0.0, help="0: the machine's default")
    args = parser.parse_args()
    settings = Settings.from_env()
    overrides = {}
    if args.max_runs:
        overrides["max_runs"] = args.max_runs
    if args.memory_gb:
        overrides["run_memory_gb"] = args.memory_gb
    settings = Settings(**{**settings.__dict__, **overrides})
    with tempfile.TemporaryDirectory(prefix="fieldflow-bench-") as scratch:
        path = Path(scratch) / f"{args.cube.stem}_{args.size}px.nc"
        source = read_cube(args.cube)
        write_cube(make_bench_cube(source, args.size, source.sizes["time_s2"]), path)
        return run(args, settings, path)


def run(args: argparse.Namespace, settings: Settings, path: Path) -> int:
    cube = read_cube(path)
    crs = str(cube.attrs["crs"])
    xs, ys = cube["x"].values, cube["y"].values
    acquired = calendar_day(cube["time_s2"].values)
    last = min(acquired[-1], acquired[0] + np.timedelta64(args.days - 1, "D"))
    start, end = (np.datetime64(d, "D").item() for d in (acquired[0], last))
    options = ReconstructOptions(samples=8, calibrate_field=True, adapt_steps=args.adapt_steps)
    requests = []
    for i in range(args.runs):
        rim = 0.03 + 0.01 * i  # a different field each: no Run reuses another's fits
        rx, ry = rim * np.ptp(xs), rim * np.ptp(ys)
        box = shapely.box(xs.min() + rx, ys.min() + ry, xs.max() - rx, ys.max() - ry)
        field = Field(to_lonlat(box, crs), f"field {i}")
        requests.append(
            SeasonRequest(field, start, end, method="model", options=options, cube_path=path)
        )
    in_period = int(((acquired >= acquired[0]) & (acquired <= last)).sum())
    print(
        f"{args.runs} Runs at once of {path.name} ({cube.sizes['y']} x {cube.sizes['x']} px), "
        f"{start} to {end} ({in_period} S2 dates in the period, {cube.sizes['time_s2']} in the "
        f"cube), model K = 8, tuned {args.adapt_steps} steps; FIELDFLOW_MAX_RUNS "
        f"{settings.max_runs}, FIELDFLOW_RUN_MEMORY_GB {settings.run_memory_gb:.2f}; a Run's "
        f"estimate at most {run_bytes(cube.sizes) / 1e9:.2f} GB (the whole cube's; a Run's own "
        "is of its field and its period's cube, smaller)",
        flush=True,
    )
    board = JobBoard()
    began = time.monotonic()
    jobs = [
        board.join(
            f"run-{i}",
            lambda progress, r=request: compute_season(r, settings, progress=progress),
            f"user-{i}",
        )
        for i, request in enumerate(requests)
    ]
    for job in jobs:
        job.wait(None)
    for i, job in enumerate(jobs):
        if job.error is not None:
            print(f"Run {i} failed: {job.error!r}")
            return 1
        reports = job.reports()
        waits = [r.at for r in reports if r.stage == WAITING_FOR_RUNS]
        after = [r.at for r in reports if r.stage != WAITING_FOR_RUNS and waits and r.at > waits[0]]
        waited = (after[0] - waits[0]) if waits and after else 0.0
        print(
            f"Run {i}: ended {job.finished_at - began:6.1f} s after the start, waited "
            f"{waited:5.1f} s for its turn",
            flush=True,
        )
    ends = sorted(job.finished_at - began for job in jobs)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"all ended after {ends[-1]:.1f} s; mean time to a result {np.mean(ends):.1f} s; "
        f"peak resident memory of the process {peak_mb:.0f} MB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
