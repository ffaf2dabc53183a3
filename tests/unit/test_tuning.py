"""The region button's core (core.model.tuning) apart from the page: names, limits, and the
training's lower priority. The training itself is run end to end by the page tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.config import DEFAULT_CHECKPOINT, Settings
from core.errors import FieldFlowError, InputError
from core.model.training import series_from_cube, trainable_series
from core.model.tuning import (
    NICE,
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
