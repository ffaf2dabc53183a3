"""How fast a Run that is no longer wanted stops, and how soon and how well its reconstruction
says how long it has left.

    python benchmarks/run_progress.py [--size 256] [--delays 5,12,20] [--adapt-steps 0]
        [--threads 2] [--cube ../shared/data/cubes/be-flanders-a_2017-2018.nc] [--whole]

A user who changes the field or the period during a Run leaves it: the app's job is cancelled
(:meth:`core.jobs.JobBoard.leave`) and stops at its next progress report, and until then it
keeps the cores from the Run that replaced it. Each repeat starts an app Run (the model with
the app's options: K = 8, the field blend, the band fitted on the field) as a job on the cube
mirror-tiled to ``--size`` px (:func:`core.bench.make_bench_cube`; 0: the cube as it is),
waits for the reconstruction's first report of days done, then ``--delays`` seconds more,
leaves it and times how long it takes to end. It also prints, from the Run's own reports, how
long the reconstruction ran (from the end of the field's fits) before its time left could first
be estimated (two reports with days done) and how many reports it made. Medians at the end.

``--whole``: one Run to its end instead, printing at each tenth of the reconstruction the time
left the page would show (:func:`core.jobs.seconds_left`) against the time it really took.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bench import make_bench_cube
from core.config import Settings
from core.cube import read_cube, write_cube
from core.demo import to_lonlat
from core.field import Field
from core.jobs import JobBoard, Report, seconds_left
from core.model.inference import clear_field_cache
from core.reconstruct import ReconstructOptions
from core.season import SeasonRequest, compute_season
from core.timeline import calendar_day

RECONSTRUCTING = "reconstructing "


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().cubes_dir / "be-flanders-a_2017-2018.nc"
    parser.add_argument("--cube", type=Path, default=default)
    parser.add_argument("--size", type=int, default=256, help="mirror-tile to this many px")
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--delays", default="5,12,20", help="seconds after the first days done")
    parser.add_argument("--adapt-steps", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--whole", action="store_true", help="one whole Run: estimate vs truth")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path = args.cube
        if args.size:
            source = read_cube(args.cube)
            tiled = make_bench_cube(source, args.size, source.sizes["time_s2"])
            path = write_cube(tiled, Path(folder) / f"{args.cube.stem}_{args.size}px.nc")
        request = app_request(path, args.days, args.adapt_steps)
        print(f"{path.name}, {request.start} to {request.end}, model, K = 8, "
              f"tuned {args.adapt_steps} steps, {args.threads} threads", flush=True)  # fmt: skip
        if args.whole:
            return whole_run(request)
        latencies, first_estimates = [], []
        for delay in (float(d) for d in args.delays.split(",")):
            latency, reports = leave_after(request, delay)
            estimate = first_estimate_s(reports)
            latencies.append(latency)
            if estimate is not None:
                first_estimates.append(estimate)
            recon = [r for r in reports if r.stage.startswith(RECONSTRUCTING)]
            print(
                f"left {delay:4.1f} s after the first days done: stopped in {latency:5.2f} s; "
                f"time left first estimated {fmt(estimate)} into the reconstruction; "
                f"{len(recon)} reports of it, the last {recon[-1].done} of {recon[-1].total} "
                "days",
                flush=True,
            )
        print(f"median: stopped in {statistics.median(latencies):.2f} s; time left first "
              f"estimated after {fmt(median(first_estimates))}", flush=True)  # fmt: skip
    return 0


def app_request(path: Path, days: int, adapt_steps: int) -> SeasonRequest:
    """The app's model Run on ``path``'s extent less a 3 % rim, ``days`` from its first S2."""
    cube = read_cube(path)
    xs, ys = cube["x"].values, cube["y"].values
    rim_x, rim_y = 0.03 * np.ptp(xs), 0.03 * np.ptp(ys)
    box = shapely.box(xs.min() + rim_x, ys.min() + rim_y, xs.max() - rim_x, ys.max() - rim_y)
    field = Field(to_lonlat(box, str(cube.attrs["crs"])), "benchmark field")
    acquired = calendar_day(cube["time_s2"].values)
    last = min(acquired[-1], acquired[0] + np.timedelta64(days - 1, "D"))
    start, end = (np.datetime64(d, "D").item() for d in (acquired[0], last))
    options = ReconstructOptions(
        samples=8, calibrate_field=True, blend_field=True, adapt_steps=adapt_steps
    )
    return SeasonRequest(field, start, end, method="model", options=options, cube_path=path)


def leave_after(request: SeasonRequest, delay_s: float) -> tuple[float, list[Report]]:
    """Seconds the Run took to end once left ``delay_s`` after its first days done, and its
    reports."""
    clear_field_cache()
    board = JobBoard()
    job = board.join("run", lambda p: compute_season(request, Settings(), progress=p), "me")
    while not any(r.stage.startswith(RECONSTRUCTING) and r.done > 0 for r in job.reports()):
        if job.wait(0.02):
            raise SystemExit(f"the Run ended before its reconstruction began: {job.error}")
    time.sleep(delay_s)
    left = time.monotonic()
    board.leave("run", "me")
    job.wait(None)
    return time.monotonic() - left, job.reports()


def whole_run(request: SeasonRequest) -> int:
    """One Run to its end: the reconstruction's time left as estimated at each tenth of its
    days, against the time it then took."""
    clear_field_cache()
    job = JobBoard().join("run", lambda p: compute_season(request, Settings(), progress=p), "me")
    job.wait(None)
    if job.error is not None:
        raise SystemExit(f"the Run failed: {job.error!r}")
    reports = job.reports()
    end = job.finished_at
    recon = [i for i, r in enumerate(reports) if r.stage.startswith(RECONSTRUCTING)]
    total = reports[recon[-1]].total
    print(f"Run {end - job.started_at:.1f} s; reconstruction {end - reports[recon[0]].at:.1f} s "
          f"in {len(recon)} reports", flush=True)  # fmt: skip
    first = next((i for i in recon if seconds_left(reports[: i + 1], reports[i].at)), None)
    if first is not None:
        estimate = seconds_left(reports[: first + 1], reports[first].at)
        truth = end - reports[first].at
        print(f"  first shown at {reports[first].done} of {total} days, "
              f"{reports[first].at - reports[recon[0]].at:.1f} s into the reconstruction: "
              f"estimated {estimate:6.1f} s left, took {truth:6.1f} s "
              f"({estimate / truth:.2f} x)", flush=True)  # fmt: skip
    shown = set()
    for i in recon:
        tenth = reports[i].done * 10 // total
        estimate = seconds_left(reports[: i + 1], reports[i].at)
        if tenth in shown or estimate is None or tenth == 10:
            continue
        shown.add(tenth)
        truth = end - reports[i].at
        print(f"  {reports[i].done:4d} of {total} days: estimated {estimate:6.1f} s left, "
              f"took {truth:6.1f} s ({estimate / truth:.2f} x)", flush=True)  # fmt: skip
    return 0


def first_estimate_s(reports: list[Report]) -> float | None:
    """Seconds from the end of the field's fits (the last report of another stage before the
    first days done) to the reconstruction's first report with a time left."""
    recon = [i for i, r in enumerate(reports) if r.stage.startswith(RECONSTRUCTING)]
    first_done = next((i for i in recon if reports[i].done > 0), None)
    if first_done is None:
        return None
    fits = [i for i in range(first_done) if not reports[i].stage.startswith(RECONSTRUCTING)]
    began = reports[fits[-1]].at
    for i in recon:
        if seconds_left(reports[: i + 1], reports[i].at) is not None:
            return reports[i].at - began
    return None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


if __name__ == "__main__":
    raise SystemExit(main())
