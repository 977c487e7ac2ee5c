from __future__ import annotations

import numpy as np
import pytest

from xsam_backend.errors import BackendError
from xsam_backend.labelstudio.config import parse_label_config
from xsam_backend.labelstudio.render import render_prediction
from xsam_backend.masks import decode_brush_rle, percent_to_polygon, rasterize_polygon
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.segment import EngineResult, Segment

H, W = 90, 120
CLICK = Prompt(task=Task.INTERACTIVE, regions=(VisualRegion("point", (10.0, 10.0)),), label="Car")
AUTO = Prompt(task=Task.GENERIC, classes=("car", "truck", "Tree"))


def spec(*controls: str):
    return parse_label_config('<View><Image name="image" value="$image"/>' + "".join(controls) + "</View>")


BRUSH = '<BrushLabels name="brush" toName="image"><Label value="Car"/><Label value="Tree"/></BrushLabels>'
POLY = '<PolygonLabels name="poly" toName="image"><Label value="Car"/><Label value="Tree"/></PolygonLabels>'
RECT = '<RectangleLabels name="box" toName="image"><Label value="Car"/><Label value="Tree"/></RectangleLabels>'


def ring_mask():
    """A 60x60 square with a 30x30 hole: too large a hole for a polygon to drop."""
    mask = np.zeros((H, W), bool)
    mask[10:70, 20:80] = True
    mask[25:55, 35:65] = False
    return mask


def result(*segments):
    return EngineResult(tuple(segments), "v1", "test")


def test_brush_region_decodes_to_the_mask():
    mask = ring_mask()
    prediction = render_prediction(spec(BRUSH), result(Segment(mask, None, 0.8)), CLICK)
    (region,) = prediction["result"]
    assert region["value"]["brushlabels"] == ["Car"]
    np.testing.assert_array_equal(decode_brush_rle(region["value"]["rle"], H, W), mask)
    assert prediction["score"] == 0.8 and prediction["model_version"] == "v1"


def test_rectangle_is_the_tight_box_in_percent():
    mask = np.zeros((H, W), bool)
    mask[9:45, 12:60] = True
    prediction = render_prediction(spec(RECT), result(Segment(mask, None, 0.5)), CLICK)
    value = prediction["result"][0]["value"]
    assert value["x"] == pytest.approx(100 * 12 / W)
    assert value["y"] == pytest.approx(100 * 9 / H)
    assert value["width"] == pytest.approx(100 * 48 / W)
    assert value["height"] == pytest.approx(100 * 36 / H)


def test_polygon_with_a_large_hole_falls_back_to_brush_when_the_config_has_one():
    mask = ring_mask()
    prediction = render_prediction(spec(POLY, BRUSH), result(Segment(mask, None, 0.9)), CLICK)
    types = [r["type"] for r in prediction["result"]]
    # the poly control is preferred only when no brush holds the label: brush wins here
    assert types == ["brushlabels"]
    polygon_only = render_prediction(spec(POLY), result(Segment(mask, None, 0.9)), CLICK)
    (region,) = polygon_only["result"]
    filled = rasterize_polygon(percent_to_polygon(region["value"]["points"], W, H), H, W)
    assert filled[10:70, 20:80].all()  # the outer ring is kept, the hole filled (documented policy)


def test_multi_part_object_gives_one_polygon_per_part():
    mask = np.zeros((H, W), bool)
    mask[5:30, 5:30] = True
    mask[50:80, 70:110] = True
    prediction = render_prediction(spec(POLY), result(Segment(mask, None, 0.7)), CLICK)
    assert len(prediction["result"]) == 2
    union = np.zeros((H, W), bool)
    for region in prediction["result"]:
        union |= rasterize_polygon(percent_to_polygon(region["value"]["points"], W, H), H, W)
    assert (union & mask).sum() / (union | mask).sum() > 0.98


def test_class_names_map_to_labels_and_scores_average():
    config = spec('<BrushLabels name="brush" toName="image"><Label value="Vehicle" predicted_values="car,truck"/>'
                  '<Label value="Tree"/></BrushLabels>')
    a = np.zeros((H, W), bool)
    a[:10, :10] = True
    b = np.zeros((H, W), bool)
    b[50:, 50:] = True
    prediction = render_prediction(config, result(Segment(a, "truck", 0.6), Segment(b, "Tree", 0.8)), AUTO)
    assert [r["value"]["brushlabels"] for r in prediction["result"]] == [["Vehicle"], ["Tree"]]
    assert prediction["score"] == pytest.approx(0.7)


def test_empty_masks_and_unknown_labels_are_dropped():
    empty = np.zeros((H, W), bool)
    prediction = render_prediction(spec(BRUSH), result(Segment(empty, "Car", 0.9), Segment(ring_mask(), "Boat", 0.9)), AUTO)
    assert prediction == {"result": [], "score": 0.0, "model_version": "v1"}


def test_region_ids_are_unique():
    masks = [np.roll(ring_mask(), 5 * i, axis=1) for i in range(5)]
    prediction = render_prediction(spec(BRUSH), result(*(Segment(m, "Car", 0.5) for m in masks)), AUTO)
    ids = [r["id"] for r in prediction["result"]]
    assert len(set(ids)) == len(ids) == 5


def test_invalid_rendering_is_our_fault(monkeypatch):
    config = spec(BRUSH)
    monkeypatch.setattr(type(config.interface), "validate_prediction", lambda self, p, return_errors: ["broken"])
    with pytest.raises(BackendError) as info:
        render_prediction(config, result(Segment(ring_mask(), None, 0.5)), CLICK)
    assert info.value.status == 500


def test_brush_rle_header_is_checked(monkeypatch):
    import xsam_backend.labelstudio.render as render
    from xsam_backend.masks import encode_brush_rle

    monkeypatch.setattr(render, "encode_brush_rle", lambda mask: encode_brush_rle(np.ones((2, 2), bool)))
    with pytest.raises(BackendError, match="RLE header says 16 values"):
        render_prediction(spec(BRUSH), result(Segment(ring_mask(), None, 0.5)), CLICK)
    monkeypatch.setattr(render, "encode_brush_rle", lambda mask: [0, 0, 0])
    with pytest.raises(BackendError, match="malformed RLE header"):
        render_prediction(spec(BRUSH), result(Segment(ring_mask(), None, 0.5)), CLICK)


def test_grounded_caption_goes_into_the_caption_textarea():
    config = spec(BRUSH, '<TextArea name="caption" toName="image"/>')
    prompt = Prompt(task=Task.CAPTION, text="describe", label="Car")
    outcome = EngineResult((Segment(ring_mask(), None, 0.9, phrase="a red car"),), "v1", "xsam", caption="A red car parks.")
    prediction = render_prediction(config, outcome, prompt)
    brush, caption = prediction["result"]
    assert brush["meta"] == {"text": ["a red car"]}
    assert caption["type"] == "textarea" and caption["value"] == {"text": ["A red car parks."]}
