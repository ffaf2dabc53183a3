"""The cube: one S1/S2 time series of one place, in memory and on disk.

A cube is an :class:`xarray.Dataset` in exactly the format of ``../shared/data/README.md``, so
one reader and one writer serve the fetch cache, training, evaluation and the demo:

===========  ==============================  ==============================================
variable     dims                            meaning
===========  ==============================  ==============================================
``s2``       (time_s2, band, y, x)           L2A surface reflectance, float; NaN = no data
``valid``    (time_s2, y, x)                 1 = clear observation (SCL 4/5/6 and data)
``scl``      (time_s2, y, x)                 optional Sen2Cor scene classification, 0 = none
``s1``       (time_s1, polarization, y, x)   optional backscatter in dB; NaN = no data
``crop_type`` (y, x)                         optional crop code, 0 = none
===========  ==============================  ==============================================

Attributes ``crs`` and ``resolution_m`` are required; ``site``, ``source``, ``license`` and
others are kept. The optional coordinate ``orbit_state`` (time_s1) records each S1 frame's
orbit direction. On disk ``s2`` and ``s1`` are scaled int16 (0.0001 and 0.01 dB).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from core.errors import CubeError
from core.storage import atomic_output, signals_deferred

LOG = logging.getLogger(__name__)
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
"""The ten S2 bands of every cube, in this order."""
POLARIZATIONS: tuple[str, ...] = ("VV", "VH")
CLEAR_SCL_CLASSES: tuple[int, ...] = (4, 5, 6)
"""Sen2Cor classes counted as clear: vegetation, not vegetated (bare soil), water."""
SCL_NAMES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area (topographic shadow)",
    3: "cloud shadow",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud (medium probability)",
    9: "cloud (high probability)",
    10: "thin cirrus",
    11: "snow or ice",
}
"""Sen2Cor's scene classes (SCL), as a reader of the cloud mask would want them named."""


def mask_breakdown(
    scl: np.ndarray, masked: np.ndarray, *, least: float = 0.01
) -> list[tuple[str, float]]:
    """Why the masked pixels of one acquisition are masked, by scene class.

    Args:
        scl: the acquisition's SCL classes over the pixels looked at (any shape).
        masked: True where the pixel is not clear (same shape).
        least: shares below this are left out.

    Returns:
        ``(name, share of all the pixels)`` pairs, largest first. A pixel the scene
        classification calls clear but that is masked (the haze screen, or a clear class with
        no reflectance) counts as "haze or no data".
    """
    total = scl.size
    if total == 0:
        return []
    # In float: a fetched cube's classes are uint8, where -1 read back as 255 and every
    # screened pixel was named "class 255" (review 22); a class NaN is no data.
    as_read = np.asarray(scl, dtype=np.float64)
    classes = np.where(np.isin(as_read, CLEAR_SCL_CLASSES), -1.0, as_read)[masked]
    classes = np.where(np.isnan(classes), -1.0, classes)
    values, counts = np.unique(classes, return_counts=True)
    names = [
        SCL_NAMES.get(int(v), f"class {int(v)}") if v >= 0 else "haze or no data" for v in values
    ]
    shares = [(name, float(c / total)) for name, c in zip(names, counts, strict=True)]
    return sorted((s for s in shares if s[1] >= least), key=lambda s: -s[1])


S2_SCALE = 1e-4
S1_SCALE = 0.01
INT16_FILL = np.int16(-32768)
NETCDF_LOCK = threading.Lock()
"""HDF5 (under netCDF4) is not thread-safe: concurrent reads/writes in one process segfault.
Every NetCDF open in the product holds this lock."""

_ENCODING: dict[str, dict[str, object]] = {
    "s2": {
        "dtype": "int16",
        "scale_factor": S2_SCALE,
        "_FillValue": INT16_FILL,
        "zlib": True,
        "complevel": 5,
        "shuffle": True,
    },
    "s1": {
        "dtype": "int16",
        "scale_factor": S1_SCALE,
        "_FillValue": INT16_FILL,
        "zlib": True,
        "complevel": 5,
        "shuffle": True,
    },
    "valid": {"dtype": "uint8", "zlib": True, "complevel": 5},
    "scl": {"dtype": "uint8", "zlib": True, "complevel": 5},
    "crop_type": {"dtype": "int32", "zlib": True, "complevel": 5},
}


def valid_from_scl(scl: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Clear mask from the scene classification and the reflectance.

    Args:
        scl: Sen2Cor classes, shape (T, H, W).
        s2: reflectance, shape (T, B, H, W); a pixel with every band NaN has no data.

    Returns:
        uint8 array (T, H, W): 1 where SCL is 4, 5 or 6 and some band holds data.
    """
    present = np.any(np.isfinite(s2), axis=1)
    return (np.isin(scl, CLEAR_SCL_CLASSES) & present).astype(np.uint8)


def build_cube(
    s2: np.ndarray,
    time_s2: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    attrs: Mapping[str, object],
    *,
    valid: np.ndarray | None = None,
    scl: np.ndarray | None = None,
    s1: np.ndarray | None = None,
    time_s1: np.ndarray | None = None,
    orbit_state: np.ndarray | None = None,
    crop_type: np.ndarray | None = None,
) -> xr.Dataset:
    """Assemble a cube from arrays.

    Args:
        s2: reflectance (T2, 10, H, W) in :data:`S2_BANDS` order, NaN where absent.
        time_s2: acquisition times (T2,), datetime64.
        y, x: pixel-centre coordinates (H,), (W,) in the cube's CRS.
        attrs: at least ``crs`` and ``resolution_m``.
        valid: clear mask (T2, H, W); derived from ``scl`` when omitted.
        scl: scene classification (T2, H, W).
        s1: backscatter in dB (T1, 2, H, W), VV then VH; needs ``time_s1``.
        orbit_state: "ascending"/"descending" per S1 frame (T1,).
        crop_type: crop code per pixel (H, W).
    """
    if valid is None:
        if scl is None:
            raise CubeError("A cube needs either a 'valid' mask or an 'scl' layer to derive it.")
        valid = valid_from_scl(scl, s2)
    data_vars: dict[str, tuple] = {
        "s2": (("time_s2", "band", "y", "x"), np.asarray(s2, dtype=np.float32)),
        "valid": (("time_s2", "y", "x"), np.asarray(valid, dtype=np.uint8)),
    }
    coords: dict[str, object] = {
        "time_s2": np.asarray(time_s2, dtype="datetime64[ns]"),
        "band": list(S2_BANDS),
        "y": np.asarray(y, dtype=np.float64),
        "x": np.asarray(x, dtype=np.float64),
    }
    if scl is not None:
        data_vars["scl"] = (("time_s2", "y", "x"), np.asarray(scl, dtype=np.uint8))
    if s1 is not None:
        if time_s1 is None:
            raise CubeError("S1 data was given without its acquisition times (time_s1).")
        data_vars["s1"] = (("time_s1", "polarization", "y", "x"), np.asarray(s1, np.float32))
        coords["time_s1"] = np.asarray(time_s1, dtype="datetime64[ns]")
        coords["polarization"] = list(POLARIZATIONS)
        if orbit_state is not None:
            coords["orbit_state"] = ("time_s1", np.asarray(orbit_state, dtype=str))
    if crop_type is not None:
        data_vars["crop_type"] = (("y", "x"), np.asarray(crop_type, dtype=np.int32))
    return validate_cube(xr.Dataset(data_vars, coords=coords, attrs=dict(attrs)))


def validate_cube(ds: xr.Dataset) -> xr.Dataset:
    """Check that ``ds`` is in the cube format; return it normalised (float32, +-inf as NaN,
    ``valid`` present).

    Raises:
        CubeError: with a message naming what is missing or malformed.
    """
    if "s2" not in ds:
        raise CubeError("Not a FieldFlow cube: it has no 's2' variable (time_s2, band, y, x).")
    dims = ds["s2"].dims
    if dims != ("time_s2", "band", "y", "x"):
        raise CubeError(f"Cube variable 's2' has dims {dims}; expected (time_s2, band, y, x).")
    bands = tuple(str(b) for b in ds["band"].values)
    if bands != S2_BANDS:
        ds = _ten_bands(ds, bands)
    for attr in ("crs", "resolution_m"):
        if attr not in ds.attrs or ds.attrs[attr] is None or str(ds.attrs[attr]).strip() == "":
            example = "'EPSG:32631'" if attr == "crs" else "10.0"
            what = "its coordinates' CRS" if attr == "crs" else "its pixel size in metres"
            raise CubeError(
                f"Cube lacks the '{attr}' attribute ({what}). Set it, e.g. "
                f"ds.attrs['{attr}'] = {example}, and write the cube again."
            )
    _check_crs(str(ds.attrs["crs"]))
    resolution_m = _resolution_m(ds.attrs["resolution_m"])
    if ds.sizes["time_s2"] == 0:
        raise CubeError("Cube has no Sentinel-2 frames.")
    if ds.sizes["y"] == 0 or ds.sizes["x"] == 0:
        raise CubeError(f"Cube has no pixels ({ds.sizes['y']} x {ds.sizes['x']}).")
    for axis in ("x", "y"):
        _check_lattice(ds, axis)
    ds = _north_up(ds)
    ds = _s2_in_order(_dated(_dated(ds, "time_s2"), "time_s1"))
    out = ds.copy()
    out.attrs["resolution_m"] = resolution_m
    out["s2"] = _finite_or_nan(out["s2"])
    _check_reflectance_scale(out["s2"].values)
    if "valid" not in out:
        if "scl" not in out:
            raise CubeError("Cube has neither 'valid' nor 'scl': cannot tell clear pixels.")
        out["valid"] = (("time_s2", "y", "x"), valid_from_scl(out["scl"].values, out["s2"].values))
    elif out["valid"].dims != ("time_s2", "y", "x"):
        raise CubeError(
            f"Cube variable 'valid' has dims {out['valid'].dims}; expected (time_s2, y, x)."
        )
    flags = out["valid"].values
    if flags.dtype != np.uint8 or flags.max(initial=0) > 1:  # the usual case costs one max
        odd = np.unique(flags[~np.isin(flags, (0, 1))])
        if odd.size:
            shown = ", ".join(str(v) for v in odd[:5])
            raise CubeError(
                f"Cube variable 'valid' holds {shown}{' ...' if odd.size > 5 else ''}; it must "
                "be 1 for a clear observation and 0 for anything else (cloud, shadow, nodata). "
                "Map other codes to 0 or 1 before writing the cube (SCL: core.cube.valid_from_scl)."
            )
    out["valid"] = out["valid"].astype(np.uint8)
    _check_clear_reflectance(out["s2"].values, out["valid"].values)
    if "s1" in out:
        if out["s1"].dims != ("time_s1", "polarization", "y", "x"):
            raise CubeError(
                f"Cube variable 's1' has dims {out['s1'].dims}; expected "
                "(time_s1, polarization, y, x)."
            )
        out["s1"] = _finite_or_nan(out["s1"])
        coded = out["s1"].values <= NODATA_BELOW_DB  # a nodata code such as -9999: missing
        if coded.any():
            out["s1"] = out["s1"].where(~coded)
        _check_backscatter_scale(out["s1"].values)
        out = _s1_in_order(out)
    return out


def _shown(value: object) -> str:
    """A value as a user wrote it: a number plainly (NumPy's repr says np.float64(-10.0))."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _resolution_m(value: object) -> float:
    """The ``resolution_m`` attribute as a finite positive float (a number written as text,
    e.g. "10", is read as one).

    Raises:
        CubeError: anything else (a word, 0, a negative number, NaN).
    """
    try:
        resolution_m = float(value)
    except (TypeError, ValueError):
        resolution_m = math.nan
    if not (math.isfinite(resolution_m) and resolution_m > 0):
        raise CubeError(
            f"Cube attribute 'resolution_m' is {_shown(value)}; it must be the pixel size in "
            "metres, a "
            "positive number (10 for a cube on Sentinel-2's 10 m grid). Set it, e.g. "
            "ds.attrs['resolution_m'] = 10.0, and write the cube again."
        )
    return resolution_m


def _s2_in_order(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its S2 frames (and their ``valid``/``scl``) in time order.

    Raises:
        CubeError: two frames at the same time; they must be merged into one.
    """
    times = ds["time_s2"].values.astype("datetime64[ns]")
    if not np.any(np.diff(times.astype(np.int64)) <= 0):
        return ds
    ordered = np.sort(times)
    twice = ordered[1:][np.diff(ordered.astype(np.int64)) == 0]
    if twice.size:
        at = twice[0]
        when = str(np.datetime_as_string(at, unit="s")).removesuffix("T00:00:00")
        raise CubeError(
            f"Cube has {int(np.sum(times == at))} Sentinel-2 frames at {when}; merge frames of "
            "the same time into one (e.g. per pixel the first clear value), as 'python -m core "
            "fetch' does, then write the cube again."
        )
    return ds.sortby("time_s2")


def _s1_in_order(cube: xr.Dataset) -> xr.Dataset:
    """The S1 frames in time order and the polarizations as :data:`POLARIZATIONS` (a missing one
    all NaN), whatever order a cube written elsewhere holds them in.

    Raises:
        CubeError: a polarization FieldFlow does not read (e.g. HH), or none named.
    """
    if "polarization" not in cube.coords:
        raise CubeError(
            f"Cube variable 's1' has no 'polarization' coordinate; name its layers {POLARIZATIONS}."
        )
    names = [str(p) for p in cube["polarization"].values]
    unknown = sorted(set(names) - set(POLARIZATIONS))
    if unknown or len(set(names)) != len(names):
        raise CubeError(
            f"Cube S1 polarizations are {tuple(names)}; FieldFlow reads {POLARIZATIONS} "
            "(Sentinel-1 IW dual-pol), each once."
        )
    if tuple(names) != POLARIZATIONS:
        cube = cube.assign_coords(polarization=names).reindex(polarization=list(POLARIZATIONS))
    times = cube["time_s1"].values
    if times.size > 1 and np.any(np.diff(times.astype("datetime64[ns]").astype(np.int64)) < 0):
        cube = cube.sortby("time_s1")
    return cube


def single_polarization_note(s1: xr.DataArray) -> str | None:
    """A sentence when some frames of ``s1`` (time_s1, polarization, y, x) hold one
    polarization only, else None. The model takes S1 at a pixel and date only with both VV and
    VH (and VV - VH), so such frames (single-polarization acquisitions, which some regions
    only have) do not inform it, while the cube looks as if it had them (frame counts, radar
    pictures)."""
    held = np.isfinite(s1.values).reshape(*s1.shape[:2], -1).any(axis=2)  # (T, 2)
    single = held.any(axis=1) & ~held.all(axis=1)
    if not single.any():
        return None
    n, total = int(single.sum()), s1.sizes["time_s1"]
    which = "all" if n == total else f"{n} of the"
    names = s1["polarization"].values
    only = ", ".join(str(p) for p, h in zip(names, held[single].any(axis=0), strict=True) if h)
    return (
        f"Sentinel-1 holds one polarization only ({only}) in {which} {total} radar frames: the "
        "model uses radar only where VV and VH are both present, so those frames do not "
        "inform the reconstruction (it rests on Sentinel-2 there)."
    )


def _check_crs(crs: str) -> None:
    import pyproj  # here: reading a cube does not otherwise need it

    try:
        pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise CubeError(
            f"Cube CRS '{crs}' is not one pyproj knows; write it as an authority code such as "
            "'EPSG:32631'."
        ) from exc


def _dated(ds: xr.Dataset, name: str) -> xr.Dataset:
    """``ds`` with its ``name`` coordinate as datetime64[ns]: ISO date strings are read as
    dates; numbers (days? seconds? since when?) are refused."""
    if name not in ds.coords or np.issubdtype(ds[name].dtype, np.datetime64):
        return ds
    values = ds[name].values
    if values.size and not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        try:
            return ds.assign_coords({name: values.astype("datetime64[ns]")})
        except (ValueError, TypeError):
            pass
    raise CubeError(
        f"Cube coordinate '{name}' holds {values.dtype} values, not dates; write it as "
        "datetime64 (or ISO dates such as 2021-05-03)."
    )


UNUSED_S2_BANDS = ("B01", "B09", "B10")
"""Sentinel-2 bands a cube may hold that FieldFlow does not read (60 m aerosol, water vapour,
cirrus): dropped when a cube is read."""


def _ten_bands(ds: xr.Dataset, bands: tuple[str, ...]) -> xr.Dataset:
    """``ds`` with the ten :data:`S2_BANDS` in order: a cube written elsewhere may hold some of
    them, in another order, or with the unused 60 m bands; the absent ones are all NaN (as in
    the 20 m-only shared cubes).

    Raises:
        CubeError: a band name Sentinel-2 does not have, a band twice, or none of the ten.
    """
    unknown = tuple(b for b in bands if b not in S2_BANDS and b not in UNUSED_S2_BANDS)
    twice = sorted({b for b in bands if bands.count(b) > 1})
    if unknown or twice or not set(bands) & set(S2_BANDS):
        if unknown:
            wrong = "not Sentinel-2 bands: " + ", ".join(unknown)
        elif twice:
            wrong = "given twice: " + ", ".join(twice)
        else:
            wrong = "none of the ten FieldFlow reads"
        raise CubeError(
            f"Cube bands are {bands} ({wrong}); expected Sentinel-2 band names, each once, among "
            f"the ten FieldFlow reads {S2_BANDS} (NDVI needs B04, and B08 or B8A)."
        )
    return ds.reindex(band=list(S2_BANDS))


REFLECTANCE_MEDIAN_MAX = 1.5
"""Above this median (clouds and snow included, whose medians stay below about 1), a cube's
's2' is not reflectance."""
PERCENT_MEDIAN_MAX = 100.0
"""Up to this median, values above :data:`REFLECTANCE_MEDIAN_MAX` are read as percent
reflectance (0-100); above it as L2A digital numbers (0-10000, 1000-11000 with the offset)."""


def _sampled_values(values: np.ndarray) -> np.ndarray:
    """The finite, non-zero values (0 is a common nodata code of integer exports) of every
    4th pixel of every (T // 16)-th frame of ``values`` (T, bands, H, W): 16 to 31 frames, or
    all; every such value where that sample holds none. What the scale checks judge on, at
    little cost."""
    frames = values[:: max(1, values.shape[0] // 16), :, ::4, ::4]
    kept = frames[np.isfinite(frames) & (frames != 0)]
    if kept.size == 0:  # the sample fell on nodata only: look at every value
        kept = values[np.isfinite(values) & (values != 0)]
    return kept


def _check_reflectance_scale(s2: np.ndarray) -> None:
    """CubeError when ``s2`` (T, 10, H, W) is not reflectance (0 to about 1): L2A digital
    numbers or percent (every method would run and give numbers 10,000 or 100 x too large,
    and NDVI would look fine), or mostly negative (an offset taken away twice: NDVI would be
    empty). Judged on :func:`_sampled_values`. A few slightly negative values are real L2A
    (water, shadow) and pass."""
    values = _sampled_values(s2)
    median = float(np.median(values)) if values.size else 0.0
    if median > PERCENT_MEDIAN_MAX:
        raise CubeError(
            f"The cube's 's2' looks like digital numbers, not reflectance (median "
            f"{median:,.0f}; reflectance lies between 0 and about 1). Divide "
            "Sentinel-2 L2A values by 10000 (after subtracting 1000 for processing baseline "
            "04.00 and later) before writing the cube, or fetch it with 'python -m core fetch'."
        )
    if median > REFLECTANCE_MEDIAN_MAX:
        raise CubeError(
            f"The cube's 's2' looks like percent reflectance (median {median:.0f}; reflectance "
            "lies between 0 and about 1). Divide its values by 100 before writing the cube, or "
            "fetch it with 'python -m core fetch'."
        )
    if median < 0:
        raise CubeError(
            f"The cube's 's2' is mostly negative (median {median:.2f}); reflectance lies "
            "between 0 and about 1, with only a few values slightly below 0 (water, shadow). "
            "The L2A offset looks wrong: for processing baseline 04.00 and later subtract 1000 "
            "from the digital numbers once (BOA_ADD_OFFSET), then divide by 10000; or fetch "
            "the cube with 'python -m core fetch'."
        )


CLEAR_MEDIAN_MIN = 0.002
"""Below this median, a cube's clear reflectance is not reflectance: land and water lie at 0.01
to 0.5 (the shared cubes' clear medians are 0.057 to 0.22, their 1st percentiles 0.006 to
0.09); 10,000 times too small, it is reflectance divided by 10000 twice (review 18)."""
CLEAR_NEGATIVE_SHARE_MAX = 0.3
"""Above this share of clear red values (of all bands' without red) below -0.01, an L2A offset
was taken from values that had none (before processing baseline 04.00): everything then lies
0.1 too low and red, mostly under 0.1, goes negative (51 % of the clear red of a hu-alfold crop,
review 18; no shared cube has any). Water and deep shadow dip below 0 in real L2A: a fifth of a
field's red there passes."""


def _check_clear_reflectance(s2: np.ndarray, valid: np.ndarray) -> None:
    """CubeError when the clear pixels of ``s2`` are reflectance on a wrong scale that the
    median of all values (clouds included, :func:`_check_reflectance_scale`) lets through:
    divided by 10000 twice, or shifted by an offset the data did not have. Every method ran on
    such a cube, and training saved a model of it; the commands that screen the red floor then
    found "not one clear pixel" and blamed the clouds (review 18)."""
    frames = slice(None, None, max(1, s2.shape[0] // 16))
    sample = s2[frames, :, ::4, ::4]
    clear = valid[frames, ::4, ::4].astype(bool)
    by_band = np.moveaxis(sample, 1, -1)[clear]  # (n, bands)
    values = by_band[np.isfinite(by_band) & (by_band != 0)]
    if values.size < 100:  # too few clear values to judge: the other checks stand
        return
    red = by_band[:, S2_BANDS.index("B04")]
    red = red[np.isfinite(red) & (red != 0)]  # red where present: dark water's SWIR may dip
    negative = float(np.mean((red if red.size >= 100 else values) < -0.01))
    if negative > CLEAR_NEGATIVE_SHARE_MAX:
        raise CubeError(
            f"{negative:.0%} of the cube's clear red (or reflectance) values are below -0.01 "
            "(real L2A has almost none): an offset looks taken away that the data did not "
            "have. Subtract 1000 from the digital numbers only for processing baseline 04.00 "
            "and later "
            "(BOA_ADD_OFFSET), then divide by 10000; or fetch the cube with 'python -m core "
            "fetch'."
        )
    median = float(np.median(values))
    if median < CLEAR_MEDIAN_MIN:
        raise CubeError(
            f"The cube's clear reflectance is far too small (median {median:.2g}; land and "
            "water lie between about 0.01 and 0.5): it looks divided by 10000 twice. Divide "
            "Sentinel-2 L2A digital numbers by 10000 once, or fetch the cube with 'python -m "
            "core fetch'."
        )


NODATA_BELOW_DB = -100.0
"""Backscatter values at or below this are nodata codes (e.g. -9999), not decibels."""
LINEAR_NEGATIVE_SHARE = 0.01
"""Under this share of values below 0 (with a median above 0), a cube's 's1' is linear
backscatter or amplitude, not dB: those are never negative, while dB of land is mostly so."""


def _check_backscatter_scale(s1: np.ndarray) -> None:
    """CubeError when ``s1`` (T, 2, H, W) is not in decibels: linear backscatter (Planetary
    Computer's RTC gamma0 and GRD calibrated sigma0 are linear, 0 to about 1) or amplitude
    numbers. Every method would run on it, and the model would read it as radar near 0 dB.

    Land backscatter in dB is negative almost everywhere (VV about -20 to -5, VH about -28 to
    -12; the shared cubes' medians are -13.8 to -12.6 dB, their highest frame median -10 dB),
    and linear backscatter or amplitude is never negative: a median above 0 with (almost) no
    value below 0 tells them apart with a wide margin. A field of strong scatterers in dB (a
    town), even with a median above 0, keeps a good share below 0: the shared cubes' VV moved
    to a median of +1 dB keeps 33-39 % below 0. Judged as the reflectance scale is
    (:func:`_sampled_values`; weak linear values stored at the format's 0.01 steps round to 0),
    with nodata codes (at or below :data:`NODATA_BELOW_DB`) already missing."""
    if s1.shape[0] == 0:
        return
    values = _sampled_values(s1)
    if values.size == 0:
        return
    median = float(np.median(values))
    if median > 0 and np.mean(values < 0) < LINEAR_NEGATIVE_SHARE:
        raise CubeError(
            f"The cube's 's1' does not look like backscatter in decibels (median {median:.3g}; "
            "in dB land backscatter is about -30 to 0, its median well below 0). It looks "
            "like linear backscatter (gamma0 or sigma0, 0 to about 1) or amplitude. Convert "
            "linear backscatter with 10 * log10(value) before writing the cube (amplitude "
            "needs calibrating to backscatter first), or fetch it with 'python -m core fetch', "
            "which does."
        )


def _finite_or_nan(values: xr.DataArray) -> xr.DataArray:
    """float32, with +-inf as NaN (missing): a decibel conversion of a zero backscatter gives
    -inf, and one infinite input would make every estimate of the model non-finite."""
    out = values.astype(np.float32)
    data = out.values
    infinite = np.isinf(data)
    if infinite.any():
        out = out.copy(data=np.where(infinite, np.float32(np.nan), data))
    return out


def _check_lattice(ds: xr.Dataset, axis: str) -> None:
    """CubeError unless the ``axis`` coordinates step evenly, all one way (in the CRS's units:
    metres, or degrees for a cube in lon/lat): field masks and GeoTIFFs are built from the first
    coordinate and the step, and were silently wrong on a cube whose x were all equal or
    unevenly spaced (review 5)."""
    if axis not in ds.coords or ds.sizes.get(axis, 0) < 2:
        return
    steps = np.diff(np.asarray(ds[axis].values, dtype=np.float64))
    if not np.all(np.isfinite(steps)):
        raise CubeError(f"Cube's {axis} coordinates are not all numbers; write it with core.cube.")
    step = float(np.median(steps))
    regular = step != 0 and np.all(np.abs(steps - step) <= 1e-3 * abs(step))
    if not regular:
        raise CubeError(
            f"Cube's {axis} coordinates are no regular grid (steps from {steps.min():g} to "
            f"{steps.max():g}): its pixels must be evenly spaced, in one direction. Write it "
            "with core.cube (python -m core fetch makes such cubes)."
        )


def _north_up(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with y falling and x rising (north up), as field masks, GeoTIFFs and the app's
    pictures take a cube: a cube written south up or mirrored (xarray writes what it is given)
    was refused at its first field outline ("not a regular north-up grid"), with nothing to
    say what to do (review 9). Flipping the axis keeps every value at its coordinates."""
    for axis, rising in (("y", False), ("x", True)):
        if axis in ds.coords and ds.sizes.get(axis, 0) >= 2:
            values = ds[axis].values
            if (values[1] > values[0]) != rising:
                ds = ds.isel({axis: slice(None, None, -1)})
    return ds


def read_cube(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a cube file fully into memory and validate it.

    Raises:
        CubeError: the file is missing, unreadable or not a cube.
    """
    p = Path(path)
    if p.is_dir():
        raise CubeError(
            f"{p} is a folder, not a cube file: give one cube's .nc file inside it (evaluate "
            "takes a folder of cubes with --cubes-dir)."
        )
    if not p.is_file():
        raise CubeError(
            f"Cube file not found: {p}. Check the path, or fetch one with 'python -m core fetch'."
        )
    try:
        with signals_deferred(), NETCDF_LOCK, xr.open_dataset(p) as ds:
            loaded = ds.load()
    except (OSError, ValueError) as exc:
        reason = str(exc).split(". ")[0].splitlines()[0]  # xarray's advice on backends: no use
        raise CubeError(
            f"Cannot read {p} as a NetCDF cube ({reason}). Is it a complete .nc file?"
        ) from exc
    except RuntimeError as exc:  # netCDF4 on damaged data past a sound header ("HDF error")
        reason = " ".join(str(exc).split())[:120]
        raise CubeError(
            f"Cannot read {p}: the file is damaged ({reason}). Fetch or copy it again."
        ) from exc
    for var in loaded.variables.values():
        var.encoding = {}
    cube = validate_cube(loaded)
    for note in (
        single_polarization_note(cube["s1"]) if has_s1(cube) else None,
        unmasked_note(cube),
    ):
        if note:  # here, not in validate_cube: once per file read
            LOG.warning("%s: %s", p, note)
    return cube


UNMASKED_FRAMES = 20
"""From this many Sentinel-2 frames, every observation flagged clear reads as a mask never
applied: no season of a field is clear on 20 acquisitions running, pixel for pixel."""


def unmasked_note(cube: xr.Dataset) -> str | None:
    """A sentence when every observation of a long cube without its scene classification is
    flagged clear (``valid`` all 1 where there is data): the cloud mask was likely never
    applied, and every method then takes clouds for ground (review 18: errors 10 x the usual,
    a band fitted 2.6 x wider). A fetched cube, whose ``valid`` comes from its ``scl``, may
    well be clear throughout in a dry season: it is left alone. None otherwise."""
    if cube.sizes["time_s2"] < UNMASKED_FRAMES or "scl" in cube:  # SCL's mask was applied
        return None
    has_data = np.isfinite(cube["s2"].values).any(axis=1)
    if not has_data.any() or not bool(cube["valid"].values.astype(bool)[has_data].all()):
        return None
    return (
        f"every observation of its {cube.sizes['time_s2']} Sentinel-2 frames is flagged clear "
        "('valid' is 1 wherever there is data): was the cloud mask applied? Clouds flagged "
        "clear are taken for ground by every method. Build 'valid' from the scene "
        "classification (core.cube.valid_from_scl) or another cloud mask."
    )


def write_cube(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` in the cube format, atomically (temp file + rename). Returns the path."""
    cube = validate_cube(ds)
    encoding = {name: dict(enc) for name, enc in _ENCODING.items() if name in cube}
    target = Path(path)
    with atomic_output(target, defer_signals=True) as tmp, NETCDF_LOCK:
        cube.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return target


def has_s1(ds: xr.Dataset) -> bool:
    """True if the cube holds at least one Sentinel-1 frame."""
    return "s1" in ds and ds.sizes.get("time_s1", 0) > 0


def without_empty_s1(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its Sentinel-1 frames that hold no pixel with both polarizations (all
    NaN over the cube, or one polarization only): the model reads a pixel's radar only where it
    has both, yet each such frame still took a place among its tokens and moved the
    reconstruction almost as much as real radar does (review 14: field-mean NDVI by up to
    0.011 against the same cube without them). ``fetch`` never keeps an all-NaN frame; a
    cube from another tool, or a crop over a swath's edge, can hold them."""
    if not has_s1(ds):
        return ds
    usable = np.isfinite(ds["s1"].values).all(axis=1).any(axis=(1, 2))
    return ds if usable.all() else ds.isel(time_s1=np.flatnonzero(usable))


def bands_present(ds: xr.Dataset) -> np.ndarray:
    """Boolean (10,): which S2 bands hold any finite value."""
    return np.asarray(np.isfinite(ds["s2"]).any(dim=("time_s2", "y", "x")).values)


def ndvi_bands_lacking(present: np.ndarray) -> list[tuple[str, str]]:
    """What NDVI needs that a cube with these bands present (bool (10,)) lacks:
    ``[("red", "B04"), ("near-infrared", "B08 or B8A")]`` or part of it; empty when none."""
    held = {b for b, p in zip(S2_BANDS, present, strict=True) if p}
    lacks = [] if "B04" in held else [("red", "B04")]
    if "B08" not in held and "B8A" not in held:
        lacks.append(("near-infrared", "B08 or B8A"))
    return lacks


def ndvi_band_problem(present: np.ndarray) -> str | None:
    """Why a cube with these bands present (bool (10,), as :func:`bands_present` gives) has no
    NDVI, naming exactly what it lacks; None when it has red (B04) and a near-infrared band
    (B08, else B8A). Absent bands do not make a cube unusable: its others can still be
    reconstructed."""
    held = [b for b, p in zip(S2_BANDS, present, strict=True) if p]
    lacks = [f"no {what} band ({names})" for what, names in ndvi_bands_lacking(present)]
    if not lacks:
        return None
    usable = (
        f"; its bands {', '.join(held)} can still be reconstructed with 'python -m core "
        "reconstruct'"
        if held
        else ""
    )
    return (
        f"This cube has {' and '.join(lacks)}, so NDVI cannot be computed (it needs B04, and "
        f"B08 or B8A){usable}. For NDVI use a cube fetched with B04 and B08."
    )
