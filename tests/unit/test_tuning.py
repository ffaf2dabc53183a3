"""The region button's core (core.model.tuning) apart from the page: names, limits, and the
training's lower priority. The training itself is run end to end by the page tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import DEFAULT_CHECKPOINT, Settings
from core.errors import InputError
from core.model.tuning import (
    NICE,
    RegionTuning,
    _lower_priority,
    model_target,
    suggested_name,
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
