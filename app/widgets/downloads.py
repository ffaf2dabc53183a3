"""Downloads: the NDVI curve as CSV (exactly :func:`core.curve.curve_csv`), the selected frame
as GeoTIFF and every frame of the slider as NetCDF (both made only when clicked), and the field
as GeoJSON. None of them reruns the page."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from app import services
from app.state import Key
from core.curve import curve_csv
from core.export import field_geojson, safe_file_stem
from core.season import (
    SeasonResult,
    frame_geotiff_for_day,
    season_file_refusal,
    season_netcdf,
)

CSV_COLUMNS = (
    "One row a day (the UTC day). **ndvi**: the field's mean NDVI; **ndvi_p10**, "
    "**ndvi_p90**: its band, 8 times in 10 inside; **observed_ndvi**: the mean NDVI of the "
    "pixels seen clear, on days half the field or more was; **clear_fraction**: the share of "
    "the field seen clear (empty: no acquisition that day); **source**: observed (half the "
    "field or more seen clear that day; the rest of it is still reconstructed) or "
    "reconstructed; **days_to_clear**: the field's median days to its nearest clear "
    "observation; **band**: fitted (on this field's own hidden frames) or unfitted."
)
"""The CSV button's help (review 30: nothing said what the columns were)."""


def frame_button(result: SeasonResult, day: dt.date, label: str, which: str, key: Key) -> None:
    """The GeoTIFF of ``day``'s frame (``which``: what chose the day), made when clicked by
    reconstructing the curve's chunk of days that holds it."""
    runner = services.download_reconstructor()
    st.download_button(
        label,
        data=lambda: services.made_for_download(
            lambda on: frame_geotiff_for_day(result, day, on), runner
        ),
        file_name=f"{safe_file_stem(result.request.field.name)}_{day:%Y%m%d}_"
        f"{result.request.method}.tif",
        mime="image/tiff",
        on_click="ignore",
        icon=":material/download:",
        key=str(key),
        help=f"The frame of {day.isoformat()}, {which}: ten reflectance bands, "
        "NDVI (and its p10/p90 when sampled), float32, on the "
        f"field's grid ({result.grid.crs}, {result.grid.resolution_m:g} m). It covers the "
        "field's bounding box and 2 pixels around it, not the field alone; its p10/p90 are "
        "each pixel's, wider than the field mean's band of the chart and the CSV.",
    )


def downloads_row(result: SeasonResult, day: dt.date) -> None:
    """Four download buttons for ``result`` and the selected ``day``."""
    field = result.request.field
    stem = safe_file_stem(field.name)
    period = f"{result.first_day:%Y%m%d}-{result.last_day:%Y%m%d}"
    # Short labels under one heading: "Download frame 2018-05-04 (GeoTIFF)" did not fit its
    # quarter of the page and was cut.
    st.caption("Downloads")
    left, middle, season, right = st.columns(4)
    runner = services.download_reconstructor()  # the files are made as the Run's frames were
    if result.request.method == "model" and services.cluster_lost():
        # Review 21: one such GeoTIFF took past the browser's 3 minutes on a loaded machine,
        # and the page said only "Request timed out".
        st.caption(
            "The Dask cluster this Run was made on cannot be reached: a frame's GeoTIFF or the "
            "NetCDF is made here instead, the model tuned to the field again first, which can "
            "take minutes (the browser gives up on a file after 3). With the cluster back, run "
            "again for quick files."
        )
    left.download_button(
        "NDVI curve (CSV)",
        data=curve_csv(result.curve),
        file_name=f"{stem}_ndvi_{period}_{result.request.method}.csv",  # as the .tif, .nc
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
        help=CSV_COLUMNS,
    )
    with middle:
        # the full date did not fit at 1280 px: "(Ge..."
        frame_button(
            result, day, f"{day:%b %d} frame (GeoTIFF)", "the slider's date", Key.SLIDER_TIFF
        )
    refusal = season_file_refusal(result)
    season.download_button(
        f"All {len(result.timeline)} frames (NetCDF)",
        data=b""
        if refusal
        else lambda: services.made_for_download(lambda on: season_netcdf(result, on), runner),
        file_name=f"{stem}_frames_{period}_{result.request.method}.nc",
        mime="application/x-netcdf",
        on_click="ignore",
        icon=":material/download:",
        disabled=refusal is not None,
        help=refusal
        or "The slider's dates: the ten reflectance bands, NDVI, the observed flag (and p10/p90 "
        "when sampled) per pixel, the field's pixels and which dates are acquisitions; float32 "
        f"on the field's grid ({result.grid.crs}), compressed. Made when clicked (a few "
        "seconds).",
    )
    right.download_button(
        "Field outline (GeoJSON)",
        data=field_geojson(field),
        file_name=f"{stem}.geojson",
        mime="application/geo+json",
        on_click="ignore",
        icon=":material/download:",
    )
