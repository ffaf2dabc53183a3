"""What the page does for a small screen (a phone): the sidebar that covers the results is
folded when they come.

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
