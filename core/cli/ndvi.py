"""``python -m core ndvi``: the field's NDVI curve (with uncertainty) as CSV."""

from __future__ import annotations

import argparse
import sys

import xarray as xr

from core.cli.fetch import add_feature_arguments
from core.cli.reconstruct import (
    add_method_arguments,
    chosen_method,
    options_from_args,
    outside_note,
    protected_checkpoint,
    unused_model_options,
    wider_cube_note,
)
from core.config import Settings
from core.cube import read_cube
from core.curve import (
    FIELD_WINDOW_MARGIN_PX,
    field_window,
    ndvi_curve,
    partly_seen_note,
    write_curve_csv,
)
from core.errors import FieldError, InputError
from core.field import OPTION_CHOICE, Field, field_from_file
from core.grid import field_mask, share_outside
from core.reconstruct import OUTSIDE_NOTED, imaged_part, require_imaged
from core.storage import check_output_path
from core.timeline import regular_dates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m core ndvi``."""
    parser.add_argument("--cube", required=True, help="input cube (.nc, see core.cube)")
    parser.add_argument(
        "--geojson",
        help="field outline (GeoJSON, KML, shapefile zip, ...); default: every pixel with data",
    )
    add_feature_arguments(parser)
    parser.add_argument("--start", required=True, help="first day YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last day YYYY-MM-DD")
    parser.add_argument("--every-days", type=int, default=1, help="spacing of the days")
    parser.add_argument("--out", required=True, help="output CSV file")
    add_method_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Compute the curve, write the CSV and print a one-line summary."""
    if not args.geojson and (
        args.index is not None or args.name is not None or args.layer is not None
    ):
        given = next(
            flag
            for flag, value in (
                ("--index", args.index),
                ("--name", args.name),
                ("--layer", args.layer),
            )
            if value is not None
        )
        raise InputError(
            f"{given} picks {'a layer' if given == '--layer' else 'one feature'} of the "
            "--geojson file, but no --geojson was given: add "
            f"--geojson FILE, or leave {given} out to use every pixel of the cube with data."
        )
    method = chosen_method(args, settings)
    check_output_path(
        args.out,
        inputs=[args.cube, *([args.geojson] if args.geojson else [])],
        model=protected_checkpoint(args, settings),
        writes="CSV",
        made_by={"NetCDF": "`python -m core reconstruct`, which writes the frames"},
    )
    cube = read_cube(args.cube)
    mask = None
    if args.geojson:
        field = field_from_file(
            args.geojson,
            index=args.index,
            name=args.name,
            layer=args.layer,
            max_area_ha=settings.max_area_ha,
            choice=OPTION_CHOICE,
        )
        mask = field_mask(field, cube)
        if not mask.any():
            raise FieldError(
                f"The field '{field.name}' does not overlap the cube {args.cube} (no pixel centre "
                "inside it); check that the cube was fetched for this field."
            )
        warn_if_partly_outside(field, cube, args.cube, args.geojson)
        mask, unseen = imaged_part(mask, cube)
        require_imaged(unseen, field.name)
        if unseen > OUTSIDE_NOTED:
            print(
                f"note: about {unseen:.0%} of the field's pixels in the cube are imaged by no "
                "Sentinel-2 acquisition of it (a swath or tile edge, or the edge of the data): "
                "the curve, its clear shares and days to clear describe the rest of the field."
            )
        whole = cube.sizes["y"], cube.sizes["x"]
        cube, mask = field_window(cube, mask)
        if (cube.sizes["y"], cube.sizes["x"]) != whole:
            print(
                f"note: the field and {FIELD_WINDOW_MARGIN_PX} pixels around it, "
                f"{cube.sizes['y']} x {cube.sizes['x']} of the cube's {whole[0]} x {whole[1]} "
                "pixels, are reconstructed (as the app does from a field's own fetch)."
            )
    curve = ndvi_curve(
        cube,
        args.start,
        args.end,
        every_days=args.every_days,
        method=method,
        options=options_from_args(args, settings, method=method),
        field_mask=mask,
    )
    path = write_curve_csv(curve, args.out)
    observed = int((curve["source"] == "observed").sum())
    print(
        f"Wrote {len(curve)} day(s) of NDVI ({observed} observed) for "
        f"{curve.attrs['field_pixels']} field pixels "
        f"with {method} (NDVI of B04 and {curve.attrs['nir_band']}) -> {path}"
    )
    asked = regular_dates(args.start, args.end, args.every_days).size
    if len(curve) < asked:
        print(outside_note(asked - len(curve), asked, cube))
    from core.season import (  # the app's words
        FIELD_NEVER_CLEAR_ATTR,
        NEVER_CLEAR_NOTE,
        accuracy_headline,
        checkpoint_warnings,
        fit_notes,
    )

    if curve.attrs.get("screened"):
        print(curve.attrs["screened"])
    if curve.attrs["field_clear_observations"] == 0:
        print(NEVER_CLEAR_NOTE)
    if partly := partly_seen_note(curve):
        print(f"note: {partly}")
    never_clear = int(curve.attrs["field_clear_observations"] == 0)
    fits = {**curve.attrs.get("fits", {}), FIELD_NEVER_CLEAR_ATTR: never_clear}
    for note in [accuracy_headline(fits), *fit_notes(fits)]:
        if note:
            print(note)
    for warning in checkpoint_warnings(fits):
        print(f"warning: {warning}", file=sys.stderr)
    if wider := wider_cube_note(cube, args.start, args.end, method):  # after its verdict
        print(wider)
    if note := unused_model_options(args, method):
        print(note, file=sys.stderr)
    return 0


def warn_if_partly_outside(field: Field, cube: xr.Dataset, cube_path: str, outline: str) -> None:
    """A ``warning:`` line on stderr when a share of the field (over
    :data:`core.reconstruct.OUTSIDE_NOTED`) lies beyond the cube's edges: the curve then describes
    only the part inside, which nothing else would tell."""

    outside = share_outside(field, cube)
    if outside <= OUTSIDE_NOTED:
        return
    print(
        f"warning: about {outside:.0%} of the field '{field.name}' ({outside * field.area_ha:.2f} "
        f"of {field.area_ha:.2f} ha) lies outside the cube {cube_path}: the NDVI curve covers only "
        f"the part inside. Fetch a cube for this field (python -m core fetch --geojson {outline} "
        "...) to have all of it.",
        file=sys.stderr,
    )
