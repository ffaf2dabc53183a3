"""What an app Run costs: :func:`core.season.compute_season` on an offline cube, timed by stage.

    python benchmarks/season_run.py [--cube ../shared/data/cubes/be-flanders-a_2017-2018.nc]
        [--days 183] [--repeats 2] [--threads 2] [--method model] [--size PX]
        [--adapt-steps N] [--samples K] [--screen-haze]
        [--workers N [--threads-per-worker T] [--resend] [--dask-defaults connect|bare]]

The field is the cube's extent less a 3 % rim (the cube must be on a projected grid, as the
app's are); the period is ``--days`` days from the cube's first S2 acquisition; the
options are the app's defaults for the method (model: K = 8, the field blend, the band fitted on
the field; ``--screen-haze`` adds the app's haze screen). The per-field cache is emptied before
each repeat, so each fits afresh, as a new Run does. ``--workers N``: the reconstructions run on
a local Dask cluster of N worker processes (``--threads-per-worker``, default 1), as the app's
do with ``DASK_SCHEDULER_ADDRESS`` set;
it then also prints how many per-field fits each worker made; ``--resend`` sends the cube with
every call, as before 2026-12-02, instead of once per Run
(:meth:`core.distributed.Cluster.cube_on`). ``--dask-defaults``: the workers start with Dask's
own settings (``MALLOC_TRIM_THRESHOLD_`` set, as on a cluster of one's own without
core/dask.yaml), and are reached with :func:`core.distributed.connect`, which gives them glibc's
allocation back (``connect``), or with a bare Client, which does not (``bare``). ``--size``:
the cube mirror-tiled to PX x PX pixels first, all its dates kept
(:func:`core.bench.make_bench_cube`, written to a temporary file), for a large field. Prints the
wall time of each progress stage and of the whole Run, and the frame and curve counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import distributed
from core.bench import make_bench_cube
from core.config import Settings
from core.cube import read_cube, write_cube
from core.distributed import Cluster, connect, local_cluster, reconstructor
from core.field import Field
from core.model.inference import clear_field_cache
from core.progress import listening
from core.reconstruct import ReconstructOptions, Reconstructor, reconstruct
from core.season import SeasonRequest, compute_season
from core.timeline import calendar_day


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().cubes_dir / "be-flanders-a_2017-2018.nc"
    parser.add_argument("--cube", type=Path, default=default)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="model")
    parser.add_argument("--size", type=int, default=0, help="mirror-tile to this many px")
    parser.add_argument("--adapt-steps", type=int, default=0, help="per-field tuning steps")
    parser.add_argument("--samples", type=int, default=8, help="samples K (model; 8 or more)")
    parser.add_argument(
        "--screen-haze", action="store_true", help="the haze screen on, as in the app"
    )
    parser.add_argument("--workers", type=int, default=0, help="local Dask worker processes")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument(
        "--resend", action="store_true", help="send the cube with every call (as before)"
    )
    parser.add_argument(
        "--dask-defaults",
        choices=("connect", "bare"),
        help="workers with Dask's own settings, reached with core's connect or a bare Client",
    )
    args = parser.parse_args()
    if args.dask_defaults and not args.workers:
        parser.error("--dask-defaults needs --workers")
    if args.resend:
        distributed.HELD_CUBES = 0  # read at each call: nothing is kept between calls
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        if args.size:
            source = read_cube(args.cube)
            tiled = make_bench_cube(source, args.size, source.sizes["time_s2"])
            args.cube = write_cube(tiled, Path(folder) / f"{args.cube.stem}_{args.size}px.nc")
        if not args.workers:
            return run(args, reconstruct)
        if args.dask_defaults:
            return run_on_dask_defaults(args)
        with local_cluster(
            args.workers, processes=True, threads_per_worker=args.threads_per_worker
        ) as cluster:
            if cluster.note:
                print(cluster.note, flush=True)
            return run(args, reconstructor(cluster), cluster)


def run_on_dask_defaults(args: argparse.Namespace) -> int:
    """:func:`run` on worker processes started with Dask's own settings (``--dask-defaults``)."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        dashboard_address=None,
    ) as local:
        if args.dask_defaults == "connect":
            cluster = connect(local.scheduler_address)
        else:
            cluster = Cluster(Client(local, set_as_default=False))
        with cluster:
            print(cluster.info().describe(), flush=True)
            return run(args, reconstructor(cluster), cluster)


def resident_mb() -> int:
    """This process's resident memory, MB (what a worker keeps between Runs)."""
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20)


def idle_trims() -> int:
    """Trims this worker made once idle (:func:`core.distributed.model_task`)."""
    return distributed.idle_trims


def fits_held() -> int:
    """Per-field fits (tuned, blended or calibrated checkpoints) this process holds."""
    from core.model import inference

    return len(inference._field)


def run(args: argparse.Namespace, runner: Reconstructor, cluster: Cluster | None = None) -> int:
    """Time ``args.repeats`` Runs on ``args.cube``."""
    cube = read_cube(args.cube)
    if str(cube.attrs.get("crs", "EPSG:4326")).upper() != "EPSG:4326":
        from core.demo import to_lonlat

        def lonlat(polygon: shapely.Polygon) -> shapely.Polygon:
            return to_lonlat(polygon, str(cube.attrs["crs"]))
    else:

        def lonlat(polygon: shapely.Polygon) -> shapely.Polygon:
            return polygon

    xs, ys = cube["x"].values, cube["y"].values
    rim_x, rim_y = 0.03 * np.ptp(xs), 0.03 * np.ptp(ys)
    box = shapely.box(xs.min() + rim_x, ys.min() + rim_y, xs.max() - rim_x, ys.max() - rim_y)
    field = Field(lonlat(box), "benchmark field")
    acquired = calendar_day(cube["time_s2"].values)
    last = min(acquired[-1], acquired[0] + np.timedelta64(args.days - 1, "D"))
    start, end = (np.datetime64(d, "D").item() for d in (acquired[0], last))
    model = args.method == "model"
    options = (
        ReconstructOptions(
            samples=args.samples,
            calibrate_field=True,
            adapt_steps=args.adapt_steps,
            screen_haze=args.screen_haze,
        )
        if model
        else ReconstructOptions(screen_haze=args.screen_haze)
    )
    request = SeasonRequest(
        field, start, end, method=args.method, options=options, cube_path=args.cube
    )
    tuned = f", K = {args.samples}" if model else ""
    tuned += f", tuned {args.adapt_steps} steps" if model and args.adapt_steps else ""
    tuned += ", haze screen on" if args.screen_haze else ""
    where = (
        f", on {args.workers} Dask worker processes of {args.threads_per_worker} thread(s)"
        + (", the cube sent with every call" if args.resend else "")
        + (
            f", started with Dask's own settings, reached with {args.dask_defaults}"
            if args.dask_defaults
            else ""
        )
        if cluster
        else ""
    )
    print(
        f"{args.cube.name}: {dict(cube.sizes)}, {start} to {end}, {args.method}{tuned}{where}",
        flush=True,
    )
    for repeat in range(args.repeats):
        clear_field_cache()
        if cluster:
            cluster.client.run(clear_field_cache)
        marks: list[tuple[str, float]] = []
        began = time.perf_counter()

        def progress(stage: str, done: int, total: int, marks: list = marks) -> None:
            if not marks or marks[-1][0] != stage:
                marks.append((stage, time.perf_counter()))

        with listening(progress):  # the tuning's and error measurement's steps, as the app's
            result = compute_season(
                request, Settings.from_env(), progress=progress, reconstructor=runner
            )
        total = time.perf_counter() - began
        ends = [t for _, t in marks[1:]] + [began + total]
        print(
            f"repeat {repeat}: {total:.1f} s, {len(result.frames)} frames, "
            f"{len(result.curve)} curve days, grid {result.grid.shape}",
            flush=True,
        )
        for (stage, t0), t1 in zip(marks, ends, strict=True):
            print(f"  {t1 - t0:6.1f} s  {stage}", flush=True)
        if cluster:
            held = cluster.client.run(fits_held)
            print(f"  per-field fits made on the workers: {sorted(held.values())}", flush=True)
            rss = cluster.client.run(resident_mb)
            later = min(distributed.TRIM_AFTER_IDLE_S + 1.0, 10.0)
            time.sleep(later)
            idle = cluster.client.run(resident_mb)
            trims = cluster.client.run(idle_trims)
            print(
                f"  workers' resident memory (MB) at the end {sorted(rss.values())}, "
                f"{later:g} s later {sorted(idle.values())}; "
                f"trims when idle so far {sorted(trims.values())}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
