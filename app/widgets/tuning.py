"""A model for the region, made from the page: the model chosen in the settings fine-tuned on
the field's cube (core.model.tuning) and saved into the models folder, where the settings'
"Model" offers it for the region's other fields."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import services
from app.state import Key, PageState, forget_widget, page_state, widget_value
from app.widgets.settings import RunSettings
from app.widgets.status import say_failure
from core.config import Settings, is_shipped_checkpoint
from core.distributed import scheduler_address
from core.errors import FieldFlowError
from core.fetch import PERIOD_MARGIN_DAYS
from core.model.tuning import MAX_STEPS, REGION_STEPS, RegionTuning, model_target, suggested_name
from core.progress import duration_text
from core.season import SeasonResult

MEASURED_S2_DATES = 71
"""Sentinel-2 acquisitions of the demo field's Run on which the button's gain was measured
(benchmarks/candidates/region_button_rule.txt)."""
WATCH_EVERY_S = 1.0
"""How often a fine-tuning's progress is redrawn (a number here: Streamlit's "magic" would
draw a bare string)."""


def tuning_panel(state: PageState, settings: Settings, chosen: RunSettings) -> None:
    """The "Make a model for this region" section under a result (or while a fine-tuning this
    session started runs)."""
    result = state.result
    if result is None and state.tuning is None:
        return
    with st.expander("Make a model for this region", expanded=state.tuning is not None):
        if state.tuning is not None:
            if st.button("Stop the training", key=str(Key.TUNE_STOP)):
                services.stop_tuning(state.tuning)
                state.tuning = None
                state.say("info", "The training was stopped; nothing was saved.")
                st.rerun()
            follow_tuning(state.tuning)
        elif result is not None:
            _offer(state, result, settings, chosen.model)


def _offer(state: PageState, result: SeasonResult, settings: Settings, base: Path) -> None:
    """What a fine-tuning would do, its name and steps, and the button that starts it."""
    which = "the shipped model" if is_shipped_checkpoint(base) else f"`{base.stem}`"
    address = scheduler_address()
    where = (
        "600 steps take 5-6 minutes on 2 CPU cores with nothing else running, about 12 with "
        "other work; Runs take the cores first (a demo Run took 42 s instead of 36 s "
        "meanwhile)"
        if address is None
        else f"It trains on a worker of the Dask cluster at {address}, a GPU worker where one "
        "is offered (Runs' model work waits for that GPU meanwhile); 600 steps take 5-6 "
        "minutes on 2 CPU cores"
    )
    st.markdown(
        f"Fine-tune the model chosen in *Settings → Model* ({which}) on this field's "
        f"cube ({result.frames_loaded.get('s2', 0)} Sentinel-2 and "
        f"{result.frames_loaded.get('s1', 0)} Sentinel-1 acquisitions, the period's and the "
        f"{PERIOD_MARGIN_DAYS} days either side) and save it in the "
        f"models folder (`{settings.models_dir}`), where *Model* then offers it for the "
        "region's other fields. Measured once (README, 'Your own model for your region'): "
        "a model without Flanders fields, fine-tuned so on the demo field's Run, erred about "
        "a point less on another Flanders field (0.850 to 0.836 x the better baseline in "
        f"cloud removal, 0.891 to 0.879 in long gaps; 7-8 draws of 10). {where}; the "
        "training goes on if you leave the page. Scores "
        "of the new model on this field flatter it: it was trained here. To add another "
        "field of the region, choose the region's model, Run that field and do this again."
    )
    s2_dates = result.frames_loaded.get("s2", 0)
    if s2_dates < MEASURED_S2_DATES // 2:
        st.caption(
            f"This Run has {s2_dates} Sentinel-2 acquisitions; the gain above was measured on "
            f"a Run of {MEASURED_S2_DATES} (March to October): a Run over the whole season "
            "gives the training more to learn from."
        )
    field_name = state.field.name if state.field is not None else "field"
    if widget_value(Key.TUNE_NAME) is None:
        st.session_state[str(Key.TUNE_NAME)] = suggested_name(
            field_name, result.last_day.year, settings
        )
    name = st.text_input("Name of the new model", key=str(Key.TUNE_NAME))
    steps = st.number_input(
        "Steps",
        min_value=1,
        max_value=MAX_STEPS,
        value=REGION_STEPS,
        key=str(Key.TUNE_STEPS),
        help="Fine-tuning steps (4 training windows each). Measured on a Flanders field: "
        "150 steps (2.4 min) bought 40-55 % of what 600 did; 1200 no more than 600.",
    )
    st.caption(  # review 23: 99999 typed stayed in the box while 600 were trained
        f"A training takes {int(steps)} steps (a number outlined red is outside 1-"
        f"{MAX_STEPS} and not taken)."
    )
    if st.button("Train a model for this region", key=str(Key.TUNE_START)):
        try:
            tuning = RegionTuning(base, model_target(str(name), settings), int(steps))
            state.tuning = services.start_tuning(tuning, result, site=field_name)
        except FieldFlowError as exc:
            st.error(str(exc))
            return
        st.rerun()


@st.fragment(run_every=WATCH_EVERY_S)
def follow_tuning(key: str) -> None:
    """The fine-tuning's progress, redrawn on a timer; the whole page is redrawn once it has
    ended, with what was saved (or why not) at its top and the new model in the list."""
    state = page_state()
    if state.tuning != key:
        return
    try:
        tuned = services.watch_tuning(key)
        if tuned is None:
            return
    except Exception as exc:
        say_failure(state, exc)
    else:
        state.made_models.add(str(tuned.choice.path))
        state.say(
            "success",
            f"Saved the model '{tuned.choice.path.stem}' ({tuned.choice.path}) in "
            f"{duration_text(tuned.seconds)} on {tuned.where}: {tuned.choice.summary()} "
            "Choose it in "
            "Settings → Model.",
        )
        for warning in tuned.warnings:
            state.say("warning", f"The training warned: {warning}")
        forget_widget(Key.TUNE_NAME)  # the next one gets a free name
    state.tuning = None
    st.rerun()
