"""AppTest fixtures: the real page, run headless, on real cubes and local servers only.

The environment points the app at nothing on the internet: the STAC API is a local
:func:`published_site` (real cube served like Planetary Computer) or, for tests that do not
fetch, a closed port (so the demo goes offline and reads the shared cube). The disk cache lives
in the test's temporary folder. Streamlit's in-process caches are cleared before every test,
because AppTest runs every app in this same process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.integration.conftest import published_site  # noqa: F401 (fixture re-export)

MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"
OFFLINE_STAC = "http://127.0.0.1:9/api/stac/v1"
"""Nothing listens on port 9 (discard): the STAC API is unreachable at once."""
RUN_TIMEOUT_S = 180


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """Set the app's environment; call it with a STAC URL (default: unreachable)."""

    def configure(stac_url: str = OFFLINE_STAC) -> None:
        monkeypatch.setenv("STAC_API_URL", stac_url)
        monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("FIELDFLOW_TILE_URL", "none")
        monkeypatch.setenv("FIELDFLOW_RETRIES", "0")
        monkeypatch.setenv("FIELDFLOW_TIMEOUT_S", "20")
        st.cache_data.clear()
        st.cache_resource.clear()

    configure()
    return configure


@pytest.fixture
def open_page(app_env: Callable[[str], None]) -> Iterator[Callable[..., AppTest]]:
    """Factory: ``open_page(stac_url=...)`` sets the environment and runs the page once."""

    def start(stac_url: str = OFFLINE_STAC) -> AppTest:
        app_env(stac_url)
        page = AppTest.from_file(str(MAIN), default_timeout=RUN_TIMEOUT_S)
        page.run()
        assert not page.exception, [e.value for e in page.exception]
        return page

    yield start
    st.cache_data.clear()
    st.cache_resource.clear()
