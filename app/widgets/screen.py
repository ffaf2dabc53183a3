"""What the page does for a small screen (a phone): the sidebar that covers the results is
folded when they come; and the page's own style rules (:func:`page_style`).

On a screen narrower than Streamlit's breakpoint the sidebar is drawn over the page instead of
beside it; pressing Run there left the progress and then the result hidden behind the sidebar
until the user found its close button (browser review at 390 x 844 px).
"""

from __future__ import annotations

import streamlit as st

from app.services import PROGRESS_KEY_PREFIX
from app.state import Key

FOLD_COVERING_SIDEBAR = """
<script>
(() => {
  const sidebar = document.querySelector('[data-testid="stSidebar"]');
  const main = document.querySelector('[data-testid="stMain"]');
  if (!sidebar || !main || sidebar.getAttribute("data-collapsed") !== "false") return;
  // Folded only where it lies over the page; beside it (a wide screen) it stays.
  if (sidebar.getBoundingClientRect().right <= main.getBoundingClientRect().left + 1) return;
  document.querySelector('[data-testid="stSidebarCollapseButton"] button')?.click();
})();
</script>
"""
"""Clicks the sidebar's own close button (so Streamlit remembers the choice as if the user
had), and only when the sidebar covers the main area."""


def fold_sidebar_if_covering() -> None:
    """Fold the sidebar where it covers the page (a phone), so what Run shows is in view.

    Each call's HTML differs (a counter in a comment): the browser runs an element's script
    only when it is mounted, and the same HTML at the same place as in the page's previous run
    is kept, not mounted again (Go to after a Run's end folded nothing)."""
    calls = st.session_state.get("_fold_calls", 0) + 1
    st.session_state["_fold_calls"] = calls
    st.html(
        FOLD_COVERING_SIDEBAR.replace("<script>", f"<script>/* {calls} */", 1),
        unsafe_allow_javascript=True,
    )


PAGE_STYLE = """
<style>
/* A folded sidebar is out of the keyboard's and a screen reader's way: Streamlit only slides
   it off screen, and Tab walked through its 15-25 controls with no focus to be seen. Its
   descendants too: Streamlit sets the help buttons' tooltip targets visible (review 26). */
[data-testid="stSidebar"][data-collapsed="true"],
[data-testid="stSidebar"][data-collapsed="true"] * { visibility: hidden !important; }
/* Captions carry much of the page's essential text (the period, each frame's figures, the
   hints): at Streamlit's 60 % opacity they read at 3.9:1 against white, under the 4.5:1 that
   text needs (and washed out first outdoors); at 75 %, about 6:1. */
[data-testid="stCaptionContainer"] { opacity: 0.75; }
/* A colour bar under the frames has no fullscreen button (review 25: two pointless Tab stops a
   result, "Fullscreen: NDVI colour scale"); the frames keep theirs. */
[class*="st-key-legend_"] [data-testid="stElementToolbar"] { display: none; }
/* On a touch screen, every control at least 44 px high, the size phones' own guidelines ask
   for (44 pt on iOS, 48 dp on Android; WCAG 2.5.8's minimum is 24 px, 2.5.5's enhanced level
   44). Review 25 found targets of 16-21 px (help buttons, the date's month and day, a
   checkbox's row), raised then to 32; Streamlit's buttons, fields and menus were 36-40 px.
   The help buttons stay at 32 px, grown into their margins so nothing moves: at 44 px they
   would reach over the field below their label. */
@media (pointer: coarse) {
  [data-testid="stTooltipHoverTarget"] > button {
    padding: 8px !important; margin: -8px !important;
  }
  button[data-testid^="stBaseButton"]:not([kind="headerNoPadding"]) { min-height: 44px; }
  /* The header's (open and close the sidebar, the menu), 24-28 px, grown into their margins. */
  button[kind="headerNoPadding"] { min-width: 44px; min-height: 44px; margin: -8px; }
  [data-testid="stElementToolbar"] button { min-width: 44px; min-height: 44px; }
  /* The chart's tool bar: a finger scrolls the page over the chart, so plotly's drag modes
     (box zoom, pan) do nothing on a touch screen and are left out; the other buttons (zoom in
     and out, reset, the picture) grow from 24 x 22 px. */
  .js-plotly-plot .modebar-btn[data-val="zoom"], .js-plotly-plot .modebar-btn[data-val="pan"] {
    display: none;
  }
  .js-plotly-plot .modebar-btn {
    box-sizing: border-box; width: 44px; height: 44px !important; padding: 11px !important;
  }
  /* raised into the gap above the chart, off the selected date's label */
  .js-plotly-plot .modebar-container { top: -16px !important; }
  [data-testid="stTextInputRootElement"], [data-testid="stNumberInputContainer"] {
    height: auto; min-height: 44px;
  }
  [data-testid^="stNumberInputStep"] { min-width: 44px; min-height: 44px; }
  [data-testid="stSelectbox"] [role="group"] { min-height: 44px; }
  [data-testid="stCheckbox"] label, [data-testid="stRadio"] label,
  [data-testid="stToggle"] label { min-height: 44px; align-items: center; }
  [data-testid="stExpander"] summary { min-height: 44px; }
  [data-testid="stDateInputField"] { min-height: 44px; }
  [data-testid="stDateInput"] [role="spinbutton"] {
    min-width: 44px; min-height: 44px; padding: 12px 0; text-align: center;
  }
  [data-testid="stDateInputCalendarButton"] { min-width: 44px; min-height: 44px; }
  [role="tab"] { min-height: 44px; }
  /* A slider's track takes a tap anywhere along it; its 12 px knob, dragged, gets a 44 px
     ring that is not drawn. */
  [data-testid="stSlider"] [role="group"] > div { min-height: 44px; }
  [data-testid="stSlider"] [role="group"] > div > div[style*="translate"]::before {
    content: ""; position: absolute; inset: -16px;
  }
}
</style>
"""
"""Review 25's folded-sidebar, caption-contrast, colour-bar and touch-target findings, as style
rules."""


def page_style() -> None:
    """Add :data:`PAGE_STYLE` to the page (a style element takes no space)."""
    st.html(PAGE_STYLE)


MAP_NAME = (
    "Field map: draw the field with the polygon or rectangle tool; the field and the selected "
    "frame are shown on it"
)
NAME_THE_MAP = """
<script>
(() => {
  const name = "MAP_NAME";
  const label = () => {
    for (const frame of document.querySelectorAll('iframe[title="streamlit_folium.st_folium"]')) {
      if (frame.getAttribute("aria-label") !== name) frame.setAttribute("aria-label", name);
    }
  };
  label();
  new MutationObserver(label).observe(document.body, {childList: true, subtree: true});
})();
</script>
""".replace("MAP_NAME", MAP_NAME)
"""Names the map's frame for screen readers (review 25: it was read as
"streamlit_folium.st_folium", the component's title, which the page cannot set): an
``aria-label``, set again whenever the map is drawn anew. The same HTML in every run, so the
browser mounts it once."""


KEEP_FOCUS = """
<script>
(() => {
  if (window.__fieldflowKeepFocus) return;
  window.__fieldflowKeepFocus = true;
  const FOCUSABLE = 'button, input, textarea, select, [tabindex="0"]';
  const keyOf = (el) => {
    const box = el && el.closest ? el.closest('[class*="st-key-"]') : null;
    return box ? [...box.classList].find((c) => c.startsWith("st-key-")) : null;
  };
  const boxOf = (key) => document.querySelector("." + CSS.escape(key));
  let kept = null;  // the keyed element that holds the focus, or last held it
  let place = 0;  // which of its controls (an uploader has its help button, then Upload)
  let lostAt = 0;
  document.addEventListener("focusin", (e) => {
    kept = keyOf(e.target);
    const box = kept ? boxOf(kept) : null;
    place = box ? Math.max(0, [...box.querySelectorAll(FOCUSABLE)].indexOf(e.target)) : 0;
    lostAt = 0;
  }, true);
  // The focus went into a frame (the map): a pointer put down there is not seen here.
  window.addEventListener("blur", () => setTimeout(() => {
    if (document.activeElement && document.activeElement.tagName === "IFRAME") kept = null;
  }, 0));
  // A pointer put down elsewhere than on a control: the user moved away; nothing is given back.
  document.addEventListener("pointerdown", (e) => {
    if (!(e.target.closest && e.target.closest(FOCUSABLE))) kept = null;
  }, true);
  const usable = (el) => !el.disabled && el.getAttribute("aria-disabled") !== "true"
    && el.checkVisibility({visibilityProperty: true})
    && !(el.matches('input[type="file"]'));
  const target = () => {
    const box = boxOf(kept);
    if (box) {
      const own = [...box.querySelectorAll(FOCUSABLE)];
      if (own[place] && usable(own[place])) return own[place];
      const first = own.find(usable);
      if (first) return first;
    }
    // A step button that became disabled (Next at the last date): the slider it steps.
    if (kept.startsWith("st-key-step_")) {
      const slider = document.querySelector('.st-key-DATE_KEY input[type="range"]');
      if (slider && usable(slider)) return slider;
    }
    return null;
  };
  const restore = () => {
    const active = document.activeElement;
    // Lost: on the body, or still on a control that was disabled or taken out (the browser
    // moves it to the body only when it next draws the page, with no more changes to see).
    const lost = !active || active === document.body || active.disabled || !active.isConnected;
    // Not when the focus left the page (Tab past its end, another window): no trap.
    if (!kept || !document.hasFocus() || !lost) {
      lostAt = 0;
      return;
    }
    const now = Date.now();
    if (!lostAt) lostAt = now;
    if (now - lostAt > 5000) { kept = null; return; }  // the control is gone for good
    const el = target();
    if (el) el.focus({preventScroll: true});
  };
  // A job's stages read out as they come (review 25: a screen reader heard nothing of a Run
  // until its end): each new headline of a progress panel goes to one polite live region of
  // the page's own, there from the start (a region drawn anew with its text is not read).
  const says = document.createElement("div");
  says.id = "fieldflow-says";
  says.setAttribute("role", "status");
  says.style.cssText = "position:absolute;width:1px;height:1px;overflow:hidden;"
    + "clip-path:inset(50%);white-space:nowrap;";
  document.body.appendChild(says);
  const heard = new Map();
  const announce = () => {
    for (const panel of document.querySelectorAll('[class*="st-key-PROGRESS_PREFIX"]')) {
      const key = keyOf(panel);
      const head = panel.querySelector("strong");
      const text = head ? head.textContent.trim() : "";
      if (text && heard.get(key) !== text) {
        heard.set(key, text);
        says.textContent = text;
      }
    }
  };
  let queued = false;
  new MutationObserver(() => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; restore(); announce(); });
    setTimeout(restore, 300);  // once more, after the browser has moved a lost focus
  }).observe(document.body, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["disabled"],
  });
})();
</script>
""".replace("DATE_KEY", str(Key.DATE)).replace("PROGRESS_PREFIX", PROGRESS_KEY_PREFIX)
"""Keeps the keyboard's place when the page is redrawn (reviews 25 and 26): a rerun that
replaces the control that had the focus, or disables it, threw the focus to the page's top, so
the next Tab started again at "Skip to main content". When the focus falls to the page's body,
it goes back to the same control (matched by its key) as it is drawn again, or, for a step
button that became disabled (Next at the last date), to the Date slider. Nothing is given back
after a pointer was put down elsewhere (the map's frame included), nor into a folded sidebar,
nor 5 s after the control went. And each new stage of a job's progress (a Run, a training, a
batch) is read out by a screen reader: its headline is copied into a polite live region
(``#fieldflow-says``)."""


CHART_TOUCH = """
<script>
(() => {
  if (window.__fieldflowChartTouch) return;
  window.__fieldflowChartTouch = true;
  // A finger on a chart's plot area is the page's: plotly would take it as a pan (Streamlit
  // sets a clickable chart's drag to pan) and hold the page still under it. Kept from plotly,
  // a swipe scrolls the page, and a tap comes to plotly as the browser's own mouse events,
  // hover and click, which select the point under the finger as a mouse's click does.
  // The axes' bands too: a swipe starting on the days' labels panned the days and held the
  // page still as well.
  document.addEventListener("touchstart", (e) => {
    if (e.target.closest && e.target.closest(".js-plotly-plot .draglayer")) e.stopPropagation();
  }, {capture: true, passive: true});
})();
</script>
"""
"""A finger on a chart scrolls the page and a tap selects a point (reviews 25 and 26: on a
phone a swipe over the chart panned its days, so the 380 px chart could not be scrolled past,
and a tap selected nothing). The days are still zoomed and panned with the chart's tool bar
and a mouse."""


SLIDER_NAME = """
<script>
(() => {
  if (window.__fieldflowSliderName) return;
  window.__fieldflowSliderName = true;
  // Streamlit's slider is labelled by itself (its aria-label) and by its label: "Date Date".
  const name = () => {
    for (const input of document.querySelectorAll('input[type="range"][aria-labelledby]')) {
      const ids = input.getAttribute("aria-labelledby").split(/\\s+/);
      const others = ids.filter((id) => id && id !== input.id);
      if (others.length && others.length < ids.length) {
        input.setAttribute("aria-labelledby", others.join(" "));
      }
    }
  };
  name();
  new MutationObserver(name).observe(document.body, {childList: true, subtree: true});
})();
</script>
"""
"""A slider's name is read once (reviews 25 and 26: "Date Date", the input's own
``aria-label`` and its label both named in its ``aria-labelledby``)."""


DATE_ENTER = """
<script>
(() => {
  if (window.__fieldflowDateEnter) return;
  window.__fieldflowDateEnter = true;
  // Streamlit takes a typed date when its field loses the focus: Enter, which takes a text
  // field's, did nothing. Enter now takes the date and leaves the focus where it was.
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.isComposing || !e.target.closest) return;
    const part = e.target.closest('[data-testid="stDateInput"] [role="spinbutton"]');
    if (!part) return;
    // The page's focus keeper (KEEP_FOCUS) would hand the focus straight back, before
    // Streamlit has seen it leave: it is told the user moved away, and the focus comes back
    // to the same part once the date is taken.
    document.body.dispatchEvent(new PointerEvent("pointerdown", {bubbles: true}));
    part.blur();
    setTimeout(() => {
      if (part.isConnected && document.activeElement === document.body) {
        part.focus({preventScroll: true});
      }
    }, 300);
  }, true);
})();
</script>
"""
"""Enter in a date field takes the date typed (review 30: a Query date typed and entered
changed nothing until the user clicked elsewhere)."""


def page_scripts() -> None:
    """Name the map's frame (:data:`NAME_THE_MAP`), keep the keyboard's place
    (:data:`KEEP_FOCUS`), give a finger on a chart to the page (:data:`CHART_TOUCH`), name
    a slider once (:data:`SLIDER_NAME`) and let Enter take a typed date (:data:`DATE_ENTER`);
    call it at the page's foot (the element takes a line). The same HTML in every run, so the
    browser mounts it once."""
    st.html(
        NAME_THE_MAP + KEEP_FOCUS + CHART_TOUCH + SLIDER_NAME + DATE_ENTER,
        unsafe_allow_javascript=True,
    )
