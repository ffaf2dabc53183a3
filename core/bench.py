"""Speed and memory of the reconstruction methods vs field size and series length.

Each configuration (method, size, number of S2 dates) runs in a fresh Python subprocess, so its
peak memory is its own and not a leftover of an earlier, larger run:

* **time**: wall time of :func:`core.reconstruct.reconstruct` at ``n_queries`` dates, median of
  ``repeats`` calls (the method's module is imported before the first call);
* **peak RSS**: the process's resident-memory high-water mark during the calls minus its
  resident memory just before them. On Linux the mark is reset first (``/proc/self/clear_refs``)
  so building the input does not count; elsewhere ``resource.getrusage`` max RSS is used and may
  include it (the report says which);
* **traced peak**: the peak of Python-visible allocations (numpy arrays included, torch's
  not) during one extra, untimed call under :mod:`tracemalloc`;
* **CUDA peak**: ``torch.cuda.max_memory_allocated`` when the method used a CUDA device.

Input cubes come from one real shared cube (be-flanders-a: 118 dates, 64 x 64, all ten bands,
S1), mirror-tiled in space to the wanted size and sub-sampled in time to the wanted number of
dates; longer series are made by running the series back and forth in time (the gaps between
acquisitions are kept). Mirror tiles would share their pixels' cloud patterns, which a method
grouping series by their pattern of clear dates (the Whittaker baseline) would exploit unlike
on a real field; each tile's clear mask is therefore rolled in time by its tile number.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from core.config import usable_cpus
from core.cube import read_cube, validate_cube
from core.errors import FieldFlowError, InputError
from core.evaluate import software_versions
from core.reconstruct import ReconstructOptions, reconstruct, resolve_method
from core.timeline import calendar_day

DEFAULT_SOURCE = "be-flanders-a_2017-2018.nc"
MIB = 1024.0**2


@dataclass(frozen=True)
class BenchCase:
    """One configuration to measure."""

    method: str
    size_px: int
    """Side of the square field, pixels."""
    n_dates: int
    """Number of S2 acquisitions in the input series."""
    source: str
    """Path of the real cube the input is made from."""
    n_queries: int = 20
    """Query dates reconstructed per call, evenly spread over the series."""
    repeats: int = 3
    """Timed calls; the median is reported."""
    device: str = "auto"
    """Device option of the reconstruction (model only)."""
    samples: int = 1
    """Samples per reconstruction."""
    steps: int | None = None
    """ODE steps of the model (None: its default)."""
    trace: bool = True
    """Also make one untimed call under tracemalloc (slow for methods with many allocations)."""
    checkpoint: str | None = None
    """Model checkpoint (None: the shipped one)."""


@dataclass(frozen=True)
class BenchResult:
    """What one configuration measured."""

    case: BenchCase
    seconds: float | None
    """Median wall time of one reconstruction call."""
    seconds_all: tuple[float, ...] = ()
    peak_rss_mib: float | None = None
    """Resident-memory high-water mark during the calls, above the resident memory before."""
    base_rss_mib: float | None = None
    """Resident memory just before the calls (interpreter, libraries, the input cube)."""
    rss_method: str = ""
    """"hwm-reset" (Linux, exact) or "maxrss" (may include building the input)."""
    traced_peak_mib: float | None = None
    """Peak of Python-visible allocations (numpy included) during one untimed call."""
    cuda_peak_mib: float | None = None
    input_mib: float | None = None
    """Size of the input reflectance array (T, 10, H, W) float32."""
    n_s1_dates: int | None = None
    """Sentinel-1 dates of the input (all of the source's within the S2 span)."""
    error: str | None = None


# --------------------------------------------------------------------------- inputs


def _mirror_index(n: int, size: int) -> np.ndarray:
    """Indices 0..n-1 run back and forth (mirror, edge repeated) to ``size`` entries."""
    period = np.concatenate([np.arange(n), np.arange(n)[::-1]])
    return period[np.arange(size) % period.size]


def _back_and_forth(times: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``times`` running forward then backward (ends not repeated), and new
    strictly increasing times that keep each step's gap. Returns (indices, times) of ``count``."""
    n = times.size
    if n == 1:
        index = np.zeros(count, np.int64)
        gaps = np.full(count - 1, np.timedelta64(1, "D").astype("timedelta64[ns]"))
    else:
        period = np.concatenate([np.arange(n), np.arange(n - 2, 0, -1)])
        index = period[np.arange(count) % period.size]
        gaps = np.abs(np.diff(times[index]))
    new_times = times[0] + np.concatenate([[np.timedelta64(0, "ns")], np.cumsum(gaps)])
    return index, new_times.astype("datetime64[ns]")


def make_bench_cube(source: xr.Dataset, size_px: int, n_dates: int) -> xr.Dataset:
    """A cube of ``n_dates`` S2 dates and ``size_px`` x ``size_px`` pixels from a real one.

    Space: mirror tiling (a crop if smaller); each tile's ``valid`` is rolled in time by its tile
    number so tiles do not share cloud patterns. Time: evenly sub-sampled (first and last kept),
    or run back and forth when more dates are wanted than the source has; S1 is extended the
    same way to cover the new period.

    Args:
        source: a cube (T, 10, H, W).
        size_px: side of the output, pixels (>= 1).
        n_dates: S2 dates of the output (>= 2).
    """
    if size_px < 1 or n_dates < 2:
        raise InputError(f"Bench cubes need size >= 1 px and >= 2 dates, not {size_px}/{n_dates}.")
    cube = validate_cube(source)
    height, width = cube.sizes["y"], cube.sizes["x"]
    iy, ix = _mirror_index(height, size_px), _mirror_index(width, size_px)
    out = cube.isel(y=iy, x=ix)
    n_t = cube.sizes["time_s2"]
    if n_dates <= n_t:
        t_index = np.round(np.linspace(0, n_t - 1, n_dates)).astype(np.int64)
        new_times = cube["time_s2"].values[t_index]
    else:
        t_index, new_times = _back_and_forth(cube["time_s2"].values, n_dates)
    out = out.isel(time_s2=t_index).assign_coords(time_s2=new_times)
    if "s1" in out and out.sizes.get("time_s1", 0) > 0:
        s1_times = cube["time_s1"].values
        count = s1_times.size
        s1_index, s1_new = _back_and_forth(s1_times, count)
        while s1_new[-1] < new_times[-1]:
            count *= 2
            s1_index, s1_new = _back_and_forth(s1_times, count)
        keep = s1_new <= new_times[-1]
        out = out.isel(time_s1=s1_index[keep]).assign_coords(time_s1=s1_new[keep])
    step_y = float(np.diff(cube["y"].values[:2])[0]) if height > 1 else 1.0
    step_x = float(np.diff(cube["x"].values[:2])[0]) if width > 1 else 1.0
    out = out.assign_coords(
        y=cube["y"].values[0] + step_y * np.arange(size_px),
        x=cube["x"].values[0] + step_x * np.arange(size_px),
    )
    valid = out["valid"].values.copy()
    for ty in range(-(-size_px // height)):
        for tx in range(-(-size_px // width)):
            tile = (slice(None), slice(ty * height, (ty + 1) * height),
                    slice(tx * width, (tx + 1) * width))  # fmt: skip
            shift = ty * -(-size_px // width) + tx
            valid[tile] = np.roll(valid[tile], shift, axis=0)
    out["valid"] = (("time_s2", "y", "x"), valid)
    return validate_cube(out)


def query_dates(cube: xr.Dataset, n_queries: int) -> np.ndarray:
    """``n_queries`` calendar days evenly spread over the cube's S2 period (fewer if it is
    shorter), datetime64[ns]."""
    first, last = calendar_day(cube["time_s2"].values[[0, -1]])
    span = int((last - first).astype(np.int64))
    offsets = np.unique(np.round(np.linspace(0, span, n_queries)).astype(np.int64))
    return (first + offsets.astype("timedelta64[D]")).astype("datetime64[ns]")


# --------------------------------------------------------------------------- measuring


def _proc_kib(key: str, path: str = "/proc/self/status") -> int | None:
    """A ``key: <n> kB`` entry of a /proc file, in KiB (None where there is none)."""
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the Linux resident high-water mark (VmHWM); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return _proc_kib("VmHWM") is not None


def _release_free_memory() -> None:
    """Hand memory freed by Python and numpy back to the OS (glibc only), so the baseline
    resident size holds no free pages that the measured calls could reuse unseen."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def measure_case(case: BenchCase) -> BenchResult:
    """Measure ``case`` in this process (call it in a fresh process for honest memory)."""
    resolve_method(case.method)  # import the method's module before measuring
    cube = make_bench_cube(read_cube(case.source), case.size_px, case.n_dates)
    query = query_dates(cube, case.n_queries)
    options = ReconstructOptions(
        samples=case.samples,
        steps=case.steps,
        device=case.device,
        checkpoint=None if case.checkpoint is None else Path(case.checkpoint),
    )
    input_mib = cube["s2"].values.nbytes / MIB
    n_s1 = cube.sizes.get("time_s1", 0) if "s1" in cube else 0
    gc.collect()
    _release_free_memory()
    exact = _reset_peak_rss()
    before_kib = _proc_kib("VmRSS") if exact else _maxrss_kib()
    cuda = _cuda_module()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    forget = _field_cache_clearer(case.method)
    times = []
    for _ in range(case.repeats):
        forget()  # each call pays for its per-field fitting (the field blend), as a Run does
        start = time.perf_counter()
        reconstruct(cube, query, case.method, options)
        times.append(time.perf_counter() - start)
    peak_kib = _proc_kib("VmHWM") if exact else _maxrss_kib()
    cuda = cuda or _cuda_module()
    cuda_peak = cuda.max_memory_allocated() / MIB if cuda is not None else None

    traced_peak = None
    if case.trace:
        gc.collect()
        forget()
        tracemalloc.start()
        reconstruct(cube, query, case.method, options)
        traced_peak = tracemalloc.get_traced_memory()[1] / MIB
        tracemalloc.stop()
    return BenchResult(
        case=case,
        seconds=statistics.median(times),
        seconds_all=tuple(round(t, 4) for t in times),
        peak_rss_mib=max(0, (peak_kib or 0) - (before_kib or 0)) / 1024.0,
        base_rss_mib=(before_kib or 0) / 1024.0,
        rss_method="hwm-reset" if exact else "maxrss",
        traced_peak_mib=traced_peak,
        cuda_peak_mib=cuda_peak,
        input_mib=input_mib,
        n_s1_dates=n_s1,
    )


def _field_cache_clearer(method: str) -> Callable[[], None]:
    """What forgets the model's per-field fits between calls (nothing for the baselines)."""
    if method != "model":
        return lambda: None
    from core.model.inference import clear_field_cache

    return clear_field_cache


def _cuda_module():
    """``torch.cuda`` if the method already imported torch and a CUDA device is up, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def worker_main() -> None:
    """Subprocess entry: read a :class:`BenchCase` as JSON on stdin, print the result JSON."""
    case = BenchCase(**json.loads(sys.stdin.read()))
    try:
        result = measure_case(case)
    except FieldFlowError as exc:  # the user's to fix: its sentence, not a traceback's tail
        result = BenchResult(case, None, error=str(exc))
    print(json.dumps(asdict(result)))


def run_case(case: BenchCase, timeout_s: float = 600.0) -> BenchResult:
    """Measure ``case`` in a fresh Python subprocess (errors and time-outs are reported, not
    raised)."""
    command = [sys.executable, "-c", "from core.bench import worker_main; worker_main()"]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            command,
            input=json.dumps(asdict(case)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return BenchResult(case, None, error=f"timed out after {timeout_s:.0f} s")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return BenchResult(case, None, error=f"exit {done.returncode}: {tail}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    data["case"] = case
    data["seconds_all"] = tuple(data["seconds_all"])
    return BenchResult(**data)


def bench(
    methods: Sequence[str],
    sizes_px: Sequence[int],
    n_dates: Sequence[int],
    source: str | os.PathLike[str],
    *,
    n_queries: int = 20,
    repeats: int = 3,
    device: str = "auto",
    samples: int = 1,
    steps: int | None = None,
    trace: bool = True,
    timeout_s: float = 600.0,
    checkpoint: str | os.PathLike[str] | None = None,
    runner: Callable[[BenchCase, float], BenchResult] = run_case,
    progress: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Measure every method x size x dates configuration, each in its own subprocess.

    Args:
        methods: method names of the reconstruction contract.
        sizes_px: field sides in pixels, e.g. (32, 64, 128, 256).
        n_dates: S2 series lengths, e.g. (30, 70, 150).
        source: the real cube the inputs are made from.
        checkpoint: the model's checkpoint (None: the shipped one).
        runner: how a case is run (default: a subprocess; tests pass an in-process one).
        progress: called with each result as it comes.
    """
    if repeats < 1 or n_queries < 1:
        raise InputError("--repeats and the number of query dates must be at least 1.")
    if not Path(source).is_file():
        raise InputError(f"Bench source cube not found: {source}; pass --source FILE.")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"Model checkpoint not found: {checkpoint}; pass --checkpoint FILE.")
    for method in methods:
        resolve_method(method)
    base = BenchCase(
        method="",
        size_px=0,
        n_dates=0,
        source=str(source),
        n_queries=n_queries,
        repeats=repeats,
        device=device,
        samples=samples,
        steps=steps,
        trace=trace,
        checkpoint=None if checkpoint is None else str(checkpoint),
    )
    results = []
    for dates in n_dates:
        for size in sizes_px:
            for method in methods:
                case = replace(base, method=method, size_px=size, n_dates=dates)
                result = runner(case, timeout_s)
                results.append(result)
                if progress is not None:
                    progress(result)
    return results


# --------------------------------------------------------------------------- reporting


def machine_description(probe_torch: bool = True) -> dict[str, str]:
    """CPU model, cores, memory, Python and, if installed, torch with its device.

    Args:
        probe_torch: import torch to name its device (seconds); False only gives its version.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    usable = usable_cpus()
    info = {
        "cpu": cpu,
        "cores": f"{usable} usable of {os.cpu_count()}",
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    mem_kib = _proc_kib("MemTotal", "/proc/meminfo")
    if mem_kib:
        info["memory"] = f"{mem_kib / 1024**2:.1f} GiB"
    if importlib.util.find_spec("torch") is None:
        info["torch"] = "not installed"
    elif probe_torch:
        import torch

        device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["torch"] = f"{torch.__version__} ({device})"
    else:
        info["torch"] = f"{software_versions().get('torch', '?')} (device not probed)"
    return info


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_bench_table(results: Sequence[BenchResult], machine: dict[str, str]) -> str:
    """The results as a fixed-width text table under a description of the machine."""
    lines = [f"{key}: {value}" for key, value in machine.items()]
    if results:
        c = results[0].case
        lines.append(
            f"input: {Path(c.source).name} mirror-tiled; {c.n_queries} query dates; "
            f"time: median of 'calls' calls; samples {c.samples}; "
            f"steps {c.steps or 'default'}; device {c.device}"
        )
    header = (
        f"{'method':<10} {'size':>5} {'dates':>5} {'S1':>4} {'input MiB':>9} {'calls':>5} "
        f"{'time s':>8} {'base MiB':>8} {'+peak RSS MiB':>13} {'traced MiB':>10} {'CUDA MiB':>8}"
    )
    lines += ["", header, "-" * len(header)]
    for r in results:
        start = f"{r.case.method:<10} {r.case.size_px:>5} {r.case.n_dates:>5}"
        if r.error:
            lines.append(f"{start} error: {r.error}")
            continue
        lines.append(
            f"{start} {r.n_s1_dates if r.n_s1_dates is not None else '-':>4} "
            f"{_cell(r.input_mib, 1):>9} {len(r.seconds_all):>5} {_cell(r.seconds, 3):>8} "
            f"{_cell(r.base_rss_mib, 0):>8} {_cell(r.peak_rss_mib, 1):>13} "
            f"{_cell(r.traced_peak_mib, 1):>10} "
            f"{_cell(r.cuda_peak_mib, 1):>8}"
        )
    methods = {r.rss_method for r in results if r.rss_method}
    if methods:
        lines.append("")
        lines.append(
            "base: resident memory before the calls (interpreter, libraries, input); +peak RSS: "
            "resident high-water mark during the timed calls above base, fresh process per row "
            f"({', '.join(sorted(methods))}); traced: tracemalloc peak of one untimed call "
            "(numpy, not torch)."
        )
    return "\n".join(lines)


def results_to_dict(results: Sequence[BenchResult], machine: dict[str, str]) -> dict:
    """JSON-ready dict of the machine and every result."""
    return {
        "machine": machine,
        "software": software_versions(),
        "results": [asdict(r) for r in results],
    }
