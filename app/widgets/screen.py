"""What the page does for a small screen (a phone): the sidebar that covers the results is
folded when they come; and the page's own style rules (:func:`page_style`).

On a screen narrower than Streamlit's breakpoint the sidebar is drawn over the page instead of
beside it; pressing Run there left the progress and then the result hidden behind the sidebar
until the user found its close button (browser review at 390 x 844 px).
"""

from __future__ import annotations

import streamlit as st

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
</style>
"""
"""Review 25's folded-sidebar and caption-contrast findings, as style rules."""


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


def name_the_map() -> None:
    """Give the map's frame :data:`MAP_NAME` (:data:`NAME_THE_MAP`); call it at the page's
    foot (the element takes a line)."""
    st.html(NAME_THE_MAP, unsafe_allow_javascript=True)
