"""Model and training configuration; both are saved inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

MIN_CLEAR_ACQUISITIONS = 4
"""Fewest Sentinel-2 acquisitions with clear pixels a field needs before the model is tuned to
it (``adapt_steps``) or its band and blend are fitted on it: each hides some of them and learns
or measures on the rest. With fewer, every episode hides the same one or two frames: on a
cloudy spring with one clear acquisition, the tuned network copied that frame over the season
and the band fitted on it held the truth on 0 of 10 clear days (review 9, 2026-12-05)."""
VIEW_COUNTS = (1, 2, 4, 8)
"""How many views of its input the network's estimate may average (``ReconstructOptions.views``;
:data:`core.model.network.DIHEDRAL_VIEWS`)."""
BAND_TARGET = 0.8
"""The p10-p90 band's coverage the calibration fits (in training, and on a field)."""
MIN_BUCKET_NDVI_FRAMES = 10
"""Hidden frames with NDVI a distance bucket needs before the curve's band gets its own factor
there (:func:`core.model.calibration.fit_field_ndvi_scale_by_distance`)."""
NARROW_BAND_COVERAGE = BAND_TARGET - 0.05
"""A checkpoint whose band held fewer of its calibration values than this at its widest is too
narrow: ``train`` warns, and a Run that uses the checkpoint's band (not one fitted on the
field) says so."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and inference geometry of the network."""

    patch: int = 4
    """Side of the square pixel patch that forms one token."""
    width: int = 64
    """Token width D."""
    depth: int = 4
    """Number of space-time blocks (spatial attention + temporal attention + MLP)."""
    heads: int = 4
    """Attention heads."""
    mlp_ratio: float = 2.0
    """Hidden width of the block MLPs, as a multiple of ``width``."""
    rope_min_period_days: float = 4.0
    """Shortest period of the rotary time encoding."""
    rope_max_period_days: float = 1500.0
    """Longest period of the rotary time encoding."""
    time_buckets: int = 0
    """Log-spaced buckets of |day difference| for a learned temporal attention bias (0: off;
    an additive mask takes CPU attention off its fast kernel, and the rotary encoding already
    carries relative time)."""
    flow_hidden: int = 256
    """Hidden width of the flow (residual velocity) head."""
    flow_layers: int = 3
    """Hidden layers of the flow head."""
    s2_window: int = 40
    """Most S2 acquisitions processed together (longer series are windowed); a pass adds at
    most as many dates asked for with no acquisition (see core.model.inference.plan_passes)."""
    s1_margin_days: float = 12.0
    """S1 frames this many days beyond an S2 window's ends are still given to it."""
    max_s1_frames: int = 64
    """Most S1 frames given to one window (evenly thinned beyond that, to bound the cost)."""
    tile: int = 64
    """Spatial tile side in pixels for inference on large fields."""
    tile_overlap: int = 16
    """Overlap between neighbouring tiles, blended with linear ramps."""
    default_steps: int = 8
    """ODE steps of the flow head when the caller does not choose."""
    smooth_features: bool = True
    """Feed the leave-one-out kernel smoother as extra S2 channels (see core.model.features);
    checkpoints written before this option existed have it off."""
    whittaker_features: bool = False
    """Feed the Whittaker smoother (GCV, the ``whittaker`` baseline) as 10 more S2 channels (see
    core.model.features); off in every checkpoint written before this option existed."""
    scale_head: bool = False
    """Predict a scale b for every value (pixel and band) of the residual of the best estimate
    (Laplace likelihood), and let the flow head generate residual / b: the band then widens
    where the estimate is less sure (long gaps, fields in change) and narrows where it is sure.
    Off by default: the one checkpoint trained with it (m7, README) made the band follow the
    error better but did not improve held-out CRPS enough to ship. Checkpoints written before
    this option existed have it off."""
    day_of_year: bool = True
    """The network reads each date's day of year (sine and cosine channels of every S2 and S1
    token). False withholds it everywhere the network runs (inference, per-field tuning,
    calibration, training): those channels are 0, as in the episodes a training with
    ``TrainConfig.season_dropout`` gives no calendar. Checkpoints written before this option
    existed read it."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        # Older checkpoints: no smoother channels, no scale head.
        data = {"smooth_features": False, "scale_head": False, **data}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TrainConfig:
    """How a checkpoint was (or will be) trained."""

    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 8
    """Episodes per step."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (cosine decay after a short warm-up)."""
    weight_decay: float = 0.01
    crop: int = 32
    """Spatial crop side of a training episode (pixels)."""
    min_frames: int = 10
    """Fewest S2 frames in a training window."""
    max_frames: int = 28
    """Most S2 frames in a training window."""
    ndvi_weight: float = 0.5
    """Weight of the NDVI L1 term next to the reflectance L1 term."""
    field_ndvi_weight: float = 0.0
    """Weight of an L1 term on each hidden frame's mean NDVI over its hidden pixels (what the
    NDVI curve shows: a field mean), next to the per-pixel terms; 0: off."""
    flow_weight: float = 1.0
    """Weight of the flow-matching loss on the residual."""
    max_s1_frames: int = 24
    """Most S1 frames given to a training episode (a random subset when there are more)."""
    band_dropout: float = 0.3
    """Probability of hiding a random subset of an episode's bands (the cubes differ in bands)."""
    s1_dropout: float = 0.3
    """Probability of hiding all S1 frames of an episode (so S2-only inputs work)."""
    spectral_jitter: float = 0.0
    """Standard deviation of the log gain applied to a training episode's S2 reflectance: one
    gain for all bands plus half as much per band, so that a site's brightness and colour are
    not learned as facts about the world (0: off)."""
    unseen_share: float = 0.0
    """Share of episodes whose frames left with no observation at all (whole hidden frames,
    a gap's frames) enter unseen by the other frames, as dates asked for with no acquisition
    do at inference (``s2_unseen`` of :meth:`FieldFlowNet.encode`); 0: never."""
    date_jitter: float = 0.0
    """Probability that a hidden frame with no observation left is moved 1-2 days, off
    Sentinel-2's 5-day cadence, where most dates of a daily curve lie (0: never)."""
    season_dropout: float = 0.0
    """Probability that a training episode's day of year is withheld (the day-of-year channels
    of all its S2 and S1 tokens 0), so that the network learns to read a series without its
    training sites' calendars as well as with them (0: never;
    benchmarks/candidates/season_dropout_rule.txt)."""
    heads_only: bool = False
    """Train only the scale and flow heads (the trunk and the mean head stay as initialised, so
    the best estimate is the initial checkpoint's; the spread is learned on top of it)."""
    ema_decay: float = 0.995
    """Decay of the exponential moving average of the weights that is saved."""
    seed: int = 0
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


CALIBRATED_STEPS = 4
"""Euler steps of a request whose band is fitted on the field and that names no step count.
Calibration refits the width at any step count, and with it 4 steps gave the held-out band of
8 (coverage and CRPS; benchmarks/candidates/calibrated_steps_rule.txt) in two thirds of the
time of an app Run's daily curve."""
