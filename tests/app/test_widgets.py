"""The app's small pure pieces: map assets, tiles, chart clicks, default period."""

from __future__ import annotations

import dataclasses
import datetime as dt

import folium
import folium.plugins
import pandas as pd
import pytest
from shapely.geometry import box

from app.config import OSM_TILES, AppConfig
from app.state import default_period
from app.widgets.chart import clicked_day
from app.widgets.map import VENDOR_FILES, base_map, field_layer, localize_assets
from app.widgets.timeline import observed_caption
from core.field import Candidate
from core.season import DayView, TimelineDate


def test_map_assets_point_at_the_static_folder_and_cdn_extras_are_dropped() -> None:
    fmap = folium.Map(tiles=None)
    draw = folium.plugins.Draw().add_to(fmap)
    localize_assets(fmap)
    assets = [item for element in (fmap, draw) for item in element.default_js + element.default_css]
    assert assets and all(url.startswith("/app/static/vendor/") for _, url in assets)
    names = {name for name, _ in assets}
    assert names == set(VENDOR_FILES)  # awesome markers, Font Awesome, glyphicons: dropped
    # The class defaults (other maps in the process) are untouched.
    assert folium.Map.default_js[0][1].startswith("https://")


def test_base_map_has_the_draw_tools_and_the_configured_tiles() -> None:
    html = base_map(AppConfig(tile_url="http://tiles.local/{z}/{x}/{y}.png")).get_root().render()
    assert "tiles.local" in html and "L.Control.Draw" in html
    blank = base_map(AppConfig(tile_url=None)).get_root().render()
    assert "tileLayer" not in blank


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, OSM_TILES),
        ({"FIELDFLOW_TILE_URL": "none"}, None),
        ({"FIELDFLOW_TILE_URL": "https://t.example/{z}/{x}/{y}"}, "https://t.example/{z}/{x}/{y}"),
    ],
)
def test_tile_url_from_the_environment(env: dict[str, str], url: str | None) -> None:
    config = AppConfig.from_env(env)
    assert config.tile_url == url
    if url and "example" in url:
        assert config.tile_attribution == "t.example"


def test_clicked_day_reads_plotly_selection_events() -> None:
    event = {"selection": {"points": [{"x": "2018-05-03", "y": 0.4}]}}
    assert clicked_day(event) == dt.date(2018, 5, 3)
    with_time = {"selection": {"points": [{"x": "2018-05-03 00:00"}]}}
    assert clicked_day(with_time) == dt.date(2018, 5, 3)
    assert clicked_day({"selection": {"points": []}}) is None
    assert clicked_day(None) is None
    assert clicked_day({"selection": {"points": [{"x": 3}]}}) is None


def test_default_period_is_the_last_twelve_months() -> None:
    assert default_period(dt.date(2024, 6, 15)) == (dt.date(2023, 6, 16), dt.date(2024, 6, 15))
    assert default_period(dt.date(2024, 2, 29)) == (dt.date(2023, 3, 1), dt.date(2024, 2, 29))


def test_the_curves_hover_says_how_far_the_day_is_from_clear_data() -> None:
    import pandas as pd

    from app.widgets.chart import _distance_text

    assert _distance_text(0) == "seen clear that day"
    assert _distance_text(12) == "nearest clear observation 12 d away"
    assert _distance_text(pd.NA) == "most of the field never seen clear"
    column = pd.array([3, pd.NA], dtype="Int64")  # as the curve holds it
    assert [_distance_text(d) for d in column] == [
        "nearest clear observation 3 d away",
        "most of the field never seen clear",
    ]


def test_the_charts_points_and_hover_tell_clear_partly_clear_and_cloudy_days_apart() -> None:
    # Review 30: the demo's 2018-10-28, 62 % clear, was drawn as the clear days are (its clear
    # part's NDVI 0.702 read as a green-up of a field half bare, 0.509), and its hover said
    # "seen clear that day"; no hover gave the band.
    import pandas as pd

    from app.widgets.chart import (
        CLEAR_NAME,
        CLOUDY_NAME,
        PARTLY_NAME,
        _hover_text,
        acquisition_points,
    )

    nan = float("nan")
    curve = pd.DataFrame(
        {
            "date": pd.date_range("2018-10-26", periods=5).date,
            "ndvi": [0.52, 0.51, 0.509, 0.50, 0.49],
            "observed_ndvi": [0.51, nan, 0.702, nan, nan],
            "clear_fraction": [0.96, nan, 0.62, 0.49, 0.5],
        }
    )
    whole, partly, cloudy = acquisition_points(curve)
    assert list(whole.index) == [0] and list(partly.index) == [2]
    assert list(cloudy.index) == [3, 4]  # under half clear; half clear with no NDVI observed
    assert (CLEAR_NAME, PARTLY_NAME, CLOUDY_NAME) == (
        "Clear (95%+ of the field seen)",
        "Partly clear (50-95%): its clear part's mean",
        "Cloudy (under 50% seen clear)",
    )
    assert _hover_text(0, 0.62, 0.46, 0.55) == (
        "<br>p10-p90 0.460-0.550<br>62% of the field seen clear that day, the rest reconstructed"
    )
    assert _hover_text(0, 0.96, 0.51, 0.51) == "<br>p10-p90 0.510-0.510<br>seen clear that day"
    assert _hover_text(10, nan, nan, nan) == "<br>nearest clear observation 10 d away"
    cloudy_day = "<br>p10-p90 0.400-0.600<br>nearest clear observation 4 d away"
    assert _hover_text(4, 0.3, 0.4, 0.6) == cloudy_day


def test_a_partly_clear_day_tells_its_observation_from_the_fields_value() -> None:
    # The demo's 2018-10-28: 62 % clear, the clear pixels' NDVI 0.702, the field's 0.515 (its
    # cloudy, bare part reconstructed). Both had read as "observed".
    def view(clear: float) -> DayView:
        return DayView(dt.date(2018, 10, 28), b"", b"", None, 0.515, 0.48, 0.55, 0.702,
                       "observed", clear_fraction=clear)  # fmt: skip

    partly = observed_caption(view(0.62))
    assert partly.startswith("Observed that day on the 62% of the field seen clear: 0.702.")
    assert "also counts the rest, reconstructed" in partly
    assert observed_caption(view(0.98)) == "Observed that day: 0.702 (the field seen clear)."
    labels = [TimelineDate(dt.date(2018, 10, 28), True, c).label for c in (0.98, 0.62, 0.12)]
    assert labels == [
        "2018-10-28 · S2 clear (98%)",
        "2018-10-28 · S2 partly clear (62%)",
        "2018-10-28 · S2 cloudy (12% clear)",
    ]
    assert TimelineDate(dt.date(2018, 10, 29), False, None).label.endswith("no acquisition")
    limited = TimelineDate(dt.date(2018, 10, 29), False, None, cloud_limit=30.0)
    assert limited.label == "2018-10-29 · no acquisition under the 30% cloud limit"


def test_an_uploads_polygons_are_drawn_labelled_before_the_choice() -> None:
    west = Candidate(0, "West", "Polygon", 6.5, outline=box(3.0, 51.0, 3.003, 51.002))
    east = Candidate(1, "East", "Polygon", 6.5, outline=box(3.01, 51.0, 3.013, 51.002))
    line = Candidate(2, "Track", "LineString", None)  # nothing to draw
    html = folium.Map().add_child(field_layer(None, None, None, [west, east, line])).get_root()
    page = html.render()
    assert page.count("permanent") >= 2  # the names stay on the map, not on hover only
    assert "West (6.50 ha)" in page and "East (6.50 ha)" in page and "Track" not in page


def test_names_from_a_file_are_shown_as_text_on_the_map_never_run_as_html() -> None:
    """folium puts a tooltip's text into the map's HTML inside a JavaScript template literal,
    as it is: a polygon named ``<img src=x onerror=...>`` or ``${...}`` in a shared KML or
    GeoJSON ran its script in the page (review 12; the first fix escaped HTML alone)."""
    from core.field import Field

    evil = '<img src=x onerror="document.title=1">'
    script = "${(top.document.title=`PWNED`, ``)}"
    candidate = Candidate(0, f"{evil} & co", "Polygon", 6.5, outline=box(3.0, 51.0, 3.003, 51.002))
    outline = box(3.02, 51.0, 3.023, 51.002)
    other = Candidate(1, f"{script}Parcel \\", "Polygon", 6.5, outline=outline)
    field = Field(box(3.01, 51.0, 3.013, 51.002), f"<b>{evil}</b> $\\frac{{a}}{{b}}$")
    layer = field_layer(field, None, None, [candidate, other])
    page = folium.Map().add_child(layer).get_root().render()
    assert "<img src=x" not in page and "<b>" not in page
    assert "${(top" not in page and "`PWNED`" not in page and "Parcel \\" not in page
    assert "&lt;img src=x onerror=&quot;document.title=1&quot;&gt; &amp; co (6.50 ha)" in page
    assert "&#36;{(top.document.title=&#96;PWNED&#96;, &#96;&#96;)}Parcel &#92; (6.50 ha)" in page
    assert "&lt;b&gt;&lt;img src=x" in page and "&#36;&#92;frac{a}{b}&#36;" in page


def test_many_polygons_of_an_upload_are_one_layer_of_outlines_without_labels() -> None:
    """Each labelled polygon is a layer and a tooltip on every rerun: 20,000 took 11.9 s and
    31 MB of HTML a rerun (review 12)."""
    from app.widgets.map import MAX_LABELLED_CANDIDATES

    def page(count: int) -> str:
        candidates = [
            Candidate(
                i,
                f"P{i}",
                "Polygon",
                1.0,
                outline=box(3 + i * 1e-4, 51.0, 3.00005 + i * 1e-4, 51.0001),
            )
            for i in range(count)
        ]
        return folium.Map().add_child(field_layer(None, None, None, candidates)).get_root().render()

    assert page(MAX_LABELLED_CANDIDATES).count("bindTooltip") == MAX_LABELLED_CANDIDATES
    many = page(5000)
    assert "bindTooltip" not in many and many.count('"type": "Feature"') == 5000
    assert len(many) < 2_000_000


def test_plain_shows_a_name_as_written_in_streamlits_markdown() -> None:
    from app.text import plain

    name = ":red[**NOTICE**] [log in](https://evil.example) ![t](https://evil.example/t.png) $x$"
    joiner = "\u2060"  # markdown links a bare URL through any escape
    assert plain(name) == (
        ":red\\[\\*\\*NOTICE\\*\\*\\] \\[log in\\](https" + joiner + "://evil.example) "
        "!\\[t\\](https" + joiner + "://evil.example/t.png) \\$x\\$"
    )
    assert plain("www.x.example bob@x.example") == f"www{joiner}.x.example bob@{joiner}x.example"
    assert plain("# North") == "\\# North" and plain("- 12. field") == "\\- 12. field"
    assert plain("12. field") == "12\\. field" and plain("North field 2.5") == "North field 2.5"
    assert plain("a\\b_c`d & e") == "a\\\\b\\_c\\`d \\& e"


def test_a_short_period_gets_a_time_axis_in_days() -> None:
    # A one-day Run drew its axis in fractions of a millisecond ("23:59:59.9995"; review 4).
    from app.widgets.chart import MIN_AXIS_DAYS, _day_range

    day = dt.date(2018, 6, 23)
    axis = _day_range(day, day)
    start, end = axis["range"]
    assert (end - start).days == MIN_AXIS_DAYS and start < pd.Timestamp(day) < end
    assert axis["dtick"] == 86_400_000  # one tick a day
    assert _day_range(day, day + dt.timedelta(days=30)) == {}  # Plotly's own range


def test_the_batch_table_gives_outside_imagery_and_the_models_ratios_only_where_measured() -> None:
    from app.widgets.batch import outcome_table
    from core.batch import BatchRequest, FieldRow, UploadBatch

    def done(*rows: FieldRow) -> UploadBatch:
        request = BatchRequest(start="2023-05-01", end="2023-05-31")
        return UploadBatch("farm.geojson", request, rows, 1.0, b"", False)

    inside = FieldRow("a", "A", "ok", 8, 0, "none", 5, 0.5, outside_imagery=0.0)
    older = FieldRow("b", "B", "skipped", 8, 0, "none", 5, 0.5)  # done before it was recorded
    assert "Outside the imagery" not in outcome_table(done(inside, older)).columns
    straddling = FieldRow("c", "C", "ok", 8, 0, "none", 5, 0.5, outside_imagery=0.25)
    table = outcome_table(done(inside, older, straddling))
    assert list(table["Outside the imagery"]) == ["0%", "", "25%"]
    # The model's ratio on the NDVI curve beside its reflectance one, where a field has it.
    assert "The same on the NDVI curve" not in table.columns
    modelled = dataclasses.replace(inside, model_vs_baseline=0.92, model_ndvi_vs_baseline=1.09)
    table = outcome_table(done(modelled, older))
    assert list(table["Model error / better baseline's"]) == ["0.92", ""]
    assert list(table["The same on the NDVI curve"]) == ["1.09", ""]


def test_the_season_line_gives_the_dates_their_windows_and_what_they_rest_on() -> None:
    # Review 30: nothing on the page answered green-up, peak or harvest.
    import datetime as dt

    from app.widgets.chart import season_text
    from core.phenology import Crossing, SeasonMarks

    def date(month: int, day: int) -> dt.date:
        return dt.date(2018, month, day)

    up = Crossing(date(6, 12), date(6, 8), date(6, 17), 0.5, 0.19, 9)
    down = Crossing(date(9, 11), date(9, 11), date(9, 11), 0.51, 0.22, 0)
    marks = SeasonMarks(date(6, 30), 0.8093, 0.78, 0.83, True, up, down, date(3, 5), date(10, 31))
    assert season_text(marks).startswith(
        "**Season**: peak **0.81** on **2018-06-30** (observed, p10-p90 0.78-0.83); "
        "green-up **2018-06-12** (half-way up from 0.19, between 06-08 and 06-17 by the band, "
        "9 d from clear data); decline **2018-09-11** (half-way down to 0.22, seen clear that "
        "day). Half-way dates"
    )
    early = SeasonMarks(
        date(3, 8), 0.65, float("nan"), float("nan"), False, None, down, date(3, 5), date(9, 30)
    )
    assert (
        "(reconstructed; at the period's start: the crop may have peaked before it); "
        "green-up: none in the period; decline" in season_text(early)
    )


def test_the_csv_buttons_help_names_every_column_of_the_file() -> None:
    # Review 30: nothing said what the CSV's columns were; a column added later is named too.
    from app.widgets.downloads import CSV_COLUMNS
    from core.curve import CURVE_COLUMNS

    assert [c for c in CURVE_COLUMNS if c != "date" and f"**{c}**" not in CSV_COLUMNS] == []
