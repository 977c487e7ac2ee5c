"""Structure-aware fuzzing with hypothesis: bodies close to what Label Studio sends, with one part broken.

Where schemathesis (``test_fuzz_openapi.py``) explores the documented shapes, these strategies
start from real payloads (the shipped label configs, smart keypoints, rectangles, brush
scribbles, text regions, task image URLs of every form) and replace fields with junk of any JSON
type, so the requests reach the label config parser, the prompt builder, the media fetcher (the
hostile images of ``reliability_support``), the engine and the renderer. Raw byte bodies and odd
content types cover the JSON layer. Every answer is a 200, or an error naming the problem; never
a 5xx.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import H, W, assert_clear_error, hostile_images, keypoint, make_app
from repo_paths import LABEL_CONFIGS

from xsam_backend.masks import encode_brush_rle

pytestmark = pytest.mark.fuzz

CONFIGS = {path.stem: path.read_text() for path in sorted(LABEL_CONFIGS.glob("*.xml"))}
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

# Any JSON value, kept small: the point is the wrong type or value in the right place.
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
numbers = st.one_of(
    st.floats(min_value=5, max_value=95),
    st.floats(min_value=-50, max_value=150),
    st.integers(-10, 110),
    st.sampled_from([0, 100, 1e308, -0.0]),
)


@pytest.fixture(scope="module")
def app(fuzz_root: Path) -> Flask:
    return make_app(fuzz_root, max_tasks_per_request=6, max_prompt_regions=6)


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _check(response: Any, context: str) -> None:
    assert response.status_code < 500, (context, response.get_data(as_text=True)[:500])
    if response.status_code >= 400:
        assert_clear_error(response.status_code, response.get_data(), context)
    else:
        assert isinstance(response.get_json(), dict), context


# -- strategies ---------------------------------------------------------------------------------


def _scribble(width: int, height: int) -> list[int]:
    mask = np.zeros((height, width), bool)
    mask[height // 2 - 2 : height // 2 + 2, width // 2 - 3 : width // 2 + 3] = True
    return [int(v) for v in encode_brush_rle(mask)]


SCRIBBLE = _scribble(W, H)


POLARITIES = st.sampled_from([True, True, False, None])
CONTEXT_KINDS = st.integers(0, 9)
REGION_COUNTS = st.integers(1, 3)
ROTATIONS = st.sampled_from([0, 0, 30, -90, 400])
BREAKS = st.sampled_from([0, 0, 0, 1, 2])
# Not 0: hypothesis draws the simplest integer far more often than one time in ten.
ONE_IN_TEN = st.integers(0, 9).map(lambda n: n == 7)
RAW_KINDS = st.integers(0, 3)
DEPTHS = st.integers(1, 5000)


# The prompt controls of each shipped config: (kind, control name).
PROMPT_CONTROLS = {
    "find_similar": [("keypoint", "similar_kp"), ("rectangle", "similar_rect")],
    "interactive_brush": [("keypoint", "kp"), ("rectangle", "rect"), ("brush", "brush")],
    "interactive_polygon": [("keypoint", "kp"), ("rectangle", "rect")],
    "prelabel": [("brush", "brush")],
    "text_prompt": [("text", "referring"), ("brush", "brush")],
}


@st.composite
def region(draw: st.DrawFn, config: str) -> dict[str, Any]:
    """One region of ``config``'s prompt controls (rarely another's), valid, then maybe a few fields broken."""
    kind, name = draw(
        st.sampled_from(PROMPT_CONTROLS[config if not draw(ONE_IN_TEN) else "interactive_brush"])
    )
    if kind == "keypoint":
        base = keypoint(draw(numbers) * W / 100, draw(numbers) * H / 100, name=name)
        base["is_positive"] = draw(POLARITIES)
    elif kind == "rectangle":
        base = {
            "type": "rectanglelabels",
            "from_name": name,
            "to_name": "image",
            "original_width": W,
            "original_height": H,
            "value": {
                "x": draw(numbers),
                "y": draw(numbers),
                "width": draw(numbers),
                "height": draw(numbers),
                "rotation": draw(ROTATIONS),
                "rectanglelabels": ["Object"],
            },
        }
    elif kind == "brush":
        base = {
            "type": "brushlabels",
            "from_name": "brush",
            "to_name": "image",
            "original_width": W,
            "original_height": H,
            "value": {"format": "rle", "rle": SCRIBBLE, "brushlabels": ["Object"]},
        }
    else:
        base = {
            "type": "textarea",
            "from_name": "referring",
            "to_name": "image",
            "value": {"text": ["the disk"]},
        }
    for _ in range(draw(BREAKS)):
        target = base["value"] if draw(st.booleans()) and isinstance(base.get("value"), dict) else base
        key = draw(st.sampled_from([*target, "extra"]))
        if draw(st.booleans()):
            target[key] = draw(junk)
        else:
            target.pop(key, None)
    return base


images = st.sampled_from(
    [f"/data/local-files/?d=images/{name}" for name in hostile_images()]
    + [
        "/data/local-files/?d=images/missing.png",
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/?d=/etc/passwd",
        "/data/local-files/?d=images/%2e%2e/%2e%2e/etc/passwd",
        "/data/local-files/?d=",
        "/data/upload/3/x.png",
        "/data/upload/../../etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:6379/",
        "http://[::1]/x.png",
        "file:///etc/passwd",
        "s3://bucket/key.png",
        "gopher://127.0.0.1:6379/_INFO",
        "",
        " ",
    ]
)


IMAGE_VALUES = images | st.text(max_size=20)


@st.composite
def task(draw: st.DrawFn) -> Any:
    if draw(ONE_IN_TEN):
        return draw(junk)
    data: Any = draw(junk) if draw(ONE_IN_TEN) else {"image": draw(IMAGE_VALUES)}
    return {"id": draw(junk) if draw(ONE_IN_TEN) else draw(st.integers(1, 10**6)), "data": data}


TASK_LISTS = st.lists(task(), min_size=1, max_size=3)
LONG_TASK_LISTS = st.lists(task(), min_size=5, max_size=7)
CONFIG_NAMES = st.sampled_from(sorted(CONFIGS))
PROJECTS = st.sampled_from(["3.1795316825", "3", 3, None, {"id": 3}])
TOP_KEYS = st.sampled_from(["tasks", "label_config", "project", "params", "model_version"])


@st.composite
def contexts(draw: st.DrawFn, config: str) -> Any:
    """``params.context``: mostly one to three regions of ``config``, sometimes none, too many or junk."""
    choice = draw(CONTEXT_KINDS)
    if choice <= 5:
        return {"result": [draw(region(config)) for _ in range(draw(REGION_COUNTS))]}
    if choice == 6:
        return {"result": [draw(region(config)) for _ in range(7)]}  # over MAX_PROMPT_REGIONS
    return draw(st.sampled_from([None, {}]) | st.builds(lambda j: {"result": j}, junk) | junk)


@st.composite
def predict_body(draw: st.DrawFn) -> Any:
    config = draw(CONFIG_NAMES)
    body: dict[str, Any] = {
        "tasks": draw(LONG_TASK_LISTS if draw(ONE_IN_TEN) else TASK_LISTS),
        "label_config": CONFIGS[config],
        "project": draw(PROJECTS),
        "params": {"login": None, "password": None, "context": draw(contexts(config))},
    }
    if draw(ONE_IN_TEN):
        body[draw(TOP_KEYS)] = draw(junk)
    return body


# -- tests ----------------------------------------------------------------------------------------


def test_predict_near_valid_bodies(client: FlaskClient, fuzz_counter: Counter[str]) -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=1400)
    @given(body=predict_body())
    def run(body: Any) -> None:
        response = client.post("/predict", json=body)
        _check(response, json.dumps(body, default=str)[:400])
        outcomes[str(response.status_code)] += 1
        if response.status_code == 200:
            results = response.get_json()["results"]
            assert len(results) == len(body["tasks"])
            assert all(set(r) >= {"result", "score", "model_version"} for r in results)
            outcomes["masks"] += sum(bool(r["result"]) for r in results)

    run()
    fuzz_counter["hypothesis predict (near-valid)"] += sum(n for k, n in outcomes.items() if k.isdigit())
    # The generated bodies reach every layer: the engine answers some, each guard refuses others.
    assert outcomes["masks"] >= 20, outcomes
    assert {"200", "400", "413", "422"} <= set(outcomes) and outcomes["403"] + outcomes["404"] > 0, outcomes


def _mutate_xml(text: str, cuts: list[tuple[int, int, str]]) -> str:
    for start, length, insert in cuts:
        at = start % (len(text) + 1)
        text = text[:at] + insert + text[at + length :]
    return text


xml_bits = st.sampled_from(
    ["<", ">", "/>", '"', "&", "&amp;", "<![CDATA[x]]>", '<Label value="x"/>', 'smart="true"',
     '<KeyPointLabels name="k" toName="image"/>', 'toName="nope"', "$", '<Image name="i2" value="$i2"/>',
     "<!DOCTYPE x [<!ENTITY e 'x'>]>", "\x00", "\ufeff", ""]
) | st.text(max_size=8)  # fmt: skip


@settings(FUZZ, max_examples=1200)
@given(
    config=st.sampled_from(sorted(CONFIGS)),
    cuts=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 30), xml_bits), min_size=1, max_size=4),
    project=junk,
)
def test_setup_mutated_label_configs(
    client: FlaskClient,
    config: str,
    cuts: list[tuple[int, int, str]],
    project: Any,
    fuzz_counter: Counter[str],
) -> None:
    fuzz_counter["hypothesis setup (mutated configs)"] += 1
    schema = _mutate_xml(CONFIGS[config], cuts)
    response = client.post("/setup", json={"schema": schema, "project": project, "hostname": "http://ls"})
    _check(response, schema[:300])
    if response.status_code == 200:
        assert response.get_json()["model_version"]


content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "", "application/json; charset=bogus"]
)  # fmt: skip


@st.composite
def raw_body(draw: st.DrawFn) -> bytes:
    kind = draw(RAW_KINDS)
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    text = json.dumps(draw(junk), allow_nan=True)
    if kind == 2:
        return text.encode()
    # Valid JSON cut short or nested deeply.
    depth = draw(DEPTHS)
    return (("[" * depth) + text + ("]" * (depth if draw(st.booleans()) else depth // 2))).encode()


@settings(FUZZ, max_examples=1300)
@given(path=st.sampled_from(["/predict", "/setup", "/webhook"]), body=raw_body(), content_type=content_types)
def test_raw_bodies_and_content_types(
    client: FlaskClient, path: str, body: bytes, content_type: str, fuzz_counter: Counter[str]
) -> None:
    fuzz_counter["hypothesis raw bodies"] += 1
    response = client.post(path, data=body, content_type=content_type)
    _check(response, f"{path} {content_type} {body[:100]!r}")
    if path != "/webhook" or response.status_code != 200:
        assert response.status_code >= 400


@settings(FUZZ, max_examples=500)
@given(
    action=junk | st.sampled_from(["ANNOTATION_CREATED", "START_TRAINING", "PROJECT_UPDATED"]),
    project=junk,
    extra=st.dictionaries(st.text(max_size=8), junk, max_size=3),
)
def test_webhook_events(
    client: FlaskClient, action: Any, project: Any, extra: dict[str, Any], fuzz_counter: Counter[str]
) -> None:
    fuzz_counter["hypothesis webhook"] += 1
    response = client.post("/webhook", json={**extra, "action": action, "project": project})
    _check(response, repr(action)[:100])
    if not isinstance(action, str):
        assert response.status_code == 400 and "'action'" in response.get_json()["message"]
