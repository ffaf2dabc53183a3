"""``python -m core batch`` on a Dask cluster of separately started processes (review 17).

The scheduler and each worker are processes of their own (:mod:`tests.support.dask_processes`),
each in its own working folder and environment, as on machines of their own; the fields are
fetched from the local STAC API and COG server. Checked: relative folders are the client's,
not a worker's; a worker or scheduler that cannot import FieldFlow, a model a worker cannot
see, a folder a worker does not share, a cluster without workers, a GPU worker that leaves, a
scheduler that dies, a worker that does not answer, a second batch into the same folder, and a
batch stopped while its workers reconstruct.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from core import batch
from core.batch import MARKER_FILE, BatchField, BatchRequest, Fetched, reconstruct_task
from core.cli import main
from core.cli.batch import BATCH_LOCK_FILE
from core.config import Settings
from core.cube import read_cube
from core.demo import to_lonlat
from core.distributed import Cluster, connect, local_cluster, scheduler_details
from core.fetch import FetchResult
from core.field import Field
from core.grid import grid_from_cube
from core.model.checkpoint import Checkpoint, save_checkpoint
from core.model.config import ModelConfig
from core.model.network import FieldFlowNet
from core.reconstruct import ReconstructOptions
from core.storage import claimed
from tests.integration.test_batch import (
    IDS,
    NAMES,
    batch_args,
    read_summary,
    strips,
    write_fields,
)
from tests.support.dask_processes import DaskProcesses, environment
from tests.support.site import PublishedSite
from tests.support.waiting import until


@pytest.fixture(scope="module")
def site(published_site) -> PublishedSite:
    return published_site("be-flanders-a", max_dates=10)


@pytest.fixture
def fields(site: PublishedSite, tmp_path: Path) -> Path:
    """Two of the three strips (a third only costs time here)."""
    return write_fields(tmp_path / "fields.gpkg", strips(site)[:2], list(NAMES[:2]), list(IDS[:2]))


def command(fields: Path, out: str | Path, site: PublishedSite, address: str) -> list[str]:
    """``python -m core batch`` of the fields, linear, on the cluster at ``address``."""
    return [sys.executable, "-m", "core", *batch_args(fields, out, site, scheduler=address)]


def start_command(
    args: list[str], site: PublishedSite, cwd: Path, cache: str | Path
) -> subprocess.Popen[str]:
    """``args`` in a process of its own, in ``cwd``, with the site's STAC API and ``cache``."""
    env = environment(extra={"STAC_API_URL": site.stac_url, "FIELDFLOW_CACHE_DIR": str(cache)})
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_command(
    args: list[str], site: PublishedSite, cwd: Path, cache: str | Path, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """:func:`start_command`, waited for."""
    running = start_command(args, site, cwd, cache)
    try:
        out, err = running.communicate(timeout=timeout_s)
    finally:
        if running.poll() is None:
            running.kill()
    return subprocess.CompletedProcess(args, running.returncode, out, err)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_relative_folders_are_the_clients_and_local_options_are_said_to_change_nothing(
    site, fields, tmp_path
) -> None:
    # Review 17: '--out out-rel' and FIELDFLOW_CACHE_DIR=relcache were taken in the worker's
    # working folder; the batch said "ok" while the user's folder held no field's files.
    client = tmp_path / "client"
    with DaskProcesses(tmp_path / "cluster") as cluster:
        cluster.worker("w1")
        cluster.wait_for_workers(1)
        args = [*command(fields, "out-rel", site, cluster.address), "--workers", "7"]
        done = run_command(args, site, client, cache="relcache")
    assert done.returncode == 0, done.stdout + done.stderr
    for field_id in IDS[:2]:
        assert (client / "out-rel" / field_id / "ndvi.csv").is_file()
        assert (client / "out-rel" / field_id / MARKER_FILE).is_file()
    assert (client / "relcache").is_dir()
    worker_folder = tmp_path / "cluster" / "w1"
    assert not (worker_folder / "out-rel").exists() and not (worker_folder / "relcache").exists()
    assert not (client / "out-rel" / BATCH_LOCK_FILE).exists()  # released with the batch
    assert "note: --workers only shape a local cluster, and change nothing on the cluster" in (
        done.stderr
    )


def test_a_worker_without_fieldflows_code_is_refused_in_one_line(site, fields, tmp_path) -> None:
    # Review 17: a 30-line traceback, status 1; a worker that joined later hung the batch.
    with DaskProcesses(tmp_path / "cluster") as cluster:
        cluster.worker("good")
        cluster.worker("bare", fieldflow=False)
        cluster.wait_for_workers(2)
        done = run_command(
            command(fields, tmp_path / "out", site, cluster.address), site, tmp_path, "cache"
        )
    assert done.returncode == 2, done.stdout + done.stderr
    said = error_lines(done)
    assert len(said) == 1, done.stderr
    assert said[0].startswith(f"error: 1 Dask worker(s) of {cluster.address} cannot run "), said
    assert "No module named 'core'" in said[0] and "PYTHONPATH" in said[0]
    assert not (tmp_path / "out" / IDS[0]).exists()  # nothing was sent


def test_a_scheduler_without_fieldflows_code_is_refused_in_one_line(site, fields, tmp_path) -> None:
    # Review 17: every field "failed: RuntimeError: Error during deserialization of the task
    # graph. This frequently", cut there, status 1.
    with DaskProcesses(tmp_path / "cluster", scheduler_fieldflow=False) as cluster:
        cluster.worker("good")
        cluster.wait_for_workers(1)
        done = run_command(
            command(fields, tmp_path / "out", site, cluster.address), site, tmp_path, "cache"
        )
    assert done.returncode == 2, done.stdout + done.stderr
    said = error_lines(done)
    assert len(said) == 1, done.stderr
    assert said[0].startswith(
        f"error: The Dask scheduler at {cluster.address} cannot take FieldFlow's tasks ("
    ), said
    assert "different environments" in said[0] and "PYTHONPATH" in said[0]


def test_a_batch_on_a_cluster_without_workers_says_it_waits_and_goes_on_when_one_joins(
    site, fields, tmp_path, monkeypatch
) -> None:
    # Review 17: "0 workers" and then silence, however long.
    with DaskProcesses(tmp_path / "cluster") as cluster:
        running = start_command(
            command(fields, tmp_path / "out", site, cluster.address), site, tmp_path, "cache"
        )
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(running.stderr), daemon=True)
        reader.start()
        try:
            until(lambda: any("no workers running" in line for line in err), timeout_s=60)
            cluster.worker("late")
            out, _ = running.communicate(timeout=240)
        finally:
            if running.poll() is None:
                running.kill()
        reader.join(timeout=10)
    assert running.returncode == 0, out + "".join(err)
    assert out.count(": ok in ") == 2
    assert any(
        line.startswith("note: waiting: the Dask scheduler at ")
        and "has no workers running" in line
        for line in err
    ), err
    # said once, not once by the command and again by the batch's watch
    assert sum("no workers" in line for line in err) == 1, err


def test_fields_sent_to_a_gpu_worker_that_leaves_go_to_the_others(
    site, fields, tmp_path, monkeypatch, capsys
) -> None:
    # Review 17: the only GPU worker killed, its fields waited for ever in the scheduler's
    # "no-worker" state while the CPU worker sat idle, without a word.
    torch.manual_seed(0)
    config = ModelConfig(
        width=16, depth=1, heads=2, flow_hidden=32, flow_layers=1, tile=32, tile_overlap=8
    )
    checkpoint = save_checkpoint(Checkpoint(model=FieldFlowNet(config)), tmp_path / "tiny.pt")
    monkeypatch.setattr(batch, "GPU_GONE_S", 1.0)
    monkeypatch.setattr(batch, "WATCH_EVERY_S", 0.3)
    monkeypatch.setenv("STAC_API_URL", site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with DaskProcesses(tmp_path / "cluster") as cluster:
        cluster.worker("cpu")
        cluster.worker("gpu", resources="GPU=1")
        cluster.wait_for_workers(2)
        asked = Cluster.resources_for

        def then_the_gpu_worker_goes(self: Cluster, method: str) -> dict[str, float] | None:
            wanted = asked(self, method)  # decided with the GPU worker there...
            cluster.kill("gpu")  # ...which goes before any field reaches it
            return wanted

        monkeypatch.setattr(Cluster, "resources_for", then_the_gpu_worker_goes)
        args = command(fields, tmp_path / "out", site, cluster.address)[3:]
        args[args.index("--method") + 1] = "model"
        args += ["--checkpoint", str(checkpoint), "--device", "cpu", "--samples", "1"]
        status = main(args)
    printed = capsys.readouterr()
    assert status == 0, printed.out + printed.err
    assert printed.out.count(": ok in ") == 2
    assert "1 GPU" in printed.out  # it had one at the start
    assert "no worker has offered a GPU for 1 s: the 2 remaining field(s) go to the other " in (
        printed.err
    )


def test_a_scheduler_lost_mid_batch_is_one_line_and_a_rerun_resumes(site, fields, tmp_path) -> None:
    # Review 17: every unfinished field "failed" with Dask's "scheduler-connection-lost", a
    # Dask traceback on stderr, and the status of a field's failure (1).
    site.cog_server.faults.delay_next(400, 0.1, prefix="/sentinel2-l2/")  # fetches under way
    with DaskProcesses(tmp_path / "cluster") as cluster:
        cluster.worker("w1")
        cluster.wait_for_workers(1)
        running = start_command(
            command(fields, tmp_path / "out", site, cluster.address), site, tmp_path, "cache"
        )
        try:
            first = running.stdout.readline()  # "Batch of 2 field(s) ... on tcp://..."
            assert first.startswith("Batch of 2 field(s)"), first + running.stderr.read()
            time.sleep(1.0)
            cluster.kill_scheduler()
            out, err = running.communicate(timeout=180)
        finally:
            if running.poll() is None:
                running.kill()
        site.cog_server.faults.clear()
        assert running.returncode == 2, first + out + err
        said = [line for line in err.splitlines() if line.strip()]
        assert said[-1].startswith(f"error: Lost the Dask scheduler at {cluster.address}: "), err
        assert "Traceback" not in err and ": failed after" not in out, err
        cluster.start_scheduler()  # back, with a worker: the same command finishes the batch
        cluster.worker("w2")
        cluster.wait_for_workers(1)
        done = run_command(
            command(fields, tmp_path / "out", site, cluster.address),
            site,
            tmp_path,
            tmp_path / "cache",
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok in ") + done.stdout.count(": skipped") == 2


def test_a_worker_that_does_not_answer_does_not_hold_the_connection(tmp_path) -> None:
    # Review 17: 'client.run' waited for every worker without a limit; a worker that joined
    # but never started kept batch silent for 8 minutes before its first line.
    with DaskProcesses(tmp_path / "cluster") as cluster:
        cluster.worker("w1")
        frozen = cluster.worker("frozen")
        cluster.wait_for_workers(2)
        os.killpg(frozen.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with connect(cluster.address, warn=False) as connected:
                details = scheduler_details(connected.client)
                info = connected.info()
            took = time.monotonic() - started
        finally:
            os.killpg(frozen.pid, signal.SIGCONT)
    names = {worker["name"]: address for address, worker in details["workers"].items()}
    assert info.silent == (names["frozen"],)
    assert took < 60, took  # was minutes: until the scheduler gave the worker up
    assert f"(1 did not answer within 10 s: {names['frozen']})" in info.describe()


def test_a_second_batch_into_the_same_folder_is_refused(site, fields, tmp_path, capsys) -> None:
    # Review 17: two at once each said "6 ok"; the one that ended first had its fields
    # replaced by the other's without a word.
    out = tmp_path / "out"
    args = command(fields, out, site, "local")[3:]  # a local cluster of threads
    with claimed(out / BATCH_LOCK_FILE, "held by this test"):
        status = main(args)
    said = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert said == [
        f"error: Another batch is writing to {out} now; wait until it has ended, or choose "
        "another --out (two at once would each replace the other's fields; review 17)."
    ]


def test_a_stopped_batch_stops_its_reconstruction_on_the_worker_and_writes_nothing(
    cubes_dir, tmp_path
) -> None:
    # Review 17: after Ctrl-C the workers went on reconstructing for 85 s and then wrote the
    # field's outputs into the folder the command had said it kept nothing partial in.
    cube = read_cube(cubes_dir / "be-flanders-a_2017-2018.nc").isel(x=slice(0, 32), y=slice(0, 32))
    grid = grid_from_cube(cube)
    x0, y0, x1, y1 = grid.bounds
    from shapely.geometry import box

    field = Field(to_lonlat(box(x0 + 20, y0 + 20, x1 - 20, y1 - 20), grid.crs), "F")
    fetched = FetchResult(cube, grid, {"sentinel-2-l2a": 1}, {"s2": 1, "s1": 0}, "none", "")
    request = BatchRequest(
        start="2018-03-01",
        end="2018-09-30",
        method="model",
        every_days=30,
        options=ReconstructOptions(samples=2, adapt_steps=400, device="cpu"),
    )
    out = tmp_path / "out"
    fingerprint = request.fingerprint(field, Settings())
    with local_cluster(1, processes=False) as cluster:
        client = cluster.client
        future = client.submit(
            reconstruct_task, Fetched(fetched), BatchField(0, "F", "F", field), request,
            str(out), fingerprint, key="fieldflow-reconstruct-F-test",
        )  # fmt: skip
        (worker,) = cluster.local.workers.values()

        def state() -> str | None:
            task = worker.state.tasks.get(future.key)
            return None if task is None else task.state

        until(lambda: state() == "executing", timeout_s=60)
        time.sleep(3.0)  # tuning the network on the field: 400 steps, minutes on 2 cores
        future.cancel()
        stopped = time.monotonic()
        until(lambda: state() in (None, "forgotten", "released"), timeout_s=60)
        took = time.monotonic() - stopped
    assert took < 20, took
    assert not (out / MARKER_FILE).exists() and not (out / "ndvi.csv").exists()
    assert not (out / "frames.tif").exists()


def _namespace_prefix(*hidden: Path) -> list[str]:
    """Run a worker in a mount namespace of its own where each of ``hidden`` is an empty tmpfs:
    a machine that does not share those folders. Needs root and unshare; skips otherwise."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a worker that does not share a folder needs root and unshare here")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"unshare -m is refused here: {probe.stderr.decode().strip()}")
    mounts = " && ".join(f"mount -t tmpfs tmpfs {path}" for path in hidden)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh"]


def test_a_worker_that_does_not_share_the_folders_is_said_not_trusted(
    site, fields, tmp_path
) -> None:
    # Review 17: outputs a worker wrote to its own disk were "ok" (status 0) with nothing in
    # the user's folder; a checkpoint missing on a worker read "No model checkpoint at X. Train
    # one", once per field after its fetch, though X is on the user's machine.
    out, models = tmp_path / "out", tmp_path / "models"
    out.mkdir()
    models.mkdir()
    torch.manual_seed(0)
    config = ModelConfig(
        width=16, depth=1, heads=2, flow_hidden=32, flow_layers=1, tile=32, tile_overlap=8
    )
    checkpoint = save_checkpoint(Checkpoint(model=FieldFlowNet(config)), models / "tiny.pt")
    with DaskProcesses(tmp_path / "cluster") as cluster:
        cluster.worker("elsewhere", prefix=_namespace_prefix(out, models))
        cluster.wait_for_workers(1)
        linear = run_command(command(fields, out, site, cluster.address), site, tmp_path, "cache")
        model = command(fields, out, site, cluster.address)
        model[model.index("--method") + 1] = "model"
        model += ["--checkpoint", str(checkpoint), "--device", "cpu"]
        refused = run_command(model, site, tmp_path, "cache")
    assert linear.returncode == 1, linear.stdout + linear.stderr
    assert linear.stdout.count(": failed after") == 2
    assert (
        f"outputs are not in {out} as seen from this machine: the worker wrote them to its own "
        "disk. --out must be a folder every worker of the cluster sees at the same path"
    ) in linear.stdout
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (said,) = error_lines(refused)
    assert said.startswith(f"error: The model checkpoint {checkpoint} is not on 1 Dask worker(s)")
    assert checkpoint.is_file()  # on this machine it is there
    assert {row["status"] for row in read_summary(out)} == {"failed"}
