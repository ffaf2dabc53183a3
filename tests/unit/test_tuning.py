"""The region button's core (core.model.tuning) apart from the page: names, limits, and the
training's lower priority, the training on a Dask worker. The training on this server is run
end to end by the page tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.config import DEFAULT_CHECKPOINT, Settings
from core.errors import FieldFlowError, InputError
from core.model.checkpoint import load_checkpoint
from core.model.training import series_from_cube, trainable_series
from core.model.tuning import (
    MEASURING_STAGE,
    NICE,
    TRAINING_STAGE,
    WRITING_STAGE,
    RegionTuning,
    _lower_priority,
    check_cube,
    model_target,
    suggested_name,
    tune_for_region,
)


def test_a_new_model_gets_a_plain_free_name_and_never_replaces_one(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models")
    assert suggested_name("North parcel (Ghent)", 2024, settings) == "north-parcel-ghent-2024"
    assert model_target(" north-2024.pt ", settings) == tmp_path / "models" / "north-2024.pt"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "north-parcel-ghent-2024.pt").write_bytes(b"x")
    assert suggested_name("North parcel (Ghent)", 2024, settings) == "north-parcel-ghent-2024-2"
    with pytest.raises(InputError, match="already in the models folder"):
        model_target("north-parcel-ghent-2024", settings)
    for bad in ("", "../up", "a/b", ".hidden", "x" * 65):
        with pytest.raises(InputError, match="cannot name a model"):
            model_target(bad, settings)


def test_steps_and_batch_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Give 1 to 5000 fine-tuning steps, not 0"):
        RegionTuning(DEFAULT_CHECKPOINT, tmp_path / "x.pt", steps=0)
    with pytest.raises(InputError, match="batch size must be 1 or more"):
        RegionTuning(DEFAULT_CHECKPOINT, tmp_path / "x.pt", batch_size=0)
    command = RegionTuning(DEFAULT_CHECKPOINT, tmp_path / "x.pt").command(tmp_path)
    assert command[:4] == [sys.executable, "-m", "core", "train"]
    assert command[command.index("--steps") + 1] == "600"


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no process priorities here")
def test_the_training_process_yields_the_cores_to_runs() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _lower_priority(child.pid)
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, own + NICE)
    finally:
        child.kill()
        child.wait()


def test_a_run_too_short_or_too_small_is_refused_in_the_pages_words_as_training_would(
    flanders_cube,
) -> None:
    # Cut from the real Flanders cube: the frames with clear pixels counted, not all frames
    # (six frames, three of them clouded over entirely, are three to learn from).
    clear = flanders_cube["valid"].values.astype(bool).any(axis=(1, 2))
    some, none = np.flatnonzero(clear), np.flatnonzero(~clear)
    assert none.size >= 3, "the cube has fewer overcast frames than this test needs"
    cases = {
        "overcast": (flanders_cube.isel(time_s2=sorted([*some[:3], *none[:3]])), "3 Sentinel-2"),
        "tiny": (flanders_cube.isel(y=slice(30, 33), x=slice(30, 40)), "3 x 10 px"),
        "enough": (flanders_cube.isel(time_s2=some[:4]), ""),
    }
    for name, (cube, said) in cases.items():
        refused_by_training = False
        try:
            trainable_series([series_from_cube(cube, name)], patch=4)
        except InputError:
            refused_by_training = True
        if said:
            with pytest.raises(InputError, match=said) as refusal:
                check_cube(cube, patch=4)
            assert "Run" in str(refusal.value) and "--" not in str(refusal.value)
        else:
            check_cube(cube, patch=4)
        assert refused_by_training == bool(said), name


@dataclass(frozen=True)
class _Dying(RegionTuning):
    """The tuning's process, ended as a crash or the kernel's out-of-memory killer would end it."""

    how: str = ""

    def command(self, data: Path) -> list[str]:
        return [sys.executable, "-c", self.how]


@pytest.mark.parametrize(
    ("how", "said", "logged"),
    [
        (
            "import os, signal; print('step 5/600 loss 0.5', flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)",
            "The fine-tuning was killed (SIGKILL) before it saved anything. The system may have "
            "run out of memory",
            "step 5/600 loss 0.5",
        ),
        (
            "raise MemoryError('Unable to allocate 1.2 GiB')",
            "The fine-tuning failed unexpectedly (MemoryError: Unable to allocate 1.2 GiB); "
            "nothing was saved.",
            "Traceback (most recent call last)",
        ),
    ],
)
def test_a_training_that_dies_is_said_in_words_not_as_a_traceback(
    flanders_cube,
    tmp_path: Path,
    how: str,
    said: str,
    logged: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tuning = _Dying(DEFAULT_CHECKPOINT, tmp_path / "models" / "x.pt", how=how)
    reports: list[tuple[str, int, int]] = []
    with pytest.raises(FieldFlowError) as failure:
        tune_for_region(
            tuning, flanders_cube.isel(time_s2=slice(0, 6)), lambda *r: reports.append(r)
        )
    assert str(failure.value).startswith(said), str(failure.value)
    assert "Traceback" not in str(failure.value)
    assert not (tmp_path / "models").exists()
    assert logged in caplog.text  # the whole output, for the server's log


def _training_processes(out: Path) -> list[int]:
    """Processes of this machine whose command line names ``out`` (a training writing it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(out).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:  # gone meanwhile
                continue
    return found


@pytest.fixture(scope="module")
def worker_process():
    """One Dask worker in a process of its own, as a cluster's worker runs."""
    from core.distributed import local_cluster

    with local_cluster(1, processes=True) as cluster:
        if cluster.note:  # worker processes could not start here: nothing to measure
            pytest.skip(cluster.note)
        yield cluster


def test_with_a_cluster_the_training_runs_on_a_worker_and_lands_in_the_models_folder(
    flanders_cube, worker_process, tmp_path: Path
) -> None:
    cube = flanders_cube.isel(time_s2=slice(0, 30), time_s1=slice(0, 40), y=slice(0, 24))
    out = tmp_path / "models" / "ghent-2018.pt"
    reports: list[tuple[str, int, int]] = []
    tuned = tune_for_region(
        RegionTuning(DEFAULT_CHECKPOINT, out, steps=6),
        cube.isel(x=slice(0, 24)),
        lambda *r: reports.append(r),
        site="Ghent parcel",
        cluster=worker_process,
    )
    assert tuned.where.startswith("the cluster's worker ")
    assert tuned.choice.path == out and tuned.choice.usable
    saved = load_checkpoint(out)
    assert saved.record["steps"] == 6
    assert saved.record["initialised_from"] == str(DEFAULT_CHECKPOINT)
    assert "Ghent parcel" in saved.seen_sites
    # the worker's progress reached this side, in order: the cube, the steps (the latest the
    # command said when this side looked: every 5 steps), the measuring
    stages = list(dict.fromkeys(r[0] for r in reports))
    assert stages == [WRITING_STAGE, TRAINING_STAGE, MEASURING_STAGE], reports
    assert {r[2] for r in reports if r[0] == TRAINING_STAGE} == {6}
    assert not _training_processes(out)


def test_a_training_stopped_on_a_worker_ends_there_and_leaves_nothing(
    flanders_cube, worker_process, tmp_path: Path
) -> None:
    out = tmp_path / "models" / "stopped.pt"

    class Stopped(BaseException):  # as the app's cancelled job raises
        pass

    def progress(stage: str, done: int, total: int) -> None:
        if stage == TRAINING_STAGE and done >= 5:
            raise Stopped

    cube = flanders_cube.isel(time_s2=slice(0, 30), time_s1=slice(0, 40))
    with pytest.raises(Stopped):
        tune_for_region(
            RegionTuning(DEFAULT_CHECKPOINT, out, steps=2000),
            cube.isel(y=slice(0, 24), x=slice(0, 24)),
            progress,
            cluster=worker_process,
        )
    # the worker ends the command at its next report (within a quarter second), and the
    # command's SIGTERM removes what it was writing
    deadline = time.monotonic() + 30
    while _training_processes(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _training_processes(out)
    assert not out.parent.exists() or not any(out.parent.iterdir())
    # and the worker is free for the next task at once
    assert worker_process.client.submit(sum, [1, 2], pure=False).result(timeout=10) == 3


def test_a_scheduler_lost_during_a_training_on_the_cluster_is_said_as_such(
    flanders_cube, tmp_path: Path
) -> None:
    # Review 21: "The cluster lost the fine-tuning (FutureCancelledError: ... cancelled for
    # reason: scheduler-connection-lost ...); ... Its worker may have run out of memory: try it
    # from a Run of a smaller field": Dask's words, and advice that changes nothing.
    from core.distributed import connect
    from core.errors import ClusterError
    from tests.support.dask_processes import DaskProcesses

    out = tmp_path / "models" / "lost.pt"
    cube = flanders_cube.isel(time_s2=slice(0, 30), time_s1=slice(0, 40), y=slice(0, 24))
    with DaskProcesses(tmp_path / "dask") as processes:
        processes.worker("w1")
        processes.wait_for_workers(1)

        def progress(stage: str, done: int, total: int) -> None:
            if stage == TRAINING_STAGE and done >= 5 and processes.scheduler is not None:
                processes.kill_scheduler()

        with connect(processes.address) as cluster, pytest.raises(ClusterError) as caught:
            tune_for_region(
                RegionTuning(DEFAULT_CHECKPOINT, out, steps=2000),
                cube.isel(x=slice(0, 24)),
                progress,
                cluster=cluster,
            )
    said = str(caught.value)
    assert said.startswith(
        f"Lost the connection to the Dask scheduler at {processes.address} during the "
        "fine-tuning; nothing was saved."
    ), said
    assert "memory" not in said and "FutureCancelledError" not in said
    assert not out.exists()
