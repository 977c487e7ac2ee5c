"""Polygons: fidelity by re-rasterising, parts, holes, specks, validity, percent frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from xsam_backend.errors import BadRequest
from xsam_backend.masks import (
    HolePolicy,
    PolygonSet,
    mask_to_polygons,
    percent_to_polygon,
    polygon_to_percent,
    rasterize_polygon,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _paint(result: PolygonSet, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for ring in result.polygons:
        out |= rasterize_polygon(ring, *shape)
    for fallback in result.fallback_masks:
        out |= fallback
    return out


def _assert_simple(result: PolygonSet) -> None:
    for ring in result.polygons:
        assert ring.dtype == np.float64 and ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 3
        poly = Polygon(ring)
        assert poly.is_valid and poly.area > 0
        assert not np.array_equal(ring[0], ring[-1])  # open ring


@st.composite
def blobs(draw: st.DrawFn) -> np.ndarray:
    """Masks of 1 to 3 overlapping ellipses, each at least 32 x 32 pixels."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    h, w = int(rng.integers(70, 120)), int(rng.integers(70, 120))
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        center = (int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20)))
        axes = (int(rng.integers(16, 30)), int(rng.integers(16, 30)))
        cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


@settings(max_examples=40, deadline=None)
@given(blobs(), st.sampled_from([0.5, 1.0, 2.0]))
def test_polygons_rerasterise_with_iou_at_least_098(mask: np.ndarray, tolerance: float) -> None:
    result = mask_to_polygons(mask, tolerance_px=tolerance, hole_policy=HolePolicy(large_hole="split"))
    _assert_simple(result)
    assert _iou(_paint(result, mask.shape), mask) >= 0.98


def test_square_is_exact_on_pixel_edges() -> None:
    mask = np.zeros((64, 50), bool)
    mask[10:42, 5:37] = True
    result = mask_to_polygons(mask)
    assert len(result.polygons) == 1
    ring = result.polygons[0]
    assert {tuple(p) for p in ring} == {(5.0, 10.0), (37.0, 10.0), (37.0, 42.0), (5.0, 42.0)}
    np.testing.assert_array_equal(rasterize_polygon(ring, 64, 50), mask)


def test_full_image_reaches_the_borders_in_percent() -> None:
    result = mask_to_polygons(np.ones((30, 40), np.uint8) * 255)
    points = polygon_to_percent(result.polygons[0], 40, 30)
    assert sorted(map(tuple, points)) == [(0.0, 0.0), (0.0, 100.0), (100.0, 0.0), (100.0, 100.0)]


def test_multi_part_gives_one_polygon_per_part_largest_first() -> None:
    mask = np.zeros((80, 80), bool)
    mask[5:25, 5:25] = True
    mask[40:75, 40:75] = True
    result = mask_to_polygons(mask)
    assert len(result.polygons) == 2
    assert Polygon(result.polygons[0]).area == 35 * 35
    assert Polygon(result.polygons[1]).area == 20 * 20


def test_specks_below_min_area_are_dropped() -> None:
    mask = np.zeros((60, 60), bool)
    mask[10:40, 10:40] = True
    mask[50, 50] = True
    mask[55:58, 2:5] = True  # 9 pixels
    assert len(mask_to_polygons(mask, min_area_px=16).polygons) == 1
    assert len(mask_to_polygons(mask, min_area_px=9).polygons) == 2
    assert len(mask_to_polygons(mask, min_area_px=0).polygons) == 3


def test_thin_lines_and_diagonal_touching_parts_stay_valid() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5, 2:30] = True  # a 1-pixel line
    np.fill_diagonal(mask[10:30, 10:30], True)  # pixels touching only at corners
    mask[32:38, 32:38] = True
    result = mask_to_polygons(mask, min_area_px=1)
    _assert_simple(result)
    assert _iou(_paint(result, mask.shape), mask) >= 0.98


def _ring_with_hole(hole: int) -> np.ndarray:
    mask = np.zeros((70, 70), bool)
    mask[5:65, 5:65] = True
    start = 35 - hole // 2
    mask[start : start + hole, start : start + hole] = False
    return mask


def test_small_holes_are_filled_and_the_outer_ring_kept() -> None:
    mask = _ring_with_hole(4)  # 16 pixels, under both default limits
    result = mask_to_polygons(mask)
    assert len(result.polygons) == 1 and not result.fallback_masks
    assert Polygon(result.polygons[0]).area == 60 * 60


def test_large_hole_goes_to_brush_by_default() -> None:
    mask = _ring_with_hole(20)
    result = mask_to_polygons(mask)
    assert not result.polygons and len(result.fallback_masks) == 1
    np.testing.assert_array_equal(result.fallback_masks[0], mask)


def test_large_hole_fallback_only_takes_its_own_part() -> None:
    mask = _ring_with_hole(20)
    mask[30:40, 30:40] = True  # an island inside the hole: its own part
    result = mask_to_polygons(mask)
    assert len(result.polygons) == 1 and len(result.fallback_masks) == 1
    assert not result.fallback_masks[0][35, 35]
    np.testing.assert_array_equal(_paint(result, mask.shape), mask)


def test_large_hole_split_covers_the_part_exactly() -> None:
    mask = _ring_with_hole(20)
    mask[10:15, 50:55] = False  # a second hole
    result = mask_to_polygons(
        mask, tolerance_px=0, hole_policy=HolePolicy(large_hole="split", small_hole_px=0)
    )
    _assert_simple(result)
    assert len(result.polygons) >= 3
    np.testing.assert_array_equal(_paint(result, mask.shape), mask)


def test_large_hole_fill_keeps_the_outer_ring() -> None:
    result = mask_to_polygons(_ring_with_hole(20), hole_policy=HolePolicy(large_hole="fill"))
    assert len(result.polygons) == 1 and Polygon(result.polygons[0]).area == 60 * 60


def test_hole_policy_checks_its_fields() -> None:
    with pytest.raises(BadRequest):
        HolePolicy(large_hole="drop")  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        HolePolicy(small_hole_fraction=2.0)


def test_empty_mask_gives_nothing() -> None:
    assert mask_to_polygons(np.zeros((10, 10), bool)) == PolygonSet()


def test_one_pixel_wide_images() -> None:
    for shape in ((1, 50), (50, 1)):
        result = mask_to_polygons(np.ones(shape, bool), min_area_px=1)
        assert len(result.polygons) == 1
        np.testing.assert_array_equal(rasterize_polygon(result.polygons[0], *shape), np.ones(shape, bool))


def test_percent_round_trip() -> None:
    ring = np.array([[0.0, 0.0], [640.0, 0.0], [320.0, 480.0]])
    points = polygon_to_percent(ring, 640, 480)
    assert points == [[0.0, 0.0], [100.0, 0.0], [50.0, 100.0]]
    np.testing.assert_allclose(percent_to_polygon(points, 640, 480), ring)


def test_rasterize_uses_pixel_centres_and_shares_no_pixel_across_an_edge() -> None:
    left = np.array([[0.0, 0.0], [2.5, 0.0], [2.5, 4.0], [0.0, 4.0]])
    right = np.array([[2.5, 0.0], [5.0, 0.0], [5.0, 4.0], [2.5, 4.0]])
    a, b = rasterize_polygon(left, 4, 5), rasterize_polygon(right, 4, 5)
    assert not (a & b).any() and (a | b).all()
    # Column 2 has its centre at x = 2.5: the right edge of `left`, the left edge of `right`.
    assert a[:, :2].all() and not a[:, 2:].any() and b[:, 2:].all()


@pytest.mark.parametrize("points", [[[0, 0], [1, 1]], [[0, 0], [1, 1], [np.nan, 2]], np.zeros((3, 3))])
def test_bad_points(points: object) -> None:
    with pytest.raises(BadRequest):
        polygon_to_percent(points, 10, 10)  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        rasterize_polygon(points, 10, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mask", [np.zeros((4, 4), np.float64), np.zeros((2, 2, 2), bool), np.zeros((4, 0), bool)]
)
def test_bad_masks(mask: np.ndarray) -> None:
    with pytest.raises(BadRequest):
        mask_to_polygons(mask)
