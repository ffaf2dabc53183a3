"""Settings from the environment: defaults, values read, and wrong values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.errors import InputError


def test_unset_and_blank_variables_keep_the_defaults() -> None:
    blank = {name: " " for name in ("STAC_API_URL", "FIELDFLOW_RETRIES", "FIELDFLOW_TIMEOUT_S")}
    assert Settings.from_env({}) == Settings() == Settings.from_env(blank)


def test_values_are_read_and_trimmed() -> None:
    settings = Settings.from_env(
        {
            "STAC_API_URL": " http://127.0.0.1:8000/api/stac/v1/ ",
            "FIELDFLOW_CACHE_DIR": "/tmp/ff-cache",
            "FIELDFLOW_MAX_AREA_HA": "12.5",
            "FIELDFLOW_TIMEOUT_S": " 3 ",
            "FIELDFLOW_RETRIES": "0",
            "FIELDFLOW_MAX_PIXEL_DATES": "1e6",
            "FIELDFLOW_RESULT_CACHE_MB": "0",
            "FIELDFLOW_CACHE_MAX_GB": "2.5",
            "FIELDFLOW_MODELS_DIR": " ~/my-models ",
            "FIELDFLOW_MODEL_REMOVAL": " Own ",
            "FIELDFLOW_MAX_RUNS": " 3 ",
            "FIELDFLOW_RUN_MEMORY_GB": "2.5",
        }
    )
    assert settings.models_dir == Path.home() / "my-models"  # need not exist yet
    assert settings.stac_api_url == "http://127.0.0.1:8000/api/stac/v1"
    assert settings.cache_dir == Path("/tmp/ff-cache")
    assert (settings.max_area_ha, settings.timeout_s, settings.retries) == (12.5, 3.0, 0)
    assert settings.max_pixel_dates == 1e6 and settings.result_cache_mb == 0.0
    assert settings.cache_max_gb == 2.5
    assert settings.model_removal == "own" and Settings().model_removal == "any"
    assert (settings.max_runs, settings.run_memory_gb) == (3, 2.5)


def test_a_bare_scheme_is_kept_whole_for_the_url_check_to_name() -> None:
    for url in ("http://", "https:///", "http:"):
        assert Settings.from_env({"STAC_API_URL": url}).stac_api_url == url


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("FIELDFLOW_MAX_AREA_HA", "lots", "it must be a number above 0"),
        ("FIELDFLOW_MAX_AREA_HA", "0", "it must be a number above 0"),
        ("FIELDFLOW_TIMEOUT_S", "-1", "it must be a number above 0"),
        ("FIELDFLOW_TIMEOUT_S", "inf", "it must be a number above 0"),
        ("FIELDFLOW_MAX_PIXEL_DATES", "nan", "it must be a number above 0"),
        ("FIELDFLOW_RESULT_CACHE_MB", "-5", "it must be a number, 0 or more"),
        ("FIELDFLOW_CACHE_MAX_GB", "20GB", "it must be a number, 0 or more"),
        ("FIELDFLOW_RETRIES", "two", "it must be a number, 0 or more"),
        ("FIELDFLOW_RETRIES", "1.5", "give a whole number of retries"),
        ("FIELDFLOW_RETRIES", "100000", "give a whole number of retries from 0 to 20"),
        ("FIELDFLOW_MODEL_REMOVAL", "mine", "give 'any' (the page removes any model"),
        ("FIELDFLOW_MAX_RUNS", "2.5", "give a whole number of Runs computed at once"),
        ("FIELDFLOW_MAX_RUNS", "0", "it must be a number above 0"),
        ("FIELDFLOW_RUN_MEMORY_GB", "0", "it must be a number above 0"),
    ],
)
def test_a_wrong_value_names_the_variable_and_the_fix(name: str, value: str, said: str) -> None:
    with pytest.raises(InputError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert message.startswith(f"{name} is {value!r}") and said in message
    assert "unset it" in message


def test_a_models_folder_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(InputError, match=r"FIELDFLOW_MODELS_DIR is .*model\.pt', a file: give"):
        Settings.from_env({"FIELDFLOW_MODELS_DIR": str(tmp_path / "model.pt")})
    assert Settings.from_env({"FIELDFLOW_MODELS_DIR": str(tmp_path)}).models_dir == tmp_path


def test_relative_folders_are_made_absolute_where_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review 19: a relative FIELDFLOW_MODELS_DIR reached a Dask worker as it was, and the
    # worker looked for the region's new model in its own working folder.
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env(
        {
            "FIELDFLOW_MODELS_DIR": "relmodels",
            "FIELDFLOW_CACHE_DIR": "cache",
            "FIELDFLOW_DATA_DIR": "../data",
        }
    )
    assert settings.models_dir == tmp_path / "relmodels"
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.data_dir == tmp_path / ".." / "data"


def test_a_checkpoint_of_ones_own_is_read_and_a_missing_one_named(tmp_path: Path) -> None:
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"weights")
    assert Settings.from_env({"FIELDFLOW_CHECKPOINT": f" {mine} "}).checkpoint == mine.resolve()
    for wrong, said in ((tmp_path / "gone.pt", "there is no file there"), (tmp_path, "a folder")):
        with pytest.raises(InputError) as raised:
            Settings.from_env({"FIELDFLOW_CHECKPOINT": str(wrong)})
        message = str(raised.value)
        assert message.startswith(f"FIELDFLOW_CHECKPOINT is {str(wrong)!r}") and said in message
        assert "unset it to use the shipped model" in message
        # A command that never loads a model takes it as given.
        unchecked = Settings.from_env({"FIELDFLOW_CHECKPOINT": str(wrong)}, check_checkpoint=False)
        assert unchecked.checkpoint == wrong
