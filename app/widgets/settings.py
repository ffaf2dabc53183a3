"""The settings panel: reconstruction method and its options, the scene cloud limit, and the
data sources (read-only, from the environment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app import services
from app.state import Key, page_state
from app.text import plain
from core.config import Settings, checkpoint_option, is_shipped_checkpoint
from core.errors import FieldFlowError
from core.fetch import PERIOD_MARGIN_DAYS
from core.model.catalog import ModelChoice, remove_model
from core.reconstruct import MIN_CALIBRATION_SAMPLES, ReconstructOptions, default_method
from core.screening import BLUISH, NEIGHBOUR_DAYS, RISE, SPARSE_SCENE_SHARE
from core.season import default_adapt_steps, method_choices

METHOD_HELP = {
    "model": "The trained space-time model (Sentinel-2 + Sentinel-1), with an uncertainty band "
    "from its samples.",
    "linear": "Linear interpolation in time between clear observations, per pixel.",
    "whittaker": "Whittaker smoother through the clear observations, per pixel.",
}
DEVICES = ["auto", "cpu", "cuda"]
DEFAULT_SAMPLES = 8
SCREEN_HAZE_BY_DEFAULT = True
"""Whether a Run screens out haze the scene mask missed unless the user says otherwise
(benchmarks/candidates/haze_screen_rule.txt)."""
SCREEN_SCENES_BY_DEFAULT = False
"""Whether a Run drops the clear pixels of mostly cloudy acquisitions unless the user says
otherwise (benchmarks/candidates/sparse_scene_rule.txt)."""


@dataclass(frozen=True)
class RunSettings:
    """What the settings panel asks for."""

    method: str
    options: ReconstructOptions
    max_cloud_cover: float | None
    """Scene cloud limit in percent; None: every scene."""
    model: Path
    """The model chosen under "Model" (whatever the method): the one a region's model is
    fine-tuned from."""


def settings_panel(settings: Settings, *, offline: bool = False) -> RunSettings:
    """Draw the panel (in an expander) and return the chosen settings (``offline``: the field
    is the offline demo cube's, whose scenes no cloud limit skips)."""
    with st.expander("Settings", expanded=False):
        models = services.model_choices(settings)
        usable = [m for m in models if m.usable]
        first = usable[0].path if usable else settings.checkpoint
        methods, default = method_choices(first), default_method(first)
        if (
            str(Key.METHOD) not in st.session_state
            or st.session_state[str(Key.METHOD)] not in methods
        ):
            st.session_state[str(Key.METHOD)] = default
        method = st.selectbox(
            "Reconstruction method",
            methods,
            key=str(Key.METHOD),
            help="; ".join(f"{m}: {METHOD_HELP.get(m, m)}" for m in methods),
        )
        is_model = method == "model"
        checkpoint = model_picker(settings, models, enabled=is_model)
        samples = st.number_input(
            "Samples",
            min_value=1,
            max_value=64,
            value=DEFAULT_SAMPLES,
            key=str(Key.SAMPLES),
            disabled=not is_model,
            help="Samples drawn by the model; more than 1 gives the p10-p90 band and the "
            "uncertainty map. Below 8 the NDVI band and map are rough, and fitting the band to "
            f"the field needs at least {MIN_CALIBRATION_SAMPLES} (with fewer, a Run with the fit "
            f"on draws {MIN_CALIBRATION_SAMPLES}: held out, 4 samples gave 4 x the CRPS of 8). "
            "The baselines are deterministic (one sample).",
        )
        steps = st.number_input(
            "Steps (0 = model default)",
            min_value=0,
            max_value=200,
            value=0,
            key=str(Key.STEPS),
            disabled=not is_model,
            help="ODE solver steps per sample: fewer is faster, more is smoother. The "
            "model's default is 8, or 4 when the band is fitted to the field (the width is "
            "refitted at any step count, and on the held-out cubes 4 gave the band of 8 in "
            "two thirds of the time).",
        )
        adapt = st.number_input(
            "Tune to this field (steps, 0 = off)",
            min_value=0,
            max_value=500,
            value=default_adapt_steps(checkpoint),
            key=str(Key.ADAPT),
            disabled=not is_model,
            help="Before reconstructing, train a copy of the model for this many steps on the "
            "field's own clear pixels, once per Run. About 30 s on 2 CPU cores whatever the "
            "field's size (on a GPU it should take a second or two); 0 skips it. On ten "
            "draws of the held-out test, 50 steps lowered the error on missing frames, cloud "
            "removal and long gaps from 0.845 / 0.850 / 0.920 to 0.832 / 0.837 / 0.899 x the "
            "better baseline, better on 8, 8 and 6 draws of 10 (README, 'per-field tuning'); "
            "100 steps: 0.828 / 0.829 / 0.895, about 25 s more on 2 CPU cores. "
            "Needs at least 4 Sentinel-2 acquisitions with clear pixels in the period and the "
            f"{PERIOD_MARGIN_DAYS} days fetched either side; with fewer the Run goes on "
            "untuned and says so.",
        )
        calibrate_field = st.checkbox(
            "Fit the uncertainty band to this field",
            value=True,
            key=str(Key.CALIBRATE),
            disabled=not is_model,
            help="Before reconstructing, hide the field's own clear pixels in turn and measure "
            "how far off the model is. The reflectance band (p10-p90 in the downloads) is then "
            "the estimate +- the error that 80 % of those pixels stayed within, per band and "
            "distance to the nearest clear observation; the samples' spread (the NDVI band and "
            "map) is widened or narrowed to hold 80 % of them, and the NDVI curve's band (a "
            "field mean) is fitted on the hidden frames' means, by their days from clear "
            "data. "
            "Otherwise the widths fitted on the training sites are used. Adds a few seconds "
            "per Run on a CPU, whatever the field size, and lets the model sample with 4 steps "
            "instead of 8 (README, 'uncertainty band').",
        )
        blend_field = st.checkbox(
            "Lean on the Whittaker smoother where it does better here",
            value=True,
            key=str(Key.BLEND),
            disabled=not is_model,
            help="Before reconstructing, hide the field's own clear pixels in turn and measure, "
            "per band and distance to the nearest clear observation, how far to move the "
            "model's estimate toward the Whittaker smoother; then do so (README, 'field "
            "blend'): on the held-out cubes this lowered the error of every task. Adds a few "
            "seconds per Run.",
        )
        screen = st.checkbox(
            "Screen haze the scene mask missed",
            value=SCREEN_HAZE_BY_DEFAULT,
            key=str(Key.SCREEN),
            help="Treat as cloudy the pixels Sentinel-2's scene classification calls clear "
            "but that are brighter in every band, by over "
            f"{RISE} reflectance, than the same pixel's clear observations within "
            f"{NEIGHBOUR_DAYS:.0f} days on both sides, with blue rising at least "
            f"{BLUISH:g} x as much as red: haze and thin cloud. A harvest that stays bright, "
            "soil or straw (red rises more than blue) and parcel edges shifted by a pixel are "
            "left alone. They are then reconstructed instead of shown as observed, and the "
            "frames as acquired show them as cloud. Every method; imagery without blue and "
            "red is not screened. On by default: on the one shared site with haze to find it "
            "lowered the model's error in two tasks of three (README, evaluation protocol).",
        )
        screen_scenes = st.checkbox(
            f"Drop mostly cloudy scenes (under {SPARSE_SCENE_SHARE:.0%} clear)",
            value=SCREEN_SCENES_BY_DEFAULT,
            key=str(Key.SCREEN_SCENES),
            help="Where under a quarter of the pixels an acquisition images here are clear, "
            "treat all of them as cloudy: in such scenes the pixels the scene classification "
            "calls clear read a median 0.11-0.25 NDVI below the same pixels on the nearest "
            "clear day (cloud edges, thin cloud, shadow), and every method took them as "
            "observations. Every method; the timeline then shows those acquisitions as "
            "cloudy (README, evaluation protocol).",
        )
        device = st.selectbox("Device", DEVICES, key=str(Key.DEVICE), disabled=not is_model)
        if is_model and device == "cuda" and not services.gpu_here():
            st.caption(
                "This server has no GPU that the model can use (and no Dask cluster is set "
                "up): a Run on cuda would stop at once. Choose auto, which uses a GPU where "
                "there is one and the CPU otherwise."
            )
        cloud = st.slider(
            "Maximum scene cloud cover (%)",
            min_value=0,
            max_value=100,
            value=100,
            step=5,
            key=str(Key.MAX_CLOUD),
            help="Skip scenes whose whole-tile cloud cover is above this. 100 keeps every "
            "scene: cloudy scenes often still see the field.",
            disabled=offline,
        )
        if offline:
            st.caption(
                "The offline demo cube keeps every scene: it holds no scene's cloud cover, so "
                "the limit applies only to scenes fetched from the STAC API."
            )
        st.text_input("STAC API (STAC_API_URL)", value=settings.stac_api_url, disabled=True)
        st.caption(
            f"Cube cache: `{settings.cache_dir}` · shared data: `{settings.data_dir}` · "
            f"largest field: {settings.max_area_ha:,.0f} ha"
        )
    samples = int(samples)
    if is_model and calibrate_field and 1 < samples < MIN_CALIBRATION_SAMPLES:
        st.caption(
            f"Fitting the band to the field needs {MIN_CALIBRATION_SAMPLES} samples or more: "
            f"this Run draws {MIN_CALIBRATION_SAMPLES}, not {samples} (or choose 1 sample, or "
            "leave the band unfitted)."
        )
        samples = MIN_CALIBRATION_SAMPLES
    if is_model:  # review 23: a number typed past a box's bounds stays in the box, outlined
        # red, while the page keeps the old one; this says which the Run takes
        st.caption(
            f"A Run takes: {model_settings_text(samples, int(steps) or None, int(adapt))} "
            "(a number outlined red is outside its box's range and not taken)."
        )
    options = ReconstructOptions(
        samples=samples if is_model else 1,
        steps=int(steps) or None if is_model else None,
        device=str(device) if is_model else "auto",
        adapt_steps=int(adapt) if is_model else 0,
        calibrate_field=bool(calibrate_field) and is_model,
        blend_field=bool(blend_field) and is_model,
        checkpoint=checkpoint_option(checkpoint) if is_model else None,
        screen_haze=bool(screen),
        screen_scenes=bool(screen_scenes),
    )
    return RunSettings(
        method=str(method),
        options=options,
        max_cloud_cover=None if int(cloud) >= 100 else float(cloud),
        model=checkpoint,
    )


def model_picker(settings: Settings, models: list[ModelChoice], *, enabled: bool) -> Path:
    """The "Model" choice: the shipped checkpoint, ``FIELDFLOW_CHECKPOINT``'s and the models
    folder's, each described by its training record; returns the chosen checkpoint's path
    (``settings.checkpoint`` when none can be used: a Run then says why)."""
    usable = {str(m.path): m for m in models if m.usable}
    if not usable:
        if models:
            st.caption(f"The model cannot be used: {models[0].problem}")
            _unusable(models[1:], settings, enabled=enabled)
        else:
            st.caption(f"The model is not available (no checkpoint at {settings.checkpoint}).")
        return settings.checkpoint
    default = str(settings.checkpoint) if str(settings.checkpoint) in usable else next(iter(usable))
    if st.session_state.get(str(Key.MODEL)) not in usable:
        st.session_state[str(Key.MODEL)] = default
    folder = settings.models_dir
    chosen = st.selectbox(
        "Model",
        list(usable),
        format_func=lambda path: usable[path].label,
        key=str(Key.MODEL),
        disabled=not enabled or len(usable) < 2,
        help=f"The checkpoints on offer: the shipped model, FIELDFLOW_CHECKPOINT's, and every "
        f"*.pt in the models folder {folder} (FIELDFLOW_MODELS_DIR), read anew at each page "
        "change. Make one for your region by fine-tuning the shipped model on a few fields "
        "fetched there: python -m core train --init assets/model.pt --data MY_CUBES --out "
        f"{folder}/NAME.pt (README, 'Your own model for your region'). A Run names the model "
        "that made it.",
    )
    choice = usable[str(chosen)]
    if is_shipped_checkpoint(choice.path):
        st.caption(plain(choice.summary()))
    else:
        st.caption(f"Model: your checkpoint `{choice.path}`. {plain(choice.summary())}")
    for warning in choice.warnings():
        st.warning(warning)
    removable = enabled and choice.origin == "folder" and _removable_here(choice, settings)
    if enabled and choice.origin == "folder" and not removable:
        st.caption(OWN_MODELS_ONLY)
    ask = f"Remove '{choice.label}' from the models folder"
    if removable and st.checkbox(ask, key=str(Key.REMOVE_MODEL)):
        st.button(
            "Remove it for good",
            key=f"{Key.REMOVE_MODEL}_confirm",
            on_click=_remove,
            args=(choice, settings),
            help="Deletes its checkpoint and record from the folder. A Run already using it "
            "finishes with the copy it has loaded (or stops and says so).",
        )
    _unusable(models, settings, enabled=enabled)
    return choice.path


def _unusable(models: list[ModelChoice], settings: Settings, *, enabled: bool) -> None:
    """Each checkpoint that cannot be used, with why; one of the models folder's (damaged, or
    not a checkpoint) can be removed from here, as a usable one can."""
    for number, other in enumerate(m for m in models if not m.usable):
        st.caption(f"Not offered: `{other.path.name}`. {other.problem}")
        if enabled and other.origin == "folder" and _removable_here(other, settings):
            st.button(
                f"Remove {other.path.name}",
                key=f"{Key.REMOVE_MODEL}_unusable_{number}",
                on_click=_remove,
                args=(other, settings),
                help="Deletes the file (and a JSON record beside it) from the models folder.",
            )


OWN_MODELS_ONLY = (
    "On this server a page removes only the models it made (FIELDFLOW_MODEL_REMOVAL=own): "
    "whoever runs the server can remove this one from the models folder."
)


def _removable_here(choice: ModelChoice, settings: Settings) -> bool:
    """Whether this page may remove ``choice``, a model of the models folder: any, or
    (``FIELDFLOW_MODEL_REMOVAL=own``) only one this session made."""
    return settings.model_removal == "any" or str(choice.path) in page_state().made_models


def _remove(choice: ModelChoice, settings: Settings) -> None:
    """The confirmed removal of a folder model (a button's callback: the page then redraws
    with the default model chosen)."""
    if not _removable_here(choice, settings):  # the page is drawn so; checked again here
        page_state().say("error", OWN_MODELS_ONLY)
        return
    try:
        remove_model(choice.path, settings)
    except FieldFlowError as exc:
        page_state().say("error", str(exc))
        return
    st.session_state.pop(str(Key.REMOVE_MODEL), None)
    if st.session_state.get(str(Key.MODEL)) == str(choice.path):
        st.session_state.pop(str(Key.MODEL), None)
    page_state().say("info", f"Removed the model '{choice.label}' ({choice.path}).")


def model_settings_text(samples: int, steps: int | None, adapt_steps: int) -> str:
    """The model's sampling and tuning in words: "8 samples, the default ODE steps, tuned to
    the field in 50 steps"."""
    drawn = f"{samples} sample{'s' if samples != 1 else ''}"
    ode = "the default ODE steps" if steps is None else f"{steps} ODE steps"
    tuned = f"tuned to the field in {adapt_steps} steps" if adapt_steps else "not tuned"
    return f"{drawn}, {ode}, {tuned}"
