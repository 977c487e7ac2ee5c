from __future__ import annotations

import numpy as np
import pytest
from repo_paths import label_config

from xsam_backend.errors import PayloadTooLarge, PromptError
from xsam_backend.labelstudio.config import parse_label_config
from xsam_backend.labelstudio.context import build_prompt
from xsam_backend.masks import decode_compact_rle, encode_brush_rle
from xsam_backend.prompt import Prompt, Task

BRUSH = parse_label_config(label_config("interactive_brush"))


def keypoint(x, y, positive=None, label="Object", name="kp", width=640, height=480):
    region = {
        "id": f"k{x}{y}",
        "type": "keypointlabels",
        "from_name": name,
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }
    if positive is not None:
        region["is_positive"] = positive
    return region


def rectangle(x, y, w, h, rotation=0, name="rect", width=640, height=480):
    return {
        "type": "rectanglelabels",
        "from_name": name,
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": ["Object"]},
    }


def test_no_context_is_automatic_prelabelling():
    prompt = build_prompt(BRUSH, None, max_regions=8)
    assert prompt.task is Task.GENERIC
    assert prompt.classes == ("Object", "Background object")
    assert build_prompt(BRUSH, {"result": []}, max_regions=8).task is Task.GENERIC


def test_keypoints_percent_to_pixels_and_negative_points():
    context = {"result": [keypoint(50, 25, True), keypoint(10, 10, False), keypoint(75, 50)]}
    prompt = build_prompt(BRUSH, context, max_regions=8)
    assert prompt.task is Task.INTERACTIVE
    assert prompt.label == "Object"
    assert prompt.image_size == (480, 640)
    assert len(prompt.regions) == 1
    assert prompt.regions[0].kind == "point"
    assert prompt.regions[0].points == [(320.0, 120.0), (480.0, 240.0)]  # missing is_positive counts as positive
    assert prompt.negative_points == ((64.0, 48.0),)


def test_captured_interactive_payload(captured_payloads):
    context = captured_payloads["predict_request_interactive_as_received_by_predict()"]["context"]
    spec = parse_label_config(
        '<View><Image name="image" value="$image"/><BrushLabels name="brush" toName="image"><Label value="Object"/></BrushLabels>'
        '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>'
        '<RectangleLabels name="rect" toName="image" smart="true"><Label value="Object"/></RectangleLabels>'
        '<PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels></View>'
    )
    prompt = build_prompt(spec, context, max_regions=64)
    assert prompt.task is Task.INTERACTIVE
    assert prompt.regions


def test_rectangle_and_rotation():
    prompt = build_prompt(BRUSH, {"result": [rectangle(10, 20, 50, 25)]}, max_regions=8)
    assert prompt.regions[0].kind == "box"
    assert prompt.regions[0].coords == pytest.approx((64.0, 96.0, 384.0, 216.0))
    rotated = build_prompt(BRUSH, {"result": [rectangle(50, 50, 10, 10, rotation=90)]}, max_regions=8)
    x0, y0, x1, y1 = rotated.regions[0].coords
    # 64 px wide, 48 px high, turned 90 degrees clockwise about its top-left corner
    assert (x0, y0, x1, y1) == pytest.approx((320 - 48, 240, 320, 240 + 64))


def test_brush_scribble_becomes_mask_region():
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 5:40] = 255
    region = {
        "type": "brushlabels",
        "from_name": "brush",
        "to_name": "image",
        "original_width": 64,
        "original_height": 48,
        "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": ["Object"]},
    }
    prompt = build_prompt(BRUSH, {"result": [region]}, max_regions=8)
    assert prompt.regions[0].kind == "scribble"
    np.testing.assert_array_equal(decode_compact_rle(prompt.regions[0].mask), mask > 0)


def test_similar_control_gives_one_region_per_example():
    spec = parse_label_config(label_config("find_similar"))
    context = {"result": [keypoint(10, 10, True, name="similar_kp"), keypoint(60, 60, True, name="similar_kp")]}
    prompt = build_prompt(spec, context, max_regions=8)
    assert prompt.task is Task.SIMILAR
    assert [r.points for r in prompt.regions] == [[(64.0, 48.0)], [(384.0, 288.0)]]


def test_text_prompt():
    spec = parse_label_config(label_config("text_prompt"))
    region = {"type": "textarea", "from_name": "referring", "to_name": "image", "value": {"text": ["the dog on the left"]}}
    prompt = build_prompt(spec, {"result": [region]}, max_regions=8)
    assert prompt.task is Task.REFERRING
    assert prompt.text == "the dog on the left"
    assert prompt.label == "Object"


def test_prompt_round_trips_json():
    prompt = build_prompt(BRUSH, {"result": [keypoint(50, 50, True), keypoint(5, 5, False)]}, max_regions=8)
    assert Prompt.from_json(prompt.to_json()) == prompt


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"result": [keypoint(10, 10, False)]}, "no usable prompt"),
        ({"result": [{"from_name": "zzz", "value": {}}]}, "are not prompt controls"),
        ({"result": [keypoint("a", 10)]}, "value.x must be a finite number"),
        ({"result": [keypoint(10, 10, width=0)]}, "original_width"),
        ({"result": [keypoint(10, 10), keypoint(10, 10, width=320)]}, "disagree on the image size"),
        ({"result": [rectangle(10, 10, 0, 5)]}, "positive width and height"),
        ({"result": ["nope"]}, "must be an object"),
        ("context", "params.context must be an object"),
    ],
)
def test_bad_contexts_name_the_problem(context, message):
    with pytest.raises(PromptError) as info:
        build_prompt(BRUSH, context, max_regions=8)
    assert message in info.value.message


def test_too_many_regions():
    with pytest.raises(PayloadTooLarge):
        build_prompt(BRUSH, {"result": [keypoint(1, 1)] * 9}, max_regions=8)
