"""The page's "Process all fields" on a farm's file, with the app's default settings (a
printout): wall time per field, median of repeats.

    python benchmarks/app_batch.py [--fields 6] [--start 2018-03-01] [--end 2018-10-31]
        [--repeats 3] [--out benchmarks/app_batch.txt]

be-flanders-a is published like Planetary Computer by the offline test harness (local STAC API
and HTTP-Range COG server, :mod:`tests.support`) over the period; ``--fields`` fields tile the
cube (as ``batch_throughput.py`` makes them). Each repeat runs
:func:`core.batch.run_upload_batch`, what the page's button runs, with the options the page's
settings give by default (the shipped model, 8 samples, per-field tuning, the fitted band, the
field blend, the haze screen) on an empty cache, so every field is fetched (S2 and S1) and
reconstructed, two at a time on a local cluster of two threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.batch_throughput import CUBE, load_average, write_fields
from core.batch import OK, BatchRequest, run_upload_batch
from core.bench import machine_description
from core.config import DEFAULT_CHECKPOINT, Settings
from core.cube import read_cube
from core.field import field_from_file
from core.reconstruct import ReconstructOptions
from core.season import default_adapt_steps
from tests.support.publish import PublishOptions
from tests.support.site import find_cube, serve_site

APP_SAMPLES = 8
"""The page's default samples (app.widgets.settings.DEFAULT_SAMPLES; app/ is not imported
here: it needs Streamlit's runtime)."""


def app_default_options() -> ReconstructOptions:
    """What the page's settings give untouched, with the model as the method."""
    return ReconstructOptions(
        samples=APP_SAMPLES,
        adapt_steps=default_adapt_steps(DEFAULT_CHECKPOINT),
        calibrate_field=True,
        blend_field=True,
        checkpoint=DEFAULT_CHECKPOINT,
        screen_haze=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=6)
    parser.add_argument("--start", default="2018-03-01")
    parser.add_argument("--end", default="2018-10-31")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the printout here")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    cube = read_cube(find_cube(settings.cubes_dir, CUBE))
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    for key, value in machine_description(probe_torch=False).items():
        say(f"{key}: {value}")
    options = app_default_options()
    with tempfile.TemporaryDirectory(prefix="fieldflow-bench-") as tmp:
        root = Path(tmp)
        publish = PublishOptions(start=args.start, end=args.end)
        with serve_site(cube, root / "site", publish, stac_dir=settings.data_dir / "stac") as site:
            path = write_fields(site.cube, args.fields, root / "farm.geojson")
            areas = [field_from_file(path, index=i).area_ha for i in range(args.fields)]
            request = BatchRequest(start=args.start, end=args.end, method="model", options=options)
            say(
                f"input: {CUBE} published locally, {len(site.s2_items)} S2 + "
                f"{len(site.s1_items)} S1 items, {args.start} to {args.end}; {args.fields} "
                f"fields of {min(areas):.1f}-{max(areas):.1f} ha; method model with the "
                f"page's defaults ({options.samples} samples, {options.adapt_steps} tuning "
                "steps, fitted band, field blend, haze screen); empty cache per repeat; "
                f"load average at start: {load_average()}"
            )
            say()
            say(
                f"{'repeat':>6}{'wall s':>9}{'s/field':>9}{'fields/min':>12}{'ok':>4}"
                "  load avg after"
            )
            walls = []
            for repeat in range(1, args.repeats + 1):
                config = Settings(stac_api_url=site.stac_url, cache_dir=root / f"cache-{repeat}")
                began = time.perf_counter()
                done = run_upload_batch(
                    path.read_bytes(),
                    "farm.geojson",
                    request,
                    settings=config,
                    progress=lambda *_: None,
                )
                wall = time.perf_counter() - began
                walls.append(wall)
                ok = sum(r.status == OK for r in done.rows)
                say(
                    f"{repeat:>6}{wall:>9.1f}{wall / args.fields:>9.1f}"
                    f"{60 * args.fields / wall:>12.1f}{ok:>4}  {load_average()}"
                )
    median = statistics.median(walls)
    say()
    say(
        f"median of {len(walls)}: {median:.1f} s for {args.fields} fields, "
        f"{median / args.fields:.1f} s a field, {60 * args.fields / median:.1f} fields a minute "
        f"(wall time of the whole button, cluster start included; {os.cpu_count()} cores)"
    )
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
