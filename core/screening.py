"""Haze the scene mask missed: clear-labelled pixels brighter than their own series says they
should be, the way haze and thin cloud brighten, not the way a harvest does.

Sen2Cor's scene classification (SCL) labels haze, thin cloud and cloud edges as vegetation or
bare soil often enough to matter: in the shared cubes 0.5-8 % of the pixel observations it
calls clear are brighter in every band than the linear interpolation of the same pixel's other
clear observations by more than 0.03 reflectance (``benchmarks/missed_clouds.py``). But so are
harvested parcels: ripe cereal turned to bright stubble raises every band, and a first screen
built on that test alone took whole parcels out (``benchmarks/candidates/cloud_screen_rule.txt``,
withdrawn). This one (``haze_screen_rule.txt``) treats an observation as cloudy only when the
same pixel has a clear observation at most :data:`NEIGHBOUR_DAYS` days before it and at most
as many after it, and

* in every band the cube holds it is brighter by more than :data:`RISE` than the linear
  interpolation between those two (the chord) *and* than each of the two: a spike, where a
  harvest that stays bright is a step;
* its rise over the chord in blue is at least :data:`BLUISH` x its rise in red: haze and thin
  cloud brighten blue about as much as red or more, soil and straw brighten red more;
* in every band it is brighter by more than :data:`RISE` than the brightest chord value
  within one pixel: a scene shifted by up to a pixel against its neighbours (co-registration)
  brightens the edges of bright parcels, and cannot do that.

A cube without blue (B02) or red (B04) is not screened: without them haze cannot be told from
soil. One pass, no dilation; the thresholds were fixed by the rule, not fitted on any cube.

Asked for (:func:`screen_cube`'s ``nearby``; off by default), the screen also takes the clear
pixels it left around the haze it found (:func:`haze_nearby`; rule
``benchmarks/candidates/haze_nearby_rule.txt``): where it took at least :data:`NEARBY_SHARE` of
an acquisition's clear pixels within :data:`NEARBY_PX` pixels of one, that one is treated as
cloudy too. The spike test asks a rise of :data:`RISE` in every band, and thinner haze around
the thick part passes it: in the shared cubes, the clear pixels left in a 32 px window where
the screen took 2 % or more read bluer than their own chord by a median 0.035-0.06, against
0.0009 or less where it took less (``benchmarks/hazy_scene_probe.txt``; review 30 saw such a
day dip the field's curve). It failed its rule: it lowered the model's reflectance error on
be-flanders-a by 2-3 %, but raised pt-santarem's long gap by 1.0 %, and the curve's NDVI erred
up to 17 % more (thin haze bends blue more than NDVI, so taking it out loses more of the curve
than it cleans).

A second screen, asked for on its own (:func:`screen_cube`'s ``scenes``), takes out whole
acquisitions: where under :data:`SPARSE_SCENE_SHARE` of the pixels an acquisition images in the
cube are clear (after the haze screen, when that is on), every one of its clear-labelled pixels
is treated as cloudy. In such mostly cloudy scenes the pixels the mask calls clear read a median
0.11-0.25 NDVI below the same pixels on the nearest clear day (cloud edges, thin cloud and
shadow; ``benchmarks/partly_clear_bias.txt``), which the haze screen does not change
(``benchmarks/candidates/sparse_scene_rule.txt``).

A third screen is always on, whatever is asked (:func:`red_floor`): a clear-labelled pixel
whose red reflectance sits at the floor, :data:`RED_FLOOR` or below, is no observation of the
surface. The atmospheric correction took out more than the signal there (aerosol
over-estimated, as in winter haze), and red at the floor sends NDVI to 1 whatever the near
infrared: be-flanders-a's 2017-12-27 scene, labelled vegetation, reads NDVI 0.999 on 793 of its
1,328 clear pixels, where the same pixels' nearest clear days read 0.91. Where
:data:`FLOOR_SCENE_SHARE` of an acquisition's clear pixels have it, the whole scene was
over-corrected (that scene's other 535 clear pixels read 0.97 against 0.89) and all its clear
pixels are taken out. In the shared cubes that scene is the only one: of the other 157
acquisitions with red and clear pixels, none has more than 0.04 % of them at the floor (four
single pixels, each NDVI 0.998-0.999 against 0.47-0.89 on its nearest clear days;
``benchmarks/red_floor.txt``). A cube without red is not screened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.ndimage import maximum_filter, uniform_filter

from core.cube import S2_BANDS
from core.model.features import bracketing_indices
from core.timeline import to_days

RISE = 0.03
"""Reflectance by which an observation must exceed its neighbours and their chord, every band."""
NEIGHBOUR_DAYS = 30.0
"""The farthest a clear observation of the same pixel may lie on either side."""
BLUISH = 0.8
"""The least rise in blue, as a share of the rise in red, of a screened observation."""
NEARBY_PX = 16
"""How far (pixels, either way) :func:`haze_nearby` looks around a clear pixel: the 32 px
windows of ``hazy_scene_probe.py``, about a 10 ha field (fixed by its rule, not tuned)."""
NEARBY_SHARE = 0.02
"""The share of an acquisition's clear pixels around a clear pixel that the haze screen must
have taken for that pixel to be taken too (the probe's bucket edge, fixed by its rule)."""
SPARSE_SCENE_SHARE = 0.25
"""An acquisition with a smaller share of its imaged pixels clear is dropped whole by the scene
screen (the edge of partly_clear_bias.txt's bucket above which the median bias is under 0.05
NDVI; fixed by sparse_scene_rule.txt, not searched)."""
SHIFT_PX = 1
"""How far (pixels) a scene may be shifted against its neighbours without being screened."""
RED_FLOOR = 0.0001
"""Red reflectance at or below which a clear-labelled pixel is taken out (:func:`red_floor`):
the least an L2A product of processing baseline before 04.00 stores (1 DN; 0 is no data).
Later products store what the correction gives, negative values included, which this covers
too."""
FLOOR_TOLERANCE = 0.00005
"""Half a DN: the cube stores reflectance as scaled integers, so 1 DN reads back within this."""
FLOOR_SCENE_SHARE = 0.1
"""An acquisition with at least this share of its clear pixels' red at the floor was
over-corrected as a whole: all its clear pixels are taken out (the one such scene in the shared
cubes has 60 %, the next 0.04 %; fixed by that gap, not fitted)."""
BLUE, RED = S2_BANDS.index("B02"), S2_BANDS.index("B04")
SCREENED_ATTR = "haze_screened"
"""A screened cube's attribute: what the screen took out, in words (:meth:`Screening.summary`).
A cube that has it is not screened again (a second pass would find new spikes among the
observations the first one left, so a Run's later reconstructions would differ from its
frames)."""


@dataclass(frozen=True)
class Screening:
    """What the screen took out of a cube's clear pixels."""

    screened: np.ndarray
    """(T, H, W) bool: clear-labelled pixel observations screened out as missed haze."""
    clear_before: int
    """Clear pixel observations before the screen."""
    applicable: bool = True
    """False when the cube lacks blue or red, so no haze could be screened."""
    earlier: str = ""
    """The summary of the screening the cube had already had (:data:`SCREENED_ATTR`), if any."""
    haze: bool = True
    """Whether haze was screened (:func:`missed_haze`)."""
    dropped: np.ndarray | None = None
    """(T, H, W) bool: the clear pixel observations of mostly cloudy acquisitions dropped by
    the scene screen (:func:`sparse_scenes`); None: that screen was not asked for."""
    floored: np.ndarray | None = None
    """(T, H, W) bool: clear-labelled observations with red at the floor, or in a scene
    over-corrected as a whole (:func:`red_floor`); None: not screened."""
    nearby: np.ndarray | None = None
    """(T, H, W) bool: the clear observations left around screened haze and taken with it
    (:func:`haze_nearby`); None: not asked for."""

    @property
    def count(self) -> int:
        """Clear pixel observations taken out by either screen."""
        return (
            int(self.screened.sum()) + self.nearby_count + self.dropped_count + self.floored_count
        )

    @property
    def haze_count(self) -> int:
        return int(self.screened.sum())

    @property
    def nearby_count(self) -> int:
        return 0 if self.nearby is None else int(self.nearby.sum())

    @property
    def dropped_count(self) -> int:
        return 0 if self.dropped is None else int(self.dropped.sum())

    @property
    def floored_count(self) -> int:
        return 0 if self.floored is None else int(self.floored.sum())

    @property
    def share(self) -> float:
        """Share of the clear pixel observations screened out (0 with none clear)."""
        return self.count / self.clear_before if self.clear_before else 0.0

    def summary(self) -> str:
        """A sentence or two for a Run's notes."""
        if self.earlier:
            return self.earlier
        said = [self._haze_summary()] if self.haze else []
        if self.dropped is not None:
            said.append(self._scenes_summary())
        if self.floored_count:  # always on: said only when it found any
            said.append(self._floor_summary())
        return " ".join(said)

    def headline(self) -> str:
        """What the screens did, in one plain sentence for the top of a Run's notes (review
        30: the summary's tests, thresholds and bands came first of all a Run said); the
        summary says how."""
        if self.earlier or not self.count:
            return self.summary()
        return (
            f"{self.count:,} pixel observations the scene mask called clear ({self.share:.1%} "
            "of them) were taken for haze or cloud it missed, or for no view of the ground, "
            "and are reconstructed, not kept as observed (how: in the details below)."
        )

    def _floor_summary(self) -> str:
        assert self.floored is not None
        frames = int(self.floored.any(axis=(1, 2)).sum())
        return (
            f"Took out {self.floored_count:,} pixel observations the scene mask called clear "
            f"on {frames} acquisition(s) whose red reflectance sits at the floor ({RED_FLOOR} "
            "or below), or in a scene where a tenth of the clear pixels' red does: the "
            "atmospheric correction took out more than the signal, which sends NDVI to 1; "
            "they are treated as cloudy."
        )

    def _haze_summary(self) -> str:
        if not self.applicable:
            return (
                "Haze the scene mask missed was not screened: the imagery lacks the blue or "
                "red band the screen compares."
            )
        if not self.haze_count:
            return "Screened for haze the scene mask missed: none found."
        frames = int(self.screened.any(axis=(1, 2)).sum())
        share = self.haze_count / self.clear_before
        said = (
            f"Screened out {self.haze_count:,} pixel observations the scene mask called clear "
            f"({share:.1%} of them, on {frames} acquisition(s)): brighter than the pixel's "
            f"clear observations on both sides by over {RISE} reflectance in every band, blue "
            "rising with red, as haze and thin cloud are; they are treated as cloudy: "
            "reconstructed, not kept as observed."
        )
        if self.nearby_count:
            said += (
                f" So are the {self.nearby_count:,} clear ones around them (within {NEARBY_PX} "
                f"pixels of where the screen took {NEARBY_SHARE:.0%} or more of an "
                "acquisition's clear pixels): thinner haze, too faint for that test, but bluer "
                "than their own series."
            )
        return said

    def _scenes_summary(self) -> str:
        assert self.dropped is not None
        frames = int(self.dropped.any(axis=(1, 2)).sum())
        if not frames:
            return (
                f"No acquisition was under {SPARSE_SCENE_SHARE:.0%} clear with clear pixels, "
                "so none was dropped as mostly cloudy."
            )
        share = self.dropped_count / self.clear_before
        return (
            f"Dropped the {self.dropped_count:,} clear-labelled pixel observations "
            f"({share:.1%} of them) of {frames} mostly cloudy acquisition(s), under "
            f"{SPARSE_SCENE_SHARE:.0%} clear: in such scenes they read well below the same "
            "pixels on clear days (cloud edges, thin cloud, shadow); they are treated as "
            "cloudy."
        )


def can_screen(s2: np.ndarray, clear: np.ndarray) -> bool:
    """Whether reflectance (T, B, H, W) in :data:`S2_BANDS` order has blue and red in some
    ``clear`` (T, H, W) pixel."""
    return all(_band_seen(s2, clear, band) for band in (BLUE, RED))


def _band_seen(s2: np.ndarray, clear: np.ndarray, band: int) -> bool:
    return any(bool((np.isfinite(s2[t, band]) & clear[t]).any()) for t in range(s2.shape[0]))


def clear_observations(s2: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(T, H, W): where the scene mask says clear and some band has a value (frame by frame:
    no (T, B, H, W) temporary)."""
    clear = np.asarray(valid, dtype=bool).copy()
    for t in range(s2.shape[0]):
        clear[t] &= np.isfinite(s2[t]).any(axis=0)
    return clear


def missed_haze(s2: np.ndarray, valid: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The screen of the module docstring, one frame at a time: no copy of the cube, only one
    frame's bands at a time (a 512 px field-season's cube is over a gigabyte).

    Args:
        s2: reflectance (T, B, H, W) in :data:`S2_BANDS` order (NaN: no data, absent band).
        valid: (T, H, W) the scene mask's clear pixels.
        days: (T,) acquisition times in days (sorted).

    Returns:
        (T, H, W) bool: clear observations to treat as cloudy (none without blue or red).
    """
    n = s2.shape[0]
    clear = clear_observations(s2, valid)
    out = np.zeros(clear.shape, dtype=bool)
    if n < 3 or not can_screen(s2, clear):
        return out
    bands = np.array([b for b in range(s2.shape[1]) if _band_seen(s2, clear, b)])
    blue, red = int(np.flatnonzero(bands == BLUE)[0]), int(np.flatnonzero(bands == RED)[0])
    prev, nxt = bracketing_indices(clear, exclusive=True)
    rows, cols = np.indices(clear.shape[1:])
    size = 2 * SHIFT_PX + 1
    nan = np.float32(np.nan)

    def observed(frames: np.ndarray) -> np.ndarray:
        """(B, H, W): each pixel's bands in its own frame of ``frames`` (H, W); NaN where
        that observation is not clear."""
        values = s2[frames, :, rows, cols][..., bands].transpose(2, 0, 1)
        return np.where(clear[frames, rows, cols], values, nan)

    for t in range(n):
        if not clear[t].any():
            continue
        before, after = np.clip(prev[t], 0, n - 1), np.clip(nxt[t], 0, n - 1)
        near = (prev[t] >= 0) & (nxt[t] < n)  # every pixel's chord counts for the shift test
        near &= (days[t] - days[before] <= NEIGHBOUR_DAYS) & (
            days[after] - days[t] <= NEIGHBOUR_DAYS
        )
        if not (near & clear[t]).any():
            continue
        value = np.where(clear[t], s2[t][bands], nan)  # (B, H, W)
        v_before, v_after = observed(before), observed(after)
        span = np.maximum(days[after] - days[before], 1e-9)
        weight = np.where(near, (days[t] - days[before]) / span, 0.0)
        chord = v_before * (1 - weight) + v_after * weight
        brightest = maximum_filter(np.nan_to_num(chord, nan=np.inf), size=(1, size, size))
        rise = value - chord
        with np.errstate(invalid="ignore"):  # NaN compares False: such a pixel is kept
            spike = ((rise > RISE) & (value - v_before > RISE) & (value - v_after > RISE)).all(0)
            bluish = rise[blue] >= BLUISH * rise[red]
            unshifted = (value - brightest > RISE).all(axis=0)
        out[t] = clear[t] & near & spike & bluish & unshifted
    return out


def haze_nearby(screened: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """The clear observations left around screened haze (module docstring), one frame at a
    time.

    Args:
        screened: (T, H, W) what :func:`missed_haze` took.
        clear: (T, H, W) the clear observations it judged (``screened`` among them).

    Returns:
        (T, H, W) bool: the clear observations not in ``screened`` for which, in the square of
        ``2 * NEARBY_PX + 1`` pixels centred on them (cut at the edge), ``screened`` holds at
        least :data:`NEARBY_SHARE` of the acquisition's clear observations.
    """
    out = np.zeros(clear.shape, dtype=bool)
    size = 2 * NEARBY_PX + 1
    for t in range(clear.shape[0]):
        if not screened[t].any():
            continue
        # Window sums as means over the same square: their ratio is the share, the edge's
        # zeros cancel. float64: a sum of a thousand 0/1 values stays exact enough.
        taken = uniform_filter(screened[t].astype(np.float64), size=size, mode="constant")
        seen = uniform_filter(clear[t].astype(np.float64), size=size, mode="constant")
        # A small tolerance: the filter's running sums leave ~1e-16 of rounding.
        out[t] = clear[t] & ~screened[t] & (taken >= NEARBY_SHARE * seen - 1e-12)
    return out


def red_floor(s2: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """The floor screen of the module docstring, one frame at a time.

    Args:
        s2: reflectance (T, B, H, W) in :data:`S2_BANDS` order (NaN: no data, absent band).
        clear: (T, H, W) the clear observations to judge.

    Returns:
        (T, H, W) bool: clear observations whose red is at or below :data:`RED_FLOOR`, and
        every clear observation of an acquisition where at least :data:`FLOOR_SCENE_SHARE` of
        them are (none where red is absent: NaN is never at the floor).
    """
    out = np.zeros(clear.shape, dtype=bool)
    for t in range(s2.shape[0]):
        seen = int(clear[t].sum())
        if not seen:
            continue
        with np.errstate(invalid="ignore"):
            floor = clear[t] & (s2[t, RED] <= RED_FLOOR + FLOOR_TOLERANCE)
        found = int(floor.sum())
        out[t] = clear[t] if found >= FLOOR_SCENE_SHARE * seen else floor
    return out


def sparse_scenes(s2: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """The scene screen of the module docstring.

    Args:
        s2: reflectance (T, B, H, W) (NaN: no data, absent band).
        clear: (T, H, W) the clear observations to judge (after the haze screen, if any).

    Returns:
        (T, H, W) bool: the clear observations of every acquisition under
        :data:`SPARSE_SCENE_SHARE` clear, over the pixels it images.
    """
    out = np.zeros(clear.shape, dtype=bool)
    for t in range(s2.shape[0]):
        imaged = int(np.isfinite(s2[t]).any(axis=0).sum())
        seen = int(clear[t].sum())
        if seen and seen < SPARSE_SCENE_SHARE * imaged:
            out[t] = clear[t]
    return out


def screen_cube(
    cube: xr.Dataset, *, haze: bool = True, scenes: bool = False, nearby: bool = False
) -> tuple[xr.Dataset, Screening]:
    """``cube`` with its clear-labelled pixels whose red sits at the floor (:func:`red_floor`,
    always), its missed haze (:func:`missed_haze`, ``haze``) and the clear pixels left around
    it (:func:`haze_nearby`, ``haze`` and ``nearby``) and the clear pixels of its
    mostly cloudy acquisitions (:func:`sparse_scenes`, ``scenes``) marked not valid, and what
    was screened. The reflectance is left as it is: ``valid`` is what every reader trusts. A
    cube screened before (:data:`SCREENED_ATTR`) is returned as it is, with that screening's
    words."""
    valid = cube["valid"].values.astype(bool)
    if SCREENED_ATTR in cube.attrs:
        nothing = np.zeros(valid.shape, dtype=bool)
        return cube, Screening(nothing, int(valid.sum()), earlier=str(cube.attrs[SCREENED_ATTR]))
    s2 = cube["s2"].values
    clear = clear_observations(s2, valid)
    floored = red_floor(s2, clear)
    kept = valid & ~floored  # the haze screen's neighbours are real observations
    screened = (
        missed_haze(s2, kept, to_days(cube["time_s2"].values))
        if haze
        else np.zeros(valid.shape, dtype=bool)
    )
    around = haze_nearby(screened, clear & ~floored) if haze and nearby else None
    out_of = screened | floored if around is None else screened | floored | around
    dropped = sparse_scenes(s2, clear & ~out_of) if scenes else None
    screening = Screening(
        screened,
        int(clear.sum()),
        applicable=can_screen(s2, clear),
        haze=haze,
        dropped=dropped,
        floored=floored,
        nearby=around,
    )
    out = cube.copy()
    if screening.count:
        out_of = out_of if dropped is None else out_of | dropped
        out["valid"] = cube["valid"].copy(data=(valid & ~out_of).astype(cube["valid"].dtype))
    out.attrs[SCREENED_ATTR] = screening.summary()
    return out, screening
