"""How many pixels the scene mask calls clear are clouds it missed, per shared cube.

    python benchmarks/missed_clouds.py [--pictures DIR] [--frames 3]

Screens every cube of the shared data (:func:`core.screening.screen_cube`) and prints, per
cube, its clear pixel observations, how many the screen takes out and on how many acquisitions
(and on how many it takes out over a fifth of that day's clear pixels). ``--pictures DIR``
writes, for the ``--frames`` acquisitions of each cube with the largest share screened, the
frame as the mask left it (cloudy pixels dimmed) beside the same frame with the screened pixels
in magenta: true colour where the cube has it, else SWIR / NIR / red edge (B12, B8A, B05).
The pictures are of the real data; they are for looking at, not for the repository.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import S2_BANDS, read_cube
from core.render import enlarge, png_bytes, true_colour
from core.screening import screen_cube

FALSE_COLOUR = (("B12", 0.35), ("B8A", 0.5), ("B05", 0.2))
MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


def picture(s2: np.ndarray, clear: np.ndarray, screened: np.ndarray) -> np.ndarray:
    """(H, 2W, 3) uint8: the frame as the mask left it, and with the screened pixels marked."""
    if np.isfinite(s2[S2_BANDS.index("B02")]).any():
        image = true_colour(s2)
    else:
        stack = [np.nan_to_num(s2[S2_BANDS.index(b)]) / top for b, top in FALSE_COLOUR]
        image = np.round(np.clip(np.stack(stack, -1), 0, 1) * 255).astype(np.uint8)
    image = np.where(clear[..., None], image, image // 3)
    marked = np.where(screened[..., None], MAGENTA, image)
    return np.concatenate([image, marked], axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=3)
    args = parser.parse_args()
    cubes = sorted(Settings.from_env().cubes_dir.glob("*.nc"))
    print(f"{'cube':28s} {'clear px-obs':>12s} {'screened':>9s} {'share':>6s}  acquisitions")
    for path in cubes:
        cube = read_cube(path)
        _, screening = screen_cube(cube)
        clear = cube["valid"].values.astype(bool)
        per_frame = screening.screened.sum(axis=(1, 2)) / np.maximum(clear.sum(axis=(1, 2)), 1)
        touched = int(screening.screened.any(axis=(1, 2)).sum())
        print(
            f"{path.stem:28s} {screening.clear_before:12,d} {screening.count:9,d} "
            f"{screening.share:6.1%}  {touched} of {clear.shape[0]} touched, "
            f"{int((per_frame > 0.2).sum())} over a fifth"
        )
        if args.pictures is None:
            continue
        args.pictures.mkdir(parents=True, exist_ok=True)
        for t in np.argsort(-per_frame)[: args.frames]:
            day = str(cube["time_s2"].values[t])[:10]
            image = picture(cube["s2"].values[t], clear[t], screening.screened[t])
            name = args.pictures / f"{path.stem}_{day}.png"
            name.write_bytes(png_bytes(enlarge(image, 4)))
            print(f"    {day}: {per_frame[t]:.0%} of {int(clear[t].sum())} clear px -> {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
