"""Settings read from the environment, with defaults that work on a fresh checkout."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.admission import MEMORY_SHARE, Admission, machine_memory_bytes
from core.errors import InputError

PLANETARY_COMPUTER_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO_ROOT / "assets" / "model.pt"
"""The shipped model checkpoint (made by ``python -m core train``)."""


def is_shipped_checkpoint(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is the model shipped in ``assets/``."""
    return Path(checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve()


def checkpoint_option(checkpoint: Path | None) -> Path | None:
    """``checkpoint`` as ``ReconstructOptions.checkpoint``: None for the shipped one (or None),
    so that a Run's key and the model's loaded copy stay those of the default."""
    if checkpoint is None or is_shipped_checkpoint(checkpoint):
        return None
    return Path(checkpoint)


def checkpoint_version(checkpoint: Path | None) -> str | None:
    """Which version of the checkpoint file is on disk now, as ``"<bytes>-<SHA-256 of its
    content, 16 hex digits>"`` (None when there is none): a checkpoint retrained or fine-tuned
    in place at the same path is another version, so what was loaded or computed with the old
    one is not taken for it. ``None`` is the shipped checkpoint.

    By content, not by modification time (until 2026-12-06): a Dask worker with its own install
    of FieldFlow, or its own copy of the models folder, holds the same model under another
    time, and every model Run on it failed as "replaced while this computation was using it"
    (review 19). The digest is read once per file state (size, time, inode)."""
    path = Path(checkpoint or DEFAULT_CHECKPOINT)
    try:
        stat = path.stat()
        return _content_version(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _content_version(path: str, size: int, _mtime_ns: int, _inode: int) -> str:
    """``checkpoint_version`` of the file at ``path`` in one state of it (the cache's key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"{size}-{digest.hexdigest()[:16]}"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity on Linux, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _default_data_dir() -> Path:
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def _default_models_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fieldflow" / "models"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fieldflow"


MAX_RETRIES = 20
"""The most retries ``FIELDFLOW_RETRIES`` may ask for: with a server down, 100,000 meant days of
retrying before a word (review 5)."""


MODEL_REMOVALS = ("any", "own")
"""The values of ``FIELDFLOW_MODEL_REMOVAL`` (:attr:`Settings.model_removal`)."""


@dataclass(frozen=True)
class Settings:
    """Process-wide settings. Build with :meth:`from_env`; pass explicitly, never as a global."""

    stac_api_url: str = PLANETARY_COMPUTER_STAC_URL
    """STAC API base URL (``STAC_API_URL``); Planetary Computer by default."""
    data_dir: Path = field(default_factory=_default_data_dir)
    """Folder with the shared real cubes (``FIELDFLOW_DATA_DIR``), used by the demo and training."""
    cache_dir: Path = field(default_factory=_default_cache_dir)
    """Disk cache for fetched cubes (``FIELDFLOW_CACHE_DIR``)."""
    cache_max_gb: float = 20.0
    """Size the cache folder is pruned to after each fetch (``FIELDFLOW_CACHE_MAX_GB``): the
    least recently used cubes and batch outputs go first, nothing used within the hour
    (:func:`core.cache.prune_cache`); 0: no limit."""
    max_area_ha: float = 2500.0
    """Largest field accepted (``FIELDFLOW_MAX_AREA_HA``)."""
    timeout_s: float = 30.0
    """Time-out of every HTTP call (``FIELDFLOW_TIMEOUT_S``)."""
    retries: int = 4
    """Retries with exponential backoff on 429/5xx and connection errors (``FIELDFLOW_RETRIES``)."""
    max_pixel_dates: float = 4.0e7
    """Largest request fetched: the field grid's pixels times its Sentinel-2 acquisition days
    (``FIELDFLOW_MAX_PIXEL_DATES``). A Run's peak memory grows with it, about 380 bytes per
    pixel-date (10.5 GB for a 486 x 486 px field over 118 days, README "Benchmarks"), so the
    default, 40 million (a 2,500 ha field over about a year), keeps a Run near 15 GB."""
    checkpoint: Path = DEFAULT_CHECKPOINT
    """The model checkpoint a Run uses (``FIELDFLOW_CHECKPOINT``): the shipped one unless a user
    points at their own (``python -m core train --init assets/model.pt --data MY_CUBES``)."""
    models_dir: Path = field(default_factory=_default_models_dir)
    """Folder of the user's own checkpoints (``FIELDFLOW_MODELS_DIR``): every ``*.pt`` in it is
    offered beside the shipped model in the app and by name to ``--checkpoint``."""
    max_runs: int = field(default_factory=usable_cpus)
    """Runs the process reconstructs at once (``FIELDFLOW_MAX_RUNS``); the rest wait their
    turn (:mod:`core.admission`). Each uses every core: by default one per core this process
    may use."""
    run_memory_gb: float = field(
        default_factory=lambda: MEMORY_SHARE * machine_memory_bytes() / 1e9
    )
    """Memory the process's Runs may take together, by their estimates
    (``FIELDFLOW_RUN_MEMORY_GB``): a Run that would not fit beside those running waits for
    them (one that would not fit alone runs alone). Three quarters of the machine's (or its
    container's) memory by default."""
    model_removal: str = "any"
    """Which models of the models folder the app's page may remove (``FIELDFLOW_MODEL_REMOVAL``):
    ``any``, or ``own``, only those the same browser session made (a server shared by people
    who should not remove each other's models). The command line and the folder itself are not
    bound by it."""
    result_cache_mb: float = 4096.0
    """Memory the app's finished Runs may hold, shared by its sessions
    (``FIELDFLOW_RESULT_CACHE_MB``). The least recently used are dropped past it (a 64 px Run
    holds about 10 MB, a 500 px one over 1 GB); a session keeps the Run it shows either way."""

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, check_checkpoint: bool = True
    ) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); unset keys keep defaults.

        ``check_checkpoint=False`` takes ``FIELDFLOW_CHECKPOINT`` as given, for a command that
        never loads a model (``fetch``, ``cache``): a wrong path there must not stop it.

        Raises:
            InputError: a numeric variable is not a number in its range, or (when checked)
                ``FIELDFLOW_CHECKPOINT`` is not a file; the message names the variable.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        if env.get("STAC_API_URL", "").strip():
            url = env["STAC_API_URL"].strip()
            # A trailing slash goes; not the scheme's (check_stac_url must see 'http://' whole)
            kwargs["stac_api_url"] = url.rstrip("/") if "://" in url.rstrip("/") else url
        for name, key in (
            ("FIELDFLOW_DATA_DIR", "data_dir"),
            ("FIELDFLOW_CACHE_DIR", "cache_dir"),
            ("FIELDFLOW_MODELS_DIR", "models_dir"),
        ):
            if env.get(name, "").strip():  # absolute: a Dask worker has its own working folder
                kwargs[key] = Path(env[name].strip()).expanduser().absolute()  # (review 19)
        models_dir = kwargs.get("models_dir")
        if isinstance(models_dir, Path) and models_dir.is_file():
            raise InputError(
                f"FIELDFLOW_MODELS_DIR is {str(models_dir)!r}, a file: give the folder that holds "
                "your checkpoints (it may not exist yet), or unset it for the default, and start "
                "again."
            )
        if env.get("FIELDFLOW_CHECKPOINT", "").strip():
            text = env["FIELDFLOW_CHECKPOINT"]
            kwargs["checkpoint"] = (
                _env_file("FIELDFLOW_CHECKPOINT", text)
                if check_checkpoint
                else Path(text.strip()).expanduser()
            )
        for name, key, lowest in (
            ("FIELDFLOW_MAX_AREA_HA", "max_area_ha", 0.0),
            ("FIELDFLOW_TIMEOUT_S", "timeout_s", 0.0),
            ("FIELDFLOW_MAX_PIXEL_DATES", "max_pixel_dates", 0.0),
            ("FIELDFLOW_RESULT_CACHE_MB", "result_cache_mb", None),
            ("FIELDFLOW_CACHE_MAX_GB", "cache_max_gb", None),
            ("FIELDFLOW_RUN_MEMORY_GB", "run_memory_gb", 0.0),
        ):
            if env.get(name, "").strip():
                kwargs[key] = _env_number(name, env[name], above=lowest)
        if env.get("FIELDFLOW_MODEL_REMOVAL", "").strip():
            removal = env["FIELDFLOW_MODEL_REMOVAL"].strip().lower()
            if removal not in MODEL_REMOVALS:
                raise InputError(
                    f"FIELDFLOW_MODEL_REMOVAL is {env['FIELDFLOW_MODEL_REMOVAL'].strip()!r}: give "
                    "'any' (the page removes any model of the models folder) or 'own' (only "
                    "those the same browser session made), or unset it for 'any'."
                )
            kwargs["model_removal"] = removal
        if env.get("FIELDFLOW_MAX_RUNS", "").strip():
            runs = _env_number("FIELDFLOW_MAX_RUNS", env["FIELDFLOW_MAX_RUNS"], above=0.0)
            if runs != int(runs):
                raise InputError(
                    f"FIELDFLOW_MAX_RUNS is {env['FIELDFLOW_MAX_RUNS'].strip()!r}: give a whole "
                    "number of Runs computed at once, 1 or more, or unset it for the default "
                    "(one per core)."
                )
            kwargs["max_runs"] = int(runs)
        if env.get("FIELDFLOW_RETRIES", "").strip():
            retries = _env_number("FIELDFLOW_RETRIES", env["FIELDFLOW_RETRIES"], above=None)
            if retries != int(retries) or retries > MAX_RETRIES:
                raise InputError(
                    f"FIELDFLOW_RETRIES is {env['FIELDFLOW_RETRIES'].strip()!r}: give a whole "
                    f"number of retries from 0 to {MAX_RETRIES} (0: no retry; each waits longer "
                    "than the last), or unset it for the default, 4."
                )
            kwargs["retries"] = int(retries)
        return cls(**kwargs)

    @property
    def admission(self) -> Admission:
        """What the process's Runs may take at once (:class:`core.admission.RunGate`)."""
        return Admission(most_runs=self.max_runs, memory_bytes=self.run_memory_gb * 1e9)

    @property
    def cubes_dir(self) -> Path:
        """Folder of the shared real cubes."""
        return self.data_dir / "cubes"


def _env_number(name: str, text: str, *, above: float | None) -> float:
    """``text`` (the value of environment variable ``name``) as a finite number, greater than
    ``above`` (None: 0 or more).

    Raises:
        InputError: not a number, or out of range; the message names the variable and the fix.
    """
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    in_range = number > above if above is not None else number >= 0
    if math.isfinite(number) and in_range:
        return number
    wanted = f"a number above {above:g}" if above is not None else "a number, 0 or more"
    raise InputError(
        f"{name} is {value!r}: it must be {wanted}. Correct it, or unset it to use the default, "
        "and start again."
    )


def _env_file(name: str, text: str) -> Path:
    """``text`` (the value of environment variable ``name``) as the path of an existing file.

    Raises:
        InputError: nothing there, or a folder; the message names the variable and the fix.
    """
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no file"
        raise InputError(
            f"{name} is {text.strip()!r}, but there is {what} there: give the path of a "
            "checkpoint file (made by `python -m core train`), or unset it to use the shipped "
            "model, and start again."
        )
    return path.resolve()
