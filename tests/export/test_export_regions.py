"""Label Studio regions → pixel-frame instances."""

from __future__ import annotations

import numpy as np
import pytest
from export_samples import CATEGORIES, LABEL_CONFIG, brush_region, disc, polygon_region, rectangle_region

from xsam_backend.export.regions import categories_of, parse_result, rectangle_corners
from xsam_backend.labelstudio.config import parse_label_config
from xsam_backend.masks import rasterize_polygon

H, W = 60, 80


def test_categories_follow_the_label_config_order_once_each() -> None:
    assert categories_of(parse_label_config(LABEL_CONFIG)) == CATEGORIES


def test_brush_regions_decode_exactly() -> None:
    rng = np.random.default_rng(0)
    speckled = rng.random((H, W)) < 0.3
    parsed = parse_result(
        [brush_region(speckled, "Cat"), brush_region(disc(H, W, 20, 30, 9), "Dog", "b2")], CATEGORIES
    )
    assert parsed.size == (H, W)
    assert parsed.skipped == []
    assert [(i.label, i.kind, i.region_id) for i in parsed.instances] == [
        ("Cat", "brush", "b1"),
        ("Dog", "brush", "b2"),
    ]
    np.testing.assert_array_equal(parsed.instances[0].mask, speckled)
    np.testing.assert_array_equal(parsed.instances[1].mask, disc(H, W, 20, 30, 9))
    assert parsed.instances[0].polygon is None


def test_polygon_regions_keep_their_pixel_vertices_and_rasterise_by_pixel_centres() -> None:
    points = [[10.0, 5.0], [50.0, 8.0], [30.0, 40.0]]
    parsed = parse_result([polygon_region(points, "Bird", W, H)], CATEGORIES)
    (instance,) = parsed.instances
    assert instance.kind == "polygon"
    np.testing.assert_allclose(instance.polygon, points, atol=1e-9)
    np.testing.assert_array_equal(instance.mask, rasterize_polygon(np.array(points), H, W))


def test_rectangles_cover_exactly_their_pixels() -> None:
    parsed = parse_result([rectangle_region((10, 20, 30, 25), "Car", W, H)], CATEGORIES)
    (instance,) = parsed.instances
    expected = np.zeros((H, W), bool)
    expected[20:25, 10:30] = True
    np.testing.assert_array_equal(instance.mask, expected)
    np.testing.assert_allclose(instance.polygon, [[10, 20], [30, 20], [30, 25], [10, 25]], atol=1e-9)


def test_rectangle_rotation_turns_clockwise_about_the_top_left_corner() -> None:
    value = {"x": 50.0, "y": 50.0, "width": 10.0, "height": 5.0, "rotation": 90}
    corners = rectangle_corners(value, 100, 100)
    # 10 px wide, 5 px high at (50, 50), turned a quarter clockwise: the top edge now points down.
    np.testing.assert_allclose(corners, [[50, 50], [50, 60], [45, 60], [45, 50]], atol=1e-9)


def test_unusable_regions_are_skipped_with_a_reason_and_other_types_ignored() -> None:
    good = brush_region(disc(H, W, 40, 30, 10), "Cat", "ok")
    unknown = brush_region(disc(H, W, 40, 30, 10), "Horse", "unknown")
    no_size = polygon_region([[1, 1], [9, 1], [5, 9]], "Dog", W, H, "no-size")
    del no_size["original_width"]
    other_size = rectangle_region((1, 1, 5, 5), "Car", W * 2, H * 2, "other-size")
    two_labels = rectangle_region((1, 1, 5, 5), "Car", W, H, "two")
    two_labels["value"]["rectanglelabels"] = ["Car", "Cat"]
    bad_rle = brush_region(disc(H, W, 40, 30, 10), "Cat", "bad-rle")
    bad_rle["value"]["rle"] = [1, 2, 3]
    choice = {
        "id": "c",
        "type": "choices",
        "from_name": "quality",
        "to_name": "image",
        "value": {"choices": ["good"]},
    }
    parsed = parse_result([good, unknown, no_size, other_size, two_labels, bad_rle, choice], CATEGORIES)
    assert [i.region_id for i in parsed.instances] == ["ok"]
    reasons = dict(parsed.skipped)
    assert set(reasons) == {"unknown", "no-size", "other-size", "two", "bad-rle"}
    assert "not an output label" in reasons["unknown"]
    assert "original_width" in reasons["no-size"]
    assert "differs" in reasons["other-size"]
    assert "exactly one label" in reasons["two"]
    assert "brush RLE" in reasons["bad-rle"]


def test_a_result_without_regions_has_no_size() -> None:
    assert parse_result([], CATEGORIES).size is None


@pytest.mark.parametrize(
    "value", [{"x": 1, "y": 1, "width": 0, "height": 3}, {"x": "a", "y": 1, "width": 2, "height": 3}]
)
def test_degenerate_rectangles_are_refused(value: dict[str, object]) -> None:
    region = rectangle_region((1, 1, 5, 5), "Car", W, H)
    region["value"].update(value)
    parsed = parse_result([region], CATEGORIES)
    assert parsed.instances == [] and "rectangle" in parsed.skipped[0][1]
