"""Serve a real cube like Planetary Computer, in the foreground, for manual and browser tests.

    python -m tests.support.serve --cube ../shared/data/cubes/be-flanders-a_2017-2018.nc \\
        --port 8765 --max-dates 20
    export STAC_API_URL=http://127.0.0.1:8765/api/stac/v1

Faults can be injected while it runs, e.g. make the next two searches fail:

    curl -X POST -d '{"op": "fail_next", "args": {"n": 2, "status": 503}}' \\
        http://127.0.0.1:8765/__harness__/faults
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import shapely.geometry

from core.cube import read_cube
from tests.support.publish import PublishOptions
from tests.support.site import serve_site


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cube", type=Path, required=True, help="a UTM cube file (.nc)")
    p.add_argument("--port", type=int, default=0, help="STAC API port (default: a free one)")
    p.add_argument("--cog-port", type=int, default=0, help="COG server port (default: free)")
    p.add_argument("--folder", type=Path, help="where to write the COGs (default: a temp dir)")
    p.add_argument("--start", help="first date to publish, YYYY-MM-DD")
    p.add_argument("--end", help="last date to publish, YYYY-MM-DD")
    p.add_argument("--max-dates", type=int, help="publish only the first N S2 and N S1 dates")
    p.add_argument("--pad-px", type=int, default=0, help="nodata border in 10 m pixels")
    p.add_argument(
        "--split",
        type=int,
        nargs="*",
        default=[],
        help="S2 time indices published as two overlapping tiles",
    )
    p.add_argument(
        "--reprocessed",
        type=int,
        nargs="*",
        default=[],
        help="S2 time indices that claim baseline 05.00 (DN offset)",
    )
    p.add_argument("--no-s1", action="store_true", help="do not publish sentinel-1-rtc")
    p.add_argument(
        "--deny-s1",
        action="store_true",
        help="answer 403 to every S1 COG read (as without a PC subscription key)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Publish, serve until Ctrl-C, print the URL to export."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on kill, as on Ctrl-C
    options = PublishOptions(
        start=args.start,
        end=args.end,
        max_dates=args.max_dates,
        pad_px=args.pad_px,
        split=tuple(args.split),
        reprocessed=tuple(args.reprocessed),
        include_s1=not args.no_s1,
    )
    cube = read_cube(args.cube)
    with tempfile.TemporaryDirectory(prefix="fieldflow-site-") as tmp:
        folder = args.folder or Path(tmp)
        t0 = time.perf_counter()
        with serve_site(cube, folder, options, stac_port=args.port, cog_port=args.cog_port) as site:
            if args.deny_s1:
                site.cog_server.faults.deny("/sentinel1-grd-rtc/", 403)
            counts = {c: len(v) for c, v in site.items.items()}
            print(
                f"Published {site.name} {counts} in {time.perf_counter() - t0:.1f} s; COGs in "
                f"{folder} at {site.cog_server.url}",
                file=sys.stderr,
            )
            field = folder / "field.geojson"
            feature = {
                "type": "Feature",
                "properties": {"name": site.name},
                "geometry": shapely.geometry.mapping(site.field()),
            }
            field.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
            print(f"A field inside the cube: {field}", file=sys.stderr)
            print(f"export STAC_API_URL={site.stac_url}", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("Stopped.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
