"""How many pixels the scene mask calls clear look like clouds it missed, and what screens of
them would take out (benchmarks/candidates/cloud_screen_rule.txt, haze_screen_rule.txt).

    python benchmarks/missed_clouds.py [--pictures DIR] [--frames 3]

Screens of a clear-labelled pixel observation, each needing a clear observation of the same
pixel at most 30 days before and after it:

* ``above-chord``: brighter in every band the cube holds than the linear interpolation between
  those two by more than 0.03 reflectance (the rule's screen);
* ``above-both``: brighter in every band than each of the two by more than 0.03 (a spike, not a
  step: a harvest that stays bright is a step);
* ``blue-spike``: ``above-both``, and the rise (over the brighter neighbour) in blue at least
  that in red and in NIR, as scattering would have it (cubes with blue only);
* ``bluish-rise``: ``above-chord``, and the rise over the chord in blue at least
  :data:`BLUISH` x that in red (cubes with blue only): haze and thin cloud brighten blue about
  as much as red or more; bare soil and straw brighten red more (a harvest's rise in
  hu-alfold 2021-07-15: blue 0.04, red 0.06);
* ``bluish-unshifted``: ``bluish-rise``, and brighter in every band by more than 0.03 than
  the brightest chord value within one pixel: a scene shifted by up to a pixel against its
  neighbours (co-registration) brightens the edges of bright parcels, and cannot do that;
* ``haze-screen``: ``bluish-unshifted`` and ``above-both``: the screen of
  :mod:`core.screening` (``haze_screen_rule.txt``), the app's "Screen haze the scene mask
  missed" (cubes with blue and red only);
* ``low-contrast``: ``above-chord``, and the local contrast (standard deviation over 5 x 5
  pixels) in red (B04; the cube's first band without it) is under 0.8 x that of the chord
  image there: haze flattens the landscape under it, a harvest does not.

Prints, per shared cube, the clear pixel observations and each screen's share of them, with
the acquisitions where it takes out over a fifth. ``--pictures DIR`` writes, for the
``--frames`` acquisitions each screen touches most, the frame as the mask left it (cloudy pixels
dimmed) beside the same frame with the screened pixels in magenta (true colour where the cube
has blue, else B12 / B8A / B05, else B04 / B08 / B04). Pictures of real data, for looking at,
not for the repository. Only ``haze-screen`` is in the product (a Settings option, on by default
in the app since 2026-12-04); its line below each cube names the acquisitions it takes 10 % or
more of.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter, uniform_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings
from core.cube import S2_BANDS, read_cube
from core.model.features import bracketing_indices
from core.render import enlarge, png_bytes, true_colour
from core.screening import missed_haze
from core.timeline import to_days

RISE = 0.03
NEIGHBOUR_DAYS = 30.0
FALSE_COLOURS = ((("B12", 0.35), ("B8A", 0.5), ("B05", 0.2)), (("B04", 0.2), ("B08", 0.5)))
MAGENTA = np.array([255, 0, 255], dtype=np.uint8)
CONTRAST_WINDOW_PX = 5
FLATTER = 0.8
BLUISH = 0.8


def screens(clear_s2: np.ndarray, days: np.ndarray) -> dict[str, np.ndarray]:
    """The screens of the module docstring, (T, H, W) bool each, for reflectance (T, B, H, W)
    NaN where not clear (absent bands all NaN)."""
    bands = np.flatnonzero(np.isfinite(clear_s2).any(axis=(0, 2, 3)))
    values = clear_s2[:, bands]
    clear = np.isfinite(values).any(axis=1)
    prev, nxt = bracketing_indices(clear, exclusive=True)
    n = days.size
    before, after = np.clip(prev, 0, n - 1), np.clip(nxt, 0, n - 1)
    t = days[:, None, None]
    near = (prev >= 0) & (nxt < n) & (t - days[before] <= NEIGHBOUR_DAYS)
    near &= days[after] - t <= NEIGHBOUR_DAYS
    v_before = np.take_along_axis(values, np.broadcast_to(before[:, None], values.shape), 0)
    v_after = np.take_along_axis(values, np.broadcast_to(after[:, None], values.shape), 0)
    span = np.where(near, days[after] - days[before], 1.0)
    w = np.where(near, (t - days[before]) / span, 0.0)[:, None]
    chord = v_before * (1 - w) + v_after * w
    with np.errstate(invalid="ignore"):
        above_chord = (values - chord > RISE).all(axis=1)
        above_both = ((values - v_before > RISE) & (values - v_after > RISE)).all(axis=1)
    found = {"above-chord": clear & near & above_chord, "above-both": clear & near & above_both}
    names = [S2_BANDS[i] for i in bands]
    nir = next((b for b in ("B08", "B8A") if b in names), None)
    if "B02" in names and "B04" in names and nir is not None:
        rise = np.minimum(values - v_before, values - v_after)
        blue, red, infra = (rise[:, names.index(b)] for b in ("B02", "B04", nir))
        with np.errstate(invalid="ignore"):
            found["blue-spike"] = found["above-both"] & (blue >= red) & (blue >= infra)
    if "B02" in names and "B04" in names:
        rise = values - chord
        with np.errstate(invalid="ignore"):
            bluish = rise[:, names.index("B02")] >= BLUISH * rise[:, names.index("B04")]
        found["bluish-rise"] = found["above-chord"] & bluish
        # brighter than the brightest chord pixel within one pixel, in every band: a scene
        # shifted by up to a pixel against its neighbours (co-registration) cannot do that
        brightest = maximum_filter(np.nan_to_num(chord, nan=np.inf), size=(1, 1, 3, 3))
        with np.errstate(invalid="ignore"):
            unshifted = (values - brightest > RISE).all(axis=1)
        found["bluish-unshifted"] = found["bluish-rise"] & unshifted
        found["haze-screen"] = missed_haze(clear_s2, clear, days)  # the product's
    red = names.index("B04") if "B04" in names else 0
    found["low-contrast"] = found["above-chord"] & _flattened(values[:, red], chord[:, red], clear)
    return found


def _local_std(image: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviation over :data:`CONTRAST_WINDOW_PX` squares of ``image`` where ``ok``,
    and the share of ``ok`` pixels in each square."""
    share = uniform_filter(ok.astype(np.float64), CONTRAST_WINDOW_PX)
    mean = uniform_filter(np.where(ok, image, 0.0), CONTRAST_WINDOW_PX)
    square = uniform_filter(np.where(ok, image, 0.0) ** 2, CONTRAST_WINDOW_PX)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = square / share - (mean / share) ** 2
    return np.sqrt(np.clip(np.nan_to_num(variance), 0.0, None)), share


def _flattened(values: np.ndarray, chord: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """(T, H, W): where a frame's local contrast in one band (``values``, (T, H, W)) is under
    :data:`FLATTER` x that of the chord image (``chord``) there."""
    out = np.zeros(clear.shape, dtype=bool)
    for t in range(values.shape[0]):
        ok = clear[t] & np.isfinite(chord[t])
        if not ok.any():
            continue
        seen, share = _local_std(np.nan_to_num(values[t]), ok)
        expected, _ = _local_std(np.nan_to_num(chord[t]), ok)
        out[t] = (seen < FLATTER * expected) & (share > 0.5)
    return out


def picture(s2: np.ndarray, clear: np.ndarray, screened: np.ndarray) -> np.ndarray:
    """(H, 2W, 3) uint8: the frame as the mask left it, and with the screened pixels marked."""
    if np.isfinite(s2[S2_BANDS.index("B02")]).any():
        image = true_colour(s2)
    else:
        chosen = next(c for c in FALSE_COLOURS if np.isfinite(s2[S2_BANDS.index(c[0][0])]).any())
        channels = [np.nan_to_num(s2[S2_BANDS.index(b)]) / top for b, top in chosen]
        channels += channels[:1] * (3 - len(channels))
        image = np.round(np.clip(np.stack(channels, -1), 0, 1) * 255).astype(np.uint8)
    image = np.where(clear[..., None], image, image // 3)
    return np.concatenate([image, np.where(screened[..., None], MAGENTA, image)], axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=3)
    args = parser.parse_args()
    print(f"{'cube':24s} {'clear px-obs':>12s}  screen: share, acquisitions over a fifth")
    for path in sorted(Settings.from_env().cubes_dir.glob("*.nc")):
        cube = read_cube(path)
        clear = cube["valid"].values.astype(bool) & np.isfinite(cube["s2"].values).any(axis=1)
        clear_s2 = np.where(clear[:, None], cube["s2"].values, np.nan).astype(np.float32)
        found = screens(clear_s2, to_days(cube["time_s2"].values))
        said, most = [], []
        for name, screened in found.items():
            per_frame = screened.sum(axis=(1, 2)) / np.maximum(clear.sum(axis=(1, 2)), 1)
            said.append(f"{name} {screened.sum() / clear.sum():5.2%}, {(per_frame > 0.2).sum()}")
            if name == "haze-screen":
                days = [str(d)[:10] for d in cube["time_s2"].values]
                most = [f"{days[t]} {per_frame[t]:.0%}" for t in np.flatnonzero(per_frame >= 0.1)]
            if args.pictures is None:
                continue
            args.pictures.mkdir(parents=True, exist_ok=True)
            for t in np.argsort(-per_frame)[: args.frames]:
                day = str(cube["time_s2"].values[t])[:10]
                image = picture(cube["s2"].values[t], clear[t], screened[t])
                (args.pictures / f"{path.stem}_{name}_{day}.png").write_bytes(
                    png_bytes(enlarge(image, 4))
                )
        print(f"{path.stem:24s} {int(clear.sum()):12,d}  " + "; ".join(said))
        print(f"{'':24s} haze-screen takes 10 % or more of: " + (", ".join(most) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
