"""Pictures of frames: colour scales, outlines, PNG encoding and the lon/lat warp for the map."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pyproj import Transformer

from core.cube import S2_BANDS
from core.errors import InputError
from core.grid import Grid
from core.render import (
    CLOUD_RGB,
    FIELD_HALO_RGB,
    FIELD_RGB,
    NO_DATA_RGB,
    RGB_GAMMA,
    LonLatWarp,
    colour_bar,
    colour_ramp,
    data_url,
    display_scale,
    enlarge,
    ndvi_colours,
    outline,
    picture,
    png_bytes,
    radar_grey,
    true_colour,
)


def frame_of(red: float, green: float, blue: float, shape: tuple[int, int] = (2, 3)) -> np.ndarray:
    """A (10, H, W) reflectance frame with the given RGB and NaN in every other band."""
    s2 = np.full((len(S2_BANDS), *shape), np.nan, dtype=np.float32)
    for band, value in (("B04", red), ("B03", green), ("B02", blue)):
        s2[S2_BANDS.index(band)] = value
    return s2


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_true_colour_uses_a_fixed_scale_and_marks_missing_pixels() -> None:
    s2 = frame_of(0.3, 0.15, 0.0)
    s2[S2_BANDS.index("B02"), 1, 2] = np.nan
    rgb = true_colour(s2)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, round(255 * 0.5 ** (1 / RGB_GAMMA)), 0)
    assert tuple(rgb[1, 2]) == NO_DATA_RGB
    # Brighter than white (a cloud) saturates instead of rescaling the frame.
    assert tuple(true_colour(frame_of(0.9, 0.9, 0.9))[0, 0]) == (255, 255, 255)


def test_colour_ramp_interpolates_between_stops_and_clips() -> None:
    stops = ((0.0, (0, 0, 0)), (1.0, (200, 100, 0)))
    values = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan])
    out = colour_ramp(values, (0.0, 1.0), stops)
    assert out.tolist() == [
        [0, 0, 0],
        [0, 0, 0],
        [100, 50, 0],
        [200, 100, 0],
        [200, 100, 0],
        list(NO_DATA_RGB),
    ]


def test_ndvi_and_radar_scales_run_the_right_way() -> None:
    low, high = ndvi_colours(np.array([0.0, 0.9]))
    assert low[0] > low[2] and low.sum() > high.sum()  # bare soil light tan
    assert high[1] > high[0]  # dense vegetation green
    # Lightness falls all along the ramp, in normal and in red-green colour-blind vision
    # (review 25: with the red-yellow-green ramp bare soil and a dense crop looked alike).
    colours = ndvi_colours(np.linspace(-0.2, 1.0, 61)).astype(np.float64) / 255
    linear = np.where(colours <= 0.04045, colours / 12.92, ((colours + 0.055) / 1.055) ** 2.4)
    deutan = np.array(  # Machado et al. (2009), deuteranopia, severity 1
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
         [-0.011820, 0.042940, 0.968881]]
    )  # fmt: skip
    for rgb in (linear, np.clip(linear @ deutan.T, 0, 1)):
        luminance = rgb @ np.array([0.2126, 0.7152, 0.0722])
        assert (np.diff(luminance) < 0).all()
    grey = radar_grey(np.array([-30.0, -12.5, 5.0]))
    assert grey[:, 0].tolist() == [0, 128, 255]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()


def test_display_scale_and_enlarge() -> None:
    assert display_scale((64, 64)) == 5
    assert display_scale((2000, 10)) == 1
    assert display_scale((2, 2)) == 16  # capped
    image = np.arange(6).reshape(2, 3)
    assert enlarge(image, 2).tolist() == [
        [0, 0, 1, 1, 2, 2],
        [0, 0, 1, 1, 2, 2],
        [3, 3, 4, 4, 5, 5],
        [3, 3, 4, 4, 5, 5],
    ]


def test_outline_is_the_inner_border_of_the_mask() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    ring = outline(mask, 1)
    expected = mask.copy()
    expected[2, 2] = False
    assert (ring == expected).all()
    # Enlarged x2: the 6 x 6 block keeps only its 1-pixel border (20 pixels).
    assert outline(mask, 2).sum() == 20
    # The picture's own edge is not an edge of the mask.
    assert not outline(np.ones((4, 4), dtype=bool), 3).any()
    assert outline(mask, 4, width=2).sum() == 12 * 12 - 8 * 8


def test_picture_draws_cloud_then_field_outline_on_the_enlarged_frame() -> None:
    colours = np.full((4, 4, 3), 100, dtype=np.uint8)
    field = np.zeros((4, 4), dtype=bool)
    field[1:3, 1:3] = True
    cloud = np.zeros((4, 4), dtype=bool)
    cloud[:, :2] = True
    image = decode(picture(colours, scale=3, field_mask=field, cloud_mask=cloud))
    assert image.shape == (12, 12, 3)
    assert tuple(image[3, 3]) == FIELD_RGB  # field corner: field drawn over the cloud line
    assert tuple(image[0, 5]) == CLOUD_RGB  # right edge of the cloud, top row
    assert tuple(image[0, 11]) == (100, 100, 100)
    # a dark line just outside the field, so that its outline shows on light ground too
    assert tuple(image[2, 4]) == tuple(image[9, 4]) == FIELD_HALO_RGB
    assert tuple(image[4, 2]) == tuple(image[4, 9]) == FIELD_HALO_RGB


def test_png_and_data_url_round_trip() -> None:
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255
    png = png_bytes(rgba)
    assert (decode(png) == rgba).all()
    assert data_url(png).startswith("data:image/png;base64,iVBOR")


def test_colour_bar_has_the_requested_size_and_refuses_unknown_kinds() -> None:
    bar = decode(colour_bar("ndvi", width_px=50, height_px=4))
    assert bar.shape == (4, 50, 3)
    with pytest.raises(InputError, match="Unknown legend"):
        colour_bar("rainbow")


@pytest.fixture(scope="module")
def utm_grid() -> Grid:
    """A 10 m grid in UTM 31N, 12 x 20 pixels, 200 km east of the central meridian (so the
    UTM grid is rotated by about 2 degrees against lon/lat)."""
    return Grid("EPSG:32631", 10.0, 700_000.0, 5_629_700.0, width=20, height=12)


def test_lonlat_warp_puts_every_pixel_where_it_lies(utm_grid: Grid) -> None:
    warp = LonLatWarp.for_grid(utm_grid, oversample=3)
    west, south, east, north = warp.bounds
    assert warp.folium_bounds == [[south, west], [north, east]]
    colours = np.zeros((*utm_grid.shape, 3), dtype=np.uint8)
    colours[..., 0] = np.arange(utm_grid.height)[:, None]
    colours[..., 1] = np.arange(utm_grid.width)[None, :]
    out = warp.apply(colours)
    height, width = out.shape[:2]
    to_lonlat = Transformer.from_crs(utm_grid.crs, "EPSG:4326", always_xy=True)
    for row, col in [(0, 0), (5, 7), (11, 19), (3, 15)]:
        x = utm_grid.x0 + (col + 0.5) * 10.0
        y = utm_grid.y0 - (row + 0.5) * 10.0
        lon, lat = to_lonlat.transform(x, y)
        i = int((north - lat) / (north - south) * height)
        j = int((lon - west) / (east - west) * width)
        assert out[i, j, 3] == 255
        assert (out[i, j, 0], out[i, j, 1]) == (row, col)
    # Every source pixel shows up, and the lon/lat corners outside the rotated grid are clear.
    seen = {(int(r), int(c)) for r, c, a in out[..., [0, 1, 3]].reshape(-1, 3) if a}
    assert len(seen) == utm_grid.width * utm_grid.height
    assert (out[..., 3] == 0).sum() > 0


def test_lonlat_warp_hides_invalid_pixels_and_caps_its_size(utm_grid: Grid) -> None:
    valid = np.ones(utm_grid.shape, dtype=bool)
    valid[:, :10] = False
    warp = LonLatWarp.for_grid(utm_grid, oversample=4, max_px=40)
    assert max(warp.rows.shape) == 40
    out = warp.apply(np.full((*utm_grid.shape, 3), 9, dtype=np.uint8), valid=valid)
    shown = out[..., 3] == 255
    assert shown.any()
    assert (out[..., 0][shown] == 9).all()
    # Only the eastern half is shown: nothing opaque in the western third of the picture.
    assert not shown[:, : out.shape[1] // 3].any()
