from __future__ import annotations

import pytest
from repo_paths import LABEL_CONFIGS, label_config

from xsam_backend.errors import LabelConfigError
from xsam_backend.labelstudio.config import parse_label_config


@pytest.mark.parametrize("path", sorted(LABEL_CONFIGS.glob("*.xml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(path):
    spec = parse_label_config(path.read_text())
    assert spec.image_key == "image"
    assert spec.outputs, "every shipped config writes masks somewhere"


def test_interactive_brush_roles():
    spec = parse_label_config(label_config("interactive_brush"))
    assert [(o.name, o.kind) for o in spec.outputs] == [("brush", "brush")]
    roles = {p.name: (p.kind, p.role) for p in spec.prompts}
    assert roles["kp"] == ("keypoint", "interactive")
    assert roles["rect"] == ("rectangle", "interactive")
    assert spec.output_for_label("Object").name == "brush"


def test_similar_and_text_roles():
    similar = parse_label_config(label_config("find_similar"))
    assert similar.prompt_control("similar_kp").role == "similar"
    text = parse_label_config(label_config("text_prompt"))
    assert text.prompt_control("referring").role == "referring"
    caption = parse_label_config(
        '<View><Image name="img" value="$photo"/><BrushLabels name="b" toName="img"><Label value="A"/></BrushLabels>'
        '<TextArea name="caption" toName="img"/><TextArea name="reason_q" toName="img"/></View>'
    )
    assert caption.image_key == "photo"
    assert caption.prompt_control("caption").role == "caption"
    assert caption.prompt_control("reason_q").role == "reasoning"


def test_output_priority_and_predicted_values():
    spec = parse_label_config(
        '<View><Image name="image" value="$image"/>'
        '<RectangleLabels name="box" toName="image"><Label value="Vehicle" predicted_values="car, truck"/></RectangleLabels>'
        '<PolygonLabels name="poly" toName="image"><Label value="Vehicle"/><Label value="Tree"/></PolygonLabels>'
        "</View>"
    )
    assert spec.output_for_label("Vehicle").name == "poly"
    assert spec.output_for_label("Tree").name == "poly"
    assert spec.class_names == (("car", "Vehicle"), ("truck", "Vehicle"), ("Tree", "Tree"))


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("", "empty"),
        ("<View><Text name='t' value='$text'/><Choices name='c' toName='t'><Choice value='a'/></Choices></View>", "needs an <Image>"),
        (
            '<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
            '<BrushLabels name="x" toName="a"><Label value="L"/></BrushLabels></View>',
            "2 <Image> objects",
        ),
        (
            '<View><Image name="image" value="$image"/>'
            '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="L"/></KeyPointLabels></View>',
            "no control the backend can write masks into",
        ),
        (
            '<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image"><Label value="A"/></BrushLabels>'
            '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="B"/></KeyPointLabels></View>',
            "labels ['B'] that no output control has",
        ),
        ("<View><Image", "not valid Label Studio XML"),
    ],
)
def test_refused_configs_say_why(config, reason):
    with pytest.raises(LabelConfigError, match=r".*") as info:
        parse_label_config(config)
    assert reason in info.value.message
    assert info.value.status == 422


def test_refusal_is_cached_and_still_raised():
    bad = '<View><Image name="image" value="$image"/></View>'
    for _ in range(2):
        with pytest.raises(LabelConfigError):
            parse_label_config(bad)
