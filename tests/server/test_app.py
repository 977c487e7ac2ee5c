"""The HTTP protocol, through Flask's test client, on the real inline path (fallback engine, real files)."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface
from repo_paths import label_config

from xsam_backend.dispatch import InlineDispatcher
from xsam_backend.server.app import create_app
from xsam_backend.settings import Settings

BRUSH = label_config("interactive_brush")
POLYGON = label_config("interactive_polygon")
W, H = 160, 120


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """A document root with a red disk on a textured grey background (160x120)."""
    root = tmp_path_factory.mktemp("docroot")
    rng = np.random.default_rng(0)
    image = (rng.normal(120, 8, (H, W, 3))).clip(0, 255).astype(np.uint8)
    cv2.circle(image, (60, 50), 25, (30, 30, 220), -1)  # BGR red disk centred at x=60, y=50
    (root / "images").mkdir()
    cv2.imwrite(str(root / "images" / "disk.png"), image)
    return root


def make_client(image_root, **changes):
    settings = Settings(local_files_document_root=image_root, engine="fallback", media_cache_dir=image_root / "cache")
    settings = settings.with_changes(**changes)
    app = create_app(settings, dispatcher=InlineDispatcher(settings))
    return app.test_client()


@pytest.fixture(scope="module")
def client(image_root):
    return make_client(image_root)


def task(task_id=1, path="images/disk.png"):
    return {"id": task_id, "data": {"image": f"/data/local-files/?d={path}"}}


def keypoint(x_px, y_px, positive=True):
    return {
        "id": "kp1",
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "is_positive": positive,
        "value": {"x": 100 * x_px / W, "y": 100 * y_px / H, "width": 0.5, "keypointlabels": ["Object"]},
    }


def predict(client, config, tasks, context=None):
    body = {"tasks": tasks, "project": "3.1795316825", "label_config": config, "params": {"login": None, "password": None, "context": context}}
    return client.post("/predict", json=body)


def disk_iou(mask):
    reference = np.zeros((H, W), np.uint8)
    cv2.circle(reference, (60, 50), 25, 1, -1)
    reference = reference.astype(bool)
    return (mask & reference).sum() / (mask | reference).sum()


def test_health_says_which_engine(client):
    body = client.get("/health").get_json()
    assert body["status"] == "UP"
    assert body["engine"] == "fallback"
    assert body["dispatcher"] == "inline"
    assert body["model_version"].startswith("fallback")
    assert "no X-SAM weights" in body["engine_reason"] or "fallback" in body["engine_reason"]


def test_setup_returns_version_and_refuses_bad_configs(client):
    ok = client.post("/setup", json={"project": "3.1", "schema": BRUSH, "hostname": "http://localhost:8080", "access_token": "x"})
    assert ok.status_code == 200
    assert ok.get_json()["model_version"] == client.get("/health").get_json()["model_version"]
    bad = client.post("/setup", json={"project": "3.1", "schema": "<View><Text name='t' value='$t'/></View>"})
    assert bad.status_code == 422
    assert "needs an <Image>" in bad.get_json()["message"]


def test_interactive_keypoint_gives_a_valid_brush_on_the_object(client):
    response = predict(client, BRUSH, [task()], {"result": [keypoint(60, 50)]})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert len(results) == 1
    prediction = results[0]
    assert prediction["model_version"].startswith("fallback")
    assert 0 < prediction["score"] <= 1
    assert LabelInterface(BRUSH).validate_prediction(prediction, return_errors=True) == []
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
    assert (region["original_width"], region["original_height"]) == (W, H)
    alpha = decode_rle(region["value"]["rle"]).reshape(H, W, 4)[:, :, 3]
    assert set(np.unique(alpha)) <= {0, 255}
    assert disk_iou(alpha > 0) > 0.8


def test_interactive_rectangle_as_polygons(client):
    rect = {
        "type": "rectanglelabels",
        "from_name": "rect",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "value": {"x": 100 * 30 / W, "y": 100 * 20 / H, "width": 100 * 60 / W, "height": 100 * 60 / H, "rotation": 0, "rectanglelabels": ["Object"]},
    }
    response = predict(client, POLYGON, [task()], {"result": [rect]})
    assert response.status_code == 200, response.get_json()
    prediction = response.get_json()["results"][0]
    assert LabelInterface(POLYGON).validate_prediction(prediction, return_errors=True) == []
    assert prediction["result"] and all(r["type"] == "polygonlabels" for r in prediction["result"])
    mask = np.zeros((H, W), np.uint8)
    for region in prediction["result"]:
        points = np.array(region["value"]["points"]) * [W / 100, H / 100]
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    assert disk_iou(mask.astype(bool)) > 0.75


def test_automatic_prediction_is_empty_with_a_reason_in_the_log(client, caplog):
    with caplog.at_level("WARNING"):
        response = predict(client, BRUSH, [task(1), task(2)])
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["result"] for r in results] == [[], []]
    assert all(r["score"] == 0 and r["model_version"] for r in results)
    assert "needs_weights" in caplog.text and "X-SAM weights" in caplog.text


def test_batch_keeps_order_and_isolates_a_missing_image(client):
    context = {"result": [keypoint(60, 50)]}
    response = predict(client, BRUSH, [task(1), task(2, "images/missing.png"), task(3)], context)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 3
    assert results[0]["result"] and results[2]["result"]
    assert results[1]["result"] == []


def test_single_interactive_error_is_a_clear_4xx(client):
    response = predict(client, BRUSH, [task(1, "images/missing.png")], {"result": [keypoint(60, 50)]})
    assert response.status_code == 404
    assert "missing.png" in response.get_json()["message"]
    traversal = predict(client, BRUSH, [task(1, "../../etc/passwd")], {"result": [keypoint(60, 50)]})
    assert traversal.status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"not json", 400, "expected a JSON object body"),
        (b"[1, 2]", 400, "expected a JSON object body"),
        (json.dumps({"tasks": []}).encode(), 400, "non-empty list of task objects"),
        (json.dumps({"tasks": [1]}).encode(), 400, "tasks[0]: expected a task object"),
        (json.dumps({"tasks": [{"id": "x", "data": {}}], "label_config": BRUSH}).encode(), 400, "tasks[0].id"),
        (json.dumps({"tasks": [{"id": 1, "data": {}}]}).encode(), 400, "label_config"),
        (json.dumps({"tasks": [{"id": 1, "data": {}}], "label_config": BRUSH, "params": []}).encode(), 400, "'params'"),
        (json.dumps({"tasks": [{"id": 1, "data": {"img": "x"}}], "label_config": BRUSH, "params": {"context": {"result": [keypoint(1, 1)]}}}).encode(), 400, "data.image"),
    ],
)
def test_bad_predict_bodies(client, body, status, fragment):
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == status
    payload = response.get_json()
    assert fragment in payload["message"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").get_json()["status"] == 404
    assert client.get("/predict").status_code == 405


def test_webhook_answers_and_validates(client):
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}}).status_code == 200
    assert client.post("/webhook", data=b"x", content_type="application/json").status_code == 400


def test_versions_and_metrics(client):
    versions = client.get("/versions").get_json()
    assert versions["versions"] == [versions["model_version"]]
    text = client.get("/metrics").get_data(as_text=True)
    assert "xsam_http_requests_total" in text
    assert "xsam_backend_info" in text


def test_basic_auth_everywhere_but_health(image_root):
    client = make_client(image_root, basic_auth_user="ann", basic_auth_pass="s3cret")
    assert client.get("/health").status_code == 200
    for method, path in (("post", "/setup"), ("post", "/predict"), ("post", "/webhook"), ("get", "/versions"), ("get", "/metrics"), ("get", "/")):
        response = getattr(client, method)(path, json={})
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ann:nope").decode()}
    assert client.get("/versions", headers=wrong).status_code == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    assert client.get("/versions", headers=right).status_code == 200


def test_request_size_limit(image_root):
    client = make_client(image_root, max_request_bytes=1000)
    response = client.post("/predict", data=b"{" + b" " * 2000 + b"}", content_type="application/json")
    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES" in response.get_json()["message"]


def test_versions_reads_the_project_from_a_body_or_the_query(client):
    assert client.get("/versions", json={"project": "3.1795316825"}).status_code == 200
    assert client.get("/versions?project=3").status_code == 200
    deep = b"[" * 100_000 + b"]" * 100_000
    response = client.get("/versions", data=deep, content_type="application/json")
    assert response.status_code == 400
