"""The cube cache: keys, round trips, broken entries, and atomic writes under SIGKILL."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core.cache import CacheKey, CubeCache
from core.cube import build_cube
from core.fetch import FetchResult
from core.grid import Grid

ROOT = Path(__file__).resolve().parents[2]
GRID = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5600040.0, width=4, height=4)
NOW = dt.datetime(2024, 1, 10, 12, tzinfo=dt.UTC)


def make_key(**changes: object) -> CacheKey:
    fields: dict[str, object] = {
        "field_key": "0123456789abcdef",
        "start": "2023-03-01",
        "end": "2023-10-31",
        "collections": ("sentinel-2-l2a", "sentinel-1-rtc"),
        "crs": GRID.crs,
        "bounds": GRID.bounds,
        "resolution_m": 10.0,
        "max_cloud_cover": None,
        "stac_api_url": "http://127.0.0.1:1/api",
    }
    fields.update(changes)
    return CacheKey(**fields)  # type: ignore[arg-type]


def make_result(grid: Grid = GRID, frames: int = 2, seed: int = 0) -> FetchResult:
    rng = np.random.default_rng(seed)
    s2 = rng.random((frames, 10, *grid.shape), dtype=np.float32) * 0.5
    s2[0, :, 0, 0] = np.nan
    scl = np.array([4, 5, 8, 9], np.uint8)[rng.integers(0, 4, (frames, *grid.shape))]
    times = np.datetime64("2023-03-02T10:30", "ns") + np.arange(frames) * np.timedelta64(5, "D")
    cube = build_cube(
        s2, times, grid.y, grid.x, {"crs": grid.crs, "resolution_m": 10.0, "site": "test"}, scl=scl
    )
    return FetchResult(
        cube=cube,
        grid=grid,
        scenes_found={"sentinel-2-l2a": frames + 1},
        frames_loaded={"s2": frames, "s1": 0},
        s1_status="none",
        s1_message="Sentinel-1 unavailable.",
        elapsed_s=1.5,
    )


def test_key_digest_is_stable_and_sensitive() -> None:
    key = make_key()
    assert key.digest == make_key().digest
    assert len(key.digest) == 64
    for change in (
        {"end": "2023-11-01"},
        {"max_cloud_cover": 80.0},
        {"collections": ("sentinel-2-l2a",)},
        {"field_key": "fedcba9876543210"},
        {"bounds": (500000.0, 5600000.0, 500050.0, 5600040.0)},
        {"stac_api_url": "http://127.0.0.1:2/api"},
        {"version": 99},
    ):
        assert make_key(**change).digest != key.digest, change
    assert json.loads(json.dumps(key.to_dict())) == key.to_dict()


def test_a_request_s_key_holds_everything_that_changes_what_is_fetched() -> None:
    """:func:`core.cache.cache_key`, from a request as the app and the command line make it:
    a cube fetched under one cloud limit, STAC API, margin or set of sensors is never served
    for another (the digest test above builds the keys by hand and cannot see this)."""
    from shapely.geometry import box

    from core.cache import cache_key
    from core.config import Settings
    from core.field import Field

    field = Field(box(3.020, 51.050, 3.023, 51.052), "plot")
    settings = Settings(stac_api_url="http://127.0.0.1:1/api")

    def key(**changes: object) -> str:
        options: dict[str, object] = {"grid": GRID, "settings": settings}
        options.update(changes)
        return cache_key(field, "2023-05-01", "2023-05-31", **options).digest  # type: ignore[arg-type]

    base = key()
    assert key() == base
    assert (
        cache_key(field, dt.date(2023, 5, 1), "2023-05-31", grid=GRID, settings=settings).digest
        == base
    )
    other_api = Settings(stac_api_url="http://127.0.0.1:2/api")
    for change in (
        {"max_cloud_cover": 20.0},
        {"settings": other_api},
        {"margin_days": 0},
        {"include_s1": False},
        {"grid": Grid("EPSG:32631", 10.0, x0=500010.0, y0=5600040.0, width=4, height=4)},
    ):
        assert key(**change) != base, change
    assert key(max_cloud_cover=20) == key(max_cloud_cover=20.0)  # the same limit, written two ways
    renamed = Field(box(3.020, 51.050, 3.023, 51.052), "another name")
    same = cache_key(renamed, "2023-05-01", "2023-05-31", grid=GRID, settings=settings)
    assert same.digest == base  # the outline counts, not the name
    moved = Field(box(3.021, 51.050, 3.024, 51.052), "plot")
    assert cache_key(moved, "2023-05-01", "2023-05-31", grid=GRID, settings=settings).digest != base


def test_round_trip_keeps_cube_and_summary(tmp_path: Path) -> None:
    cache = CubeCache(tmp_path)
    key = make_key()
    assert cache.get(key) is None
    result = make_result()
    cube_path = cache.put(key, result, now=NOW)
    assert cube_path == tmp_path / f"{key.digest}.nc"
    hit = cache.get(key, now=NOW)
    assert hit is not None and hit.from_cache
    assert hit.grid == GRID
    assert hit.scenes_found == result.scenes_found
    assert hit.frames_loaded == result.frames_loaded
    assert hit.s1_message == result.s1_message
    np.testing.assert_allclose(hit.cube["s2"].values, result.cube["s2"].values, atol=5.1e-5)
    np.testing.assert_array_equal(hit.cube["valid"].values, result.cube["valid"].values)
    np.testing.assert_array_equal(hit.cube["time_s2"].values, result.cube["time_s2"].values)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key.digest}.json", f"{key.digest}.nc"]


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip", "delete_sidecar", "garbage_sidecar", "other_request", "delete_cube"],
)
def test_broken_entries_are_discarded_never_returned(tmp_path: Path, damage: str) -> None:
    cache = CubeCache(tmp_path)
    key = make_key()
    cube_path, meta_path = cache.paths(key)
    cache.put(key, make_result(), now=NOW)
    if damage == "truncate":
        data = cube_path.read_bytes()
        cube_path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte changed somewhere in the data
        data = bytearray(cube_path.read_bytes())
        data[len(data) * 2 // 3] ^= 0xFF
        cube_path.write_bytes(bytes(data))
    elif damage == "delete_sidecar":  # its writer died before the sidecar, over an hour ago
        meta_path.unlink()
        _age([cube_path], hours=2)
    elif damage == "garbage_sidecar":
        meta_path.write_text("{not json", encoding="utf-8")
    elif damage == "other_request":
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["request"]["end"] = "2030-01-01"
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
    elif damage == "delete_cube":
        cube_path.unlink()
    assert cache.get(key, now=NOW) is None
    assert list(tmp_path.iterdir()) == []  # the broken entry is gone, ready to be refetched


def test_recent_periods_expire_after_a_day(tmp_path: Path) -> None:
    cache = CubeCache(tmp_path)
    open_key = make_key(end="2024-01-08")  # ends two days before the fetch
    closed_key = make_key(end="2023-10-31")
    cache.put(open_key, make_result(), now=NOW)
    cache.put(closed_key, make_result(), now=NOW)
    later = NOW + dt.timedelta(hours=25)
    assert cache.get(open_key, now=NOW + dt.timedelta(hours=2)) is not None
    assert cache.get(open_key, now=later) is None
    assert cache.get(closed_key, now=later + dt.timedelta(days=400)) is not None
    # A period that ended 20 days before the fetch, fetched with 30 days after it: the fetch
    # reached the last week, whose scenes may still come, so it expires as an open one.
    margin_key = make_key(end="2023-12-21", margin_days=30)
    no_margin_key = make_key(end="2023-12-21", margin_days=0)
    cache.put(margin_key, make_result(), now=NOW)
    cache.put(no_margin_key, make_result(), now=NOW)
    assert cache.get(margin_key, now=NOW + dt.timedelta(hours=2)) is not None
    assert cache.get(margin_key, now=later) is None
    assert cache.get(no_margin_key, now=later) is not None


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from tests.unit.test_cache import make_key, make_result
    from core.cache import CubeCache
    from core.grid import Grid
    grid = Grid("EPSG:32631", 10.0, 500000.0, 5600000.0, 256, 256)
    result = make_result(grid, frames=32)
    print("ready", flush=True)
    CubeCache({folder!r}).put(make_key(), result)
    print("done", flush=True)
    """
)


def test_writer_killed_mid_write_leaves_no_entry(tmp_path: Path) -> None:
    """SIGKILL a process while it writes a ~40 MB cube into the cache: the final path never
    appears, only a ``.tmp-*`` file, which remove_stale_temporaries clears."""
    folder = tmp_path / "cache"
    script = CHILD.format(root=str(ROOT), folder=str(folder))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        temporaries: list[Path] = []
        while time.monotonic() < deadline and child.poll() is None:
            temporaries = [p for p in folder.glob(".tmp-*") if p.stat().st_size > 1 << 20]
            if temporaries:
                break
            time.sleep(0.005)
        assert temporaries, "the child finished before it could be caught mid-write"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    cache = CubeCache(folder)
    cube_path, meta_path = cache.paths(make_key())
    assert not cube_path.exists() and not meta_path.exists()
    leftovers = sorted(p.name for p in folder.iterdir())
    assert leftovers and all(name.startswith(".tmp-") for name in leftovers)
    assert cache.get(make_key()) is None
    assert cache.remove_stale_temporaries(older_than_s=3600) == 0  # might be a live writer
    assert cache.remove_stale_temporaries(older_than_s=0) == len(leftovers)
    assert list(folder.iterdir()) == []


def test_a_reader_leaves_a_cube_being_written_by_another_process_alone(tmp_path: Path) -> None:
    """Review 13: between the cube's rename and its sidecar's (the cube is hashed between
    them), a reader in another process took the live writer's cube for a dead writer's and
    deleted it: the download was lost, and the writer failed with a traceback."""
    folder = tmp_path / "cache"
    script = CHILD.format(root=str(ROOT), folder=str(folder))
    cache = CubeCache(folder)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        cube_path, meta_path = cache.paths(make_key())
        lone = 0  # reads that found the cube without its sidecar
        while child.poll() is None:  # as a second fetch, Run or batch field of it would
            lone += cube_path.exists() and not meta_path.exists()
            assert cache.get(make_key()) is None or meta_path.exists()
        _, errors = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, errors
    assert lone > 0, "the reads never fell between the cube's rename and its sidecar's"
    assert cache.get(make_key()) is not None  # the entry is whole


def test_a_cube_whose_sidecar_cannot_be_written_is_not_left_behind(tmp_path: Path) -> None:
    """Review 13: a full disk with room for the cube but not its sidecar left the cube (the
    message said "Nothing partial was kept"), and the prune kept it for an hour."""
    from core.errors import OutputError

    cache = CubeCache(tmp_path)
    key = make_key()
    cube_path, meta_path = cache.paths(key)
    meta_path.mkdir()  # the sidecar cannot be written there
    with pytest.raises(OutputError):
        cache.put(key, make_result(), now=NOW)
    assert not cube_path.exists()


def _age(paths, hours: float) -> None:
    """Set the files' last use ``hours`` back from now."""
    when = time.time() - hours * 3600
    for path in paths:
        os.utime(path, (when, when))


def test_pruning_goes_by_last_use_and_never_takes_what_is_in_use(tmp_path: Path) -> None:
    from core.cache import cache_items, prune_cache

    cache = CubeCache(tmp_path)
    keys = [make_key(start=f"2023-0{m}-01") for m in (3, 4, 5, 6)]
    for i, key in enumerate(keys):
        cache.put(key, make_result(seed=i), now=NOW)
    batch = tmp_path / "batches" / "0123abcd"
    (batch / "field-1").mkdir(parents=True)
    (batch / "field-1" / "ndvi.csv").write_text("date,ndvi\n" * 1000)
    _age([*cache.paths(keys[0]), *cache.paths(keys[1])], hours=72)
    _age([*cache.paths(keys[2])], hours=48)
    _age([batch / "field-1" / "ndvi.csv", batch / "field-1", batch], hours=96)
    # keys[3]: written just now, in use
    assert cache.get(keys[0], now=NOW) is not None  # a hit is a use: now the most recent
    items = cache_items(tmp_path)
    assert [i.kind for i in items] == ["batch", "cube", "cube", "cube", "cube"]
    assert items[0].paths == (batch,)
    size = {i.paths[0]: i.size for i in items}
    one_cube = size[cache.paths(keys[1])[1]]
    assert one_cube == sum(p.stat().st_size for p in cache.paths(keys[1]))

    # Room for three cubes: the batch (least recently used) and keys[1] go, keys[2] stays.
    report = prune_cache(tmp_path, max_bytes=3.5 * one_cube)
    assert [i.paths[0] for i in report.removed] == [batch, cache.paths(keys[1])[1]]
    assert report.freed == sum(i.size for i in report.removed)
    assert not batch.exists() and not any(p.exists() for p in cache.paths(keys[1]))
    assert cache.get(keys[0], now=NOW) is not None and cache.get(keys[2], now=NOW) is not None
    # Over any cap, what was used within the hour stays (a Run may be reading it).
    assert prune_cache(tmp_path, max_bytes=0).removed == ()
    assert len(cache_items(tmp_path)) == 3


def test_pruning_by_age_takes_broken_entries_too(tmp_path: Path) -> None:
    from core.cache import prune_cache

    cache = CubeCache(tmp_path)
    old, recent, broken = (make_key(start=d) for d in ("2023-03-01", "2023-04-01", "2023-05-01"))
    for i, key in enumerate((old, recent, broken)):
        cache.put(key, make_result(seed=i), now=NOW)
    cache.paths(broken)[1].unlink()  # its writer died before the sidecar
    _age(cache.paths(old), hours=24 * 40)
    _age(cache.paths(recent), hours=24 * 2)
    _age(cache.paths(broken)[:1], hours=2)
    report = prune_cache(tmp_path, older_than_s=30 * 86400)
    assert sorted(i.kind for i in report.removed) == ["broken", "cube"]
    assert [i.kind for i in report.kept] == ["cube"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in cache.paths(recent))


def test_the_cache_command_lists_and_prunes(tmp_path: Path, capsys, monkeypatch) -> None:
    from core.cli import main

    cache = CubeCache(tmp_path / "cache")
    keys = [make_key(start=d) for d in ("2023-03-01", "2023-04-01")]
    for i, key in enumerate(keys):
        cache.put(key, make_result(seed=i), now=NOW)
    _age(cache.paths(keys[0]), hours=24 * 10)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["cache", "--list"]) == 0
    said = capsys.readouterr().out
    assert "Holds 2 fetched cube(s)" in said and "2023-03-01 to 2023-10-31" in said
    assert main(["cache", "--max-gb", "1"]) == 2
    assert "add --prune" in capsys.readouterr().err
    # a negative limit is refused before anything goes (review 29: without the check,
    # --max-gb -1 emptied the cache)
    for option in ("--max-gb", "--older-than-days"):
        assert main(["cache", "--prune", option, "-1"]) == 2
        assert f"{option} must be 0 or more" in capsys.readouterr().err
        assert all(cache.paths(key)[0].is_file() for key in keys)  # (a get would touch them)
    assert main(["cache", "--prune", "--older-than-days", "7"]) == 0
    said = capsys.readouterr().out
    assert "Removed 1 fetched cube(s)" in said and "Kept 1 fetched cube(s)" in said
    assert cache.get(keys[0], now=NOW) is None and cache.get(keys[1], now=NOW) is not None


def test_a_cache_folder_that_cannot_be_written_is_said_before_any_request(tmp_path: Path) -> None:
    # It failed after the whole download, naming a hashed file and "free some space" (review 5).
    from shapely.geometry import box

    from core.cache import fetch_cached
    from core.config import Settings
    from core.errors import OutputError
    from core.field import Field

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    settings = Settings(stac_api_url="http://127.0.0.1:9/api", cache_dir=blocker, retries=0)
    field = Field(box(3.020, 51.050, 3.023, 51.052), "plot")
    with pytest.raises(OutputError) as caught:
        fetch_cached(field, "2023-05-01", "2023-05-31", settings=settings)
    message = str(caught.value)
    assert "The cache folder (FIELDFLOW_CACHE_DIR)" in message and "--no-cache" in message
    assert "Could not reach" not in message  # nothing was asked of the (closed) STAC API


def test_a_wrong_checkpoint_setting_stops_only_the_commands_that_load_a_model(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from core.cli import main

    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FIELDFLOW_CHECKPOINT", str(tmp_path / "gone.pt"))
    assert main(["cache", "--list"]) == 0  # the cache never loads a model
    assert "FIELDFLOW_CHECKPOINT" not in capsys.readouterr().err
    cube = tmp_path / "cube.nc"
    assert main(["reconstruct", "--cube", str(cube), "--dates", "2023-06-01", "--out", "x"]) == 2
    assert "FIELDFLOW_CHECKPOINT is" in capsys.readouterr().err


def test_a_read_only_cache_serves_what_it_holds_and_refuses_only_a_miss(tmp_path: Path) -> None:
    # Review 13: a read-only cache folder (a team's shared mount) holding the very entry asked
    # for was refused before it was looked up, "cannot write in the folder".
    from shapely.geometry import box

    from core.cache import cache_key, fetch_cached
    from core.config import Settings
    from core.errors import OutputError
    from core.fetch import PERIOD_MARGIN_DAYS
    from core.field import Field
    from core.grid import grid_for_field
    from tests.unit.conftest import read_only

    folder = tmp_path / "cache"
    folder.mkdir()
    settings = Settings(stac_api_url="http://127.0.0.1:9/api", cache_dir=folder, retries=0)
    field = Field(box(3.020, 51.050, 3.023, 51.052), "plot")
    grid = grid_for_field(field)
    period = {"start": "2023-05-01", "end": "2023-05-31"}

    def key_of(end: str) -> CacheKey:
        return cache_key(
            field, period["start"], end, grid=grid, settings=settings, include_s1=True,
            max_cloud_cover=None, margin_days=PERIOD_MARGIN_DAYS,
        )  # fmt: skip

    cache = CubeCache(folder)
    cache.put(key_of(period["end"]), make_result(grid))
    broken_key = key_of("2023-06-30")
    cache.put(broken_key, make_result(grid, seed=1))
    with open(cache.paths(broken_key)[0], "ab") as cube_file:
        cube_file.write(b"x")  # no longer the size its sidecar says
    with read_only(folder):
        hit = fetch_cached(field, **period, settings=settings)  # the STAC API is closed
        assert hit.from_cache and hit.frames_loaded == {"s2": 2, "s1": 0}
        for end in ("2023-06-30", "2023-07-31"):  # broken (kept: it cannot go), and absent
            with pytest.raises(OutputError) as caught:
                fetch_cached(field, period["start"], end, settings=settings)
            said = str(caught.value)
            assert "cannot write in the folder" in said and "--no-cache" in said, said
    assert cache.paths(broken_key)[0].exists()


def test_the_cache_command_says_a_cache_folder_that_is_a_file_is_one(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # Review 16: "It does not exist yet: nothing has been fetched", rc 0.
    from core.cli import main

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(blocker))
    for args in (["cache"], ["cache", "--list"], ["cache", "--prune"]):
        assert main(args) == 2
        assert "is a file, not a folder: set FIELDFLOW_CACHE_DIR" in capsys.readouterr().err
