"""The map: drawing tools, the field outline, and the selected frame as an overlay.

The base map (tiles, draw control) never changes, so ``st_folium`` never remounts it; the field
outline and the frame overlay travel in a ``FeatureGroup`` (``feature_group_to_add``) that is
swapped in place, and the view moves with ``center``/``zoom``.

Leaflet, leaflet-draw, jQuery and Bootstrap are served from the app's static folder
(``app/static/vendor``, filled by ``npm ci``, whose postinstall runs
``scripts/copy_static.js``) instead of CDNs, so the map works offline. Folium's other CDN
assets (Font Awesome, glyphicons, awesome markers) are not needed by this map and are
dropped. If the vendored files are missing, the CDN URLs are kept and a warning says how to
install them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import folium
import folium.plugins
import folium.raster_layers
import shapely.geometry
import streamlit as st
from branca.element import MacroElement
from folium.template import Template
from shapely.geometry import mapping
from streamlit_folium import st_folium

from app.config import STATIC_DIR, AppConfig
from app.state import DEFAULT_CENTER, DEFAULT_ZOOM, LOCATION_ZOOM, Key
from app.text import tooltip_text
from core.field import Candidate, Field
from core.render import data_url

MAP_HEIGHT_PX = 480
VENDOR_FILES: dict[str, str] = {
    "leaflet": "vendor/leaflet/leaflet.js",
    "leaflet_css": "vendor/leaflet/leaflet.css",
    "jquery": "vendor/jquery/jquery.min.js",
    "bootstrap": "vendor/bootstrap/js/bootstrap.bundle.min.js",
    "bootstrap_css": "vendor/bootstrap/css/bootstrap.min.css",
    "leaflet_draw_js": "vendor/leaflet-draw/leaflet.draw.js",
    "leaflet_draw_css": "vendor/leaflet-draw/leaflet.draw.css",
}
"""Folium asset name -> file under ``app/static``; assets not listed are dropped."""
FIELD_STYLE = {"color": "#00e5ff", "weight": 3, "fill": False}
DRAWN_STYLE = {"color": "#ffffff", "weight": 1, "dashArray": "4 4", "fillOpacity": 0.0}
"""Shapes as drawn: a thin dashed line, no fill (the field outline and overlay show through)."""
CANDIDATE_STYLE = {"color": "#ffd600", "weight": 2, "dashArray": "6 4", "fillOpacity": 0.1}
"""The polygons of an upload waiting for the user's choice: dashed, apart from the field's."""


LOCATE_TIMEOUT_S = 20
"""How long the browser may take to find the device's position before the map says so."""


class LocateButton(MacroElement):
    """A map button that centres the map on the device's position (the browser's geolocation),
    for a farmer standing at the field: the position is drawn as a circle of its accuracy,
    and every failure is said on the map in words (refused, no fix, no https).

    Browsers give a position only to pages served over https or from this computer, and only
    once the user allows it; nothing is sent to the server: the view moves in the browser.
    """

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        (function () {
          var map = {{ this._parent.get_name() }};
          var here = L.featureGroup().addTo(map);
          var note = L.control({position: "bottomleft"});
          note.onAdd = function () {
            var div = L.DomUtil.create("div", "fieldflow-locate-note");
            div.setAttribute("role", "status");
            div.style.cssText = "background: rgba(255,255,255,0.92); padding: 2px 6px; " +
              "border-radius: 4px; max-width: 260px; font: 12px sans-serif; display: none";
            return div;
          };
          note.addTo(map);
          function say(text) {
            var div = note.getContainer();
            div.textContent = text;
            div.style.display = text ? "block" : "none";
          }
          var button = L.control({position: "topleft"});
          button.onAdd = function () {
            var bar = L.DomUtil.create("div", "leaflet-bar leaflet-control");
            var link = L.DomUtil.create("a", "fieldflow-locate", bar);
            link.href = "#";
            link.title = "Go to my location";
            link.setAttribute("role", "button");
            link.setAttribute("aria-label", "Go to my location");
            link.innerHTML = '<svg viewBox="0 0 24 24" width="18" height="18" ' +
              'style="vertical-align: middle" aria-hidden="true" fill="none" ' +
              'stroke="#333" stroke-width="2"><circle cx="12" cy="12" r="6"/>' +
              '<circle cx="12" cy="12" r="1.5" fill="#333"/><path d="M12 1v5M12 18v5' +
              'M1 12h5M18 12h5"/></svg>';
            L.DomEvent.disableClickPropagation(bar);
            L.DomEvent.on(link, "click", function (event) {
              L.DomEvent.preventDefault(event);
              if (!window.isSecureContext || !navigator.geolocation) {
                say("This browser gives no location to a page served over plain http: " +
                    "open the app over https (or on this computer), or type the " +
                    "coordinates in Go to.");
                return;
              }
              say("Finding your location…");
              map.locate({setView: true, maxZoom: {{ this.zoom }},
                          enableHighAccuracy: true, timeout: {{ this.timeout_ms }}});
            });
            return bar;
          };
          button.addTo(map);
          map.on("locationfound", function (event) {
            here.clearLayers();
            L.circle(event.latlng, {radius: event.accuracy, weight: 1, color: "#1e88e5",
                                    fillOpacity: 0.15, interactive: false}).addTo(here);
            L.circleMarker(event.latlng, {radius: 5, weight: 2, color: "#ffffff",
                                          fillColor: "#1e88e5", fillOpacity: 1,
                                          interactive: false}).addTo(here);
            say("You are here (within about " + Math.round(event.accuracy) + " m): draw " +
                "your field with the tools above.");
          });
          map.on("locationerror", function (event) {
            var why = {
              1: "Location refused: allow it for this page in the browser's site settings, " +
                 "or type the coordinates in Go to.",
              2: "Your device could not find its position: try again outdoors, or type the " +
                 "coordinates in Go to.",
              3: "No position within {{ this.timeout_s }} s: try again, or type the " +
                 "coordinates in Go to."
            };
            say(why[event.code] || ("No location: " + event.message +
                                    ". Type the coordinates in Go to."));
          });
        })();
        {% endmacro %}
        """
    )

    def __init__(self, zoom: int) -> None:
        super().__init__()
        self._name = "LocateButton"
        self.zoom = int(zoom)
        self.timeout_s = LOCATE_TIMEOUT_S
        self.timeout_ms = LOCATE_TIMEOUT_S * 1000


class PageFirstGestures(MacroElement):
    """The page scrolls over the map; the map moves on a deliberate gesture (review 25: on a
    phone a one-finger swipe over the 480 px map panned it instead of scrolling the page, and
    at 200 % zoom the mouse wheel over it zoomed it, so a user scrolling to the results got
    stuck on the map and lost the field from view).

    - Mouse wheel: scrolls the page; Ctrl (or Cmd) + wheel zooms the map, as on a web page's
      embedded map; a plain wheel over the map says so for a moment. The +/- buttons and a
      double click zoom as before.
    - Touch screens: one finger scrolls the page, two fingers move and zoom the map
      (Leaflet's pinch); a one-finger swipe over the map says so. While a shape is being
      drawn the map takes every touch, so taps and drags draw.
    - A mouse drags the map as before, on a laptop with a touch screen too.
    """

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        (function () {
          var map = {{ this._parent.get_name() }};
          var box = map.getContainer();
          map.scrollWheelZoom.disable();
          var hint = L.DomUtil.create("div", "fieldflow-gesture-hint", box);
          hint.setAttribute("role", "status");
          hint.style.cssText = "position: absolute; left: 50%; top: 50%; z-index: 1000; " +
            "transform: translate(-50%, -50%); background: rgba(0,0,0,0.72); color: #fff; " +
            "padding: 6px 10px; border-radius: 4px; font: 14px sans-serif; max-width: 80%; " +
            "text-align: center; pointer-events: none; display: none";
          var timer = null, drawing = false, lastZoom = 0;
          function say(text) {
            hint.textContent = text;
            hint.style.display = "block";
            clearTimeout(timer);
            timer = setTimeout(function () { hint.style.display = "none"; }, 1500);
          }
          var mac = /Mac|iPhone|iPad/.test(navigator.platform || "");
          box.addEventListener("wheel", function (event) {
            if (event.ctrlKey || event.metaKey) {
              event.preventDefault();
              var now = Date.now();
              if (now - lastZoom < 200) return;  // a trackpad sends many small steps
              lastZoom = now;
              map.setZoomAround(map.mouseEventToContainerPoint(event),
                                map.getZoom() + (event.deltaY < 0 ? 1 : -1));
            } else {
              say((mac ? "\u2318" : "Ctrl") + " + scroll zooms the map");
            }
          }, {passive: false});
          // While a shape is drawn the map takes every touch (a rectangle is drawn by a drag).
          map.on("draw:drawstart", function () {
            drawing = true;
            box.style.touchAction = "none";
          });
          map.on("draw:drawstop", function () {
            drawing = false;
            box.style.touchAction = "";
          });
          if (!L.Browser.touch) return;  // no touch screen: the mouse drags as before
          // A touch screen: the browser decides at a touch's start whether it scrolls the page
          // (the container's touch-action, which Leaflet's dragging sets to none), so dragging
          // rests off and is turned on only while a mouse is over the map (a laptop with a
          // touch screen); two fingers move and zoom the map through Leaflet's pinch.
          map.dragging.disable();
          // (pointerenter, not pointerover: that fires on every element the pointer crosses,
          // and turned dragging back on in the middle of drawing a rectangle, which then
          // moved the map instead; a drawing tool turns dragging off and back on itself)
          box.addEventListener("pointerenter", function (event) {
            if (event.pointerType === "mouse" && !drawing) map.dragging.enable();
          });
          box.addEventListener("pointerleave", function (event) {
            if (event.pointerType === "mouse" && !drawing) map.dragging.disable();
          });
          function touch(event) {
            if (drawing) return;
            if (event.touches.length > 1) {
              event.preventDefault();
              hint.style.display = "none";
            } else if (event.type === "touchmove") {
              say("Use two fingers to move the map");
            }
          }
          box.addEventListener("touchstart", touch, {passive: false});
          box.addEventListener("touchmove", touch, {passive: false});
        })();
        {% endmacro %}
        """
    )

    def __init__(self) -> None:
        super().__init__()
        self._name = "PageFirstGestures"


def vendored_assets_present() -> bool:
    """True when every file of :data:`VENDOR_FILES` is in the static folder."""
    return all((STATIC_DIR / path).is_file() for path in VENDOR_FILES.values())


def static_url(path: str) -> str:
    """URL of a file under ``app/static`` as the browser sees it (honours baseUrlPath)."""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    prefix = f"/{base}" if base else ""
    return f"{prefix}/app/static/{path}"


def localize_assets(element: folium.Element) -> None:
    """Point every JS/CSS asset of ``element`` and its children at the vendored copies."""
    for attr in ("default_js", "default_css"):
        assets = getattr(element, attr, None)
        if assets:
            kept = [name for name, _ in assets if name in VENDOR_FILES]
            setattr(element, attr, [(name, static_url(VENDOR_FILES[name])) for name in kept])
    for child in getattr(element, "_children", {}).values():
        localize_assets(child)


class OneDrawingAtATime(MacroElement):
    """Starting a new drawing takes the earlier drawn shapes off the map: only the newest
    drawing becomes the field, and the old ones stayed drawn beside it as thin dashed outlines
    that looked like fields too (browser review). The field itself is drawn from the page's
    state (:func:`field_layer`), so it stays."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        {{ this._parent.get_name() }}.on("draw:drawstart", function () {
          drawnItems_{{ this.draw.get_name() }}.clearLayers();
        });
        {% endmacro %}
        """
    )

    def __init__(self, draw: folium.plugins.Draw) -> None:
        super().__init__()
        self._name = "OneDrawingAtATime"
        self.draw = draw


MAP_TOUCH_STYLE = """
<style>
@media (pointer: coarse) {
  /* The map's tools at a finger's size on a touch screen: Leaflet's are 30 px (review 25), under
     the 44-48 px phones ask for. Zoomed whole, so leaflet-draw's icons and its Finish / Cancel
     row, drawn for 30 px, keep their places. */
  .leaflet-top.leaflet-left .leaflet-control { zoom: 1.5; }
  /* Finish / Delete last point / Cancel: as tall, in 13.5 px type, to fit a phone */
  .leaflet-touch .leaflet-draw-actions a { font-size: 9px; padding: 0 5px; }
}
</style>
"""
"""The map's tools at 45 px on a touch screen, unchanged under a mouse."""


def base_map(config: AppConfig) -> folium.Map:
    """The map with tiles (if any) and the polygon/rectangle draw tools."""
    fmap = folium.Map(
        location=DEFAULT_CENTER,
        zoom_start=DEFAULT_ZOOM,
        tiles=None,
        control_scale=True,
        max_zoom=20,
    )
    if config.tile_url:
        folium.TileLayer(
            tiles=config.tile_url,
            attr=config.tile_attribution,
            max_zoom=20,
            max_native_zoom=19,
            name="Base map",
        ).add_to(fmap)
    draw = folium.plugins.Draw(
        draw_options={
            "polyline": False,
            "circle": False,
            "marker": False,
            "circlemarker": False,
            "polygon": {"allowIntersection": False, "showArea": True, "shapeOptions": DRAWN_STYLE},
            "rectangle": {"showArea": True, "shapeOptions": DRAWN_STYLE},
        },
        edit_options={"edit": False, "remove": True},
    ).add_to(fmap)
    OneDrawingAtATime(draw).add_to(fmap)
    LocateButton(LOCATION_ZOOM).add_to(fmap)
    PageFirstGestures().add_to(fmap)
    fmap.get_root().header.add_child(folium.Element(MAP_TOUCH_STYLE))
    if vendored_assets_present():
        localize_assets(fmap)
    return fmap


def field_layer(
    field: Field | None,
    overlay_png: bytes | None,
    bounds: list[list[float]] | None,
    candidates: Sequence[Candidate] = (),
) -> folium.FeatureGroup:
    """The feature group swapped into the map: the frame overlay, the field outline, and the
    polygons of an upload the user is to choose from, each labelled with its name (up to
    :data:`MAX_LABELLED_CANDIDATES`; more are drawn as one layer of outlines, unlabelled)."""
    group = folium.FeatureGroup(name="Field")
    drawn = [c for c in candidates if c.outline is not None]
    if len(drawn) > MAX_LABELLED_CANDIDATES:
        outlines = {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "properties": {}, "geometry": mapping(c.outline)} for c in drawn
            ],
        }
        folium.GeoJson(outlines, style_function=lambda _feature: CANDIDATE_STYLE).add_to(group)
        drawn = []
    for candidate in drawn:
        folium.GeoJson(
            shapely.geometry.mapping(candidate.outline),
            style_function=lambda _feature: CANDIDATE_STYLE,
            tooltip=folium.Tooltip(_candidate_label(candidate), permanent=True),
        ).add_to(group)
    if overlay_png is not None and bounds is not None:
        folium.raster_layers.ImageOverlay(
            image=data_url(overlay_png), bounds=bounds, opacity=0.9, interactive=False
        ).add_to(group)
    if field is not None:
        folium.GeoJson(
            field.to_geojson(),
            style_function=lambda _feature: FIELD_STYLE,
            tooltip=f"{tooltip_text(field.name)}: {field.area_ha:,.2f} ha",
        ).add_to(group)
    return group


MAX_LABELLED_CANDIDATES = 200
"""Most polygons of an upload drawn each as a layer with its name on the map. Each costs a
layer and a tooltip on every rerun of the page: 20,000 took 11.9 s and 31 MB of HTML a rerun
(review 12); past this they are one layer of outlines, and the sidebar's choice names them."""


def _candidate_label(candidate: Candidate) -> str:
    """The label on an upload's polygon: its name, as text (:func:`app.text.tooltip_text`),
    and its area."""
    area = f" ({candidate.area_ha:,.2f} ha)" if candidate.area_ha is not None else ""
    return f"{tooltip_text(candidate.name)}{area}"


def field_map(
    config: AppConfig,
    *,
    field: Field | None,
    candidates: Sequence[Candidate] = (),
    center: tuple[float, float],
    zoom: int,
    overlay_png: bytes | None = None,
    overlay_bounds: list[list[float]] | None = None,
) -> dict[str, Any] | None:
    """Draw the map; return the newest drawing (a GeoJSON mapping) or None.

    Returns None under AppTest, where the component cannot run.
    """
    if not vendored_assets_present():
        st.warning(
            "Map scripts are not installed locally, so the map loads them from the internet. "
            "Run `npm ci` (or `python scripts/setup_static.py`) in the project folder."
        )
    value = st_folium(
        base_map(config),
        key=str(Key.MAP),
        height=MAP_HEIGHT_PX,
        use_container_width=True,
        returned_objects=["last_active_drawing", "all_drawings"],
        feature_group_to_add=field_layer(field, overlay_png, overlay_bounds, candidates),
        center=center,
        zoom=zoom,
        pixelated=True,
    )
    if not isinstance(value, dict):
        return None
    drawing = value.get("last_active_drawing")
    return drawing if isinstance(drawing, dict) and drawing.get("geometry") else None


def drawing_fingerprint(drawing: dict[str, Any]) -> str:
    """A short hash of a drawing's geometry, to recognise one already turned into a field."""
    text = json.dumps(drawing.get("geometry"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
