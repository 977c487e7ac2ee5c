"""End to end: a real Label Studio 1.23.2 drives the backend as the labelling UI would.

Each test runs once per backend deployment (inline dispatcher with a legacy token; Celery on the
real Redis with a real worker and a personal access token), against a project whose images were
imported both by upload and by local-files storage. The engine is the weight-free fallback: it
answers smart keypoints and rectangles; automatic pre-labelling without a prompt gives an empty
prediction whose reason the backend logs.

Masks are checked against a reference derived independently (Otsu + connected components on the
photograph), in Label Studio's own encodings (brush RLE, percent polygons).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest
from deployment import Backend, Project, SampleImages
from label_studio_sdk.converter.brush import decode_rle
from labelstudio import LabelStudioClient
from labelstudio_server import LabelStudioServer
from PIL import Image, ImageDraw
from sample_images import SampleImage, iou

pytestmark = pytest.mark.e2e

# The fallback engine (GrabCut) is not pixel-exact, but a coin on a plain background is easy: it
# scored 0.93-0.97 against the Otsu reference. A mask shifted by a few pixels or at the wrong scale
# falls well below this.
MIN_IOU = 0.85
LOG_WAIT_S = 5.0


def _predictions_of_version(
    client: LabelStudioClient, task_id: int, model_version: str
) -> list[dict[str, Any]]:
    return [p for p in client.list_predictions(task_id) if p.get("model_version") == model_version]


def _wait_for_log(backend: Backend, pattern: re.Pattern[str], start: int) -> re.Match[str] | None:
    """The first match of ``pattern`` in the web log after character ``start`` (waits briefly)."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        match = pattern.search(backend.web.log_text(), start)
        if match or time.monotonic() > deadline:
            return match
        time.sleep(0.2)


def _keypoint(image: SampleImage, from_name: str = "kp", positive: bool = True) -> dict[str, Any]:
    """A smart keypoint on the reference coin, as the front end sends it (percent of the image)."""
    x, y = image.point_xy
    return {
        "id": "kp1",
        "type": "keypointlabels",
        "from_name": from_name,
        "to_name": "image",
        "original_width": image.width,
        "original_height": image.height,
        "image_rotation": 0,
        "origin": "manual",
        "is_positive": positive,
        "value": {
            "x": (x + 0.5) * 100.0 / image.width,
            "y": (y + 0.5) * 100.0 / image.height,
            "width": 0.5,
            "keypointlabels": ["Object"],
        },
    }


def _rectangle(image: SampleImage, margin_px: int = 4) -> dict[str, Any]:
    """A smart rectangle a few pixels larger than the reference coin's bounding box (percent)."""
    x0, y0, x1, y1 = image.box_xyxy
    x0, y0 = max(x0 - margin_px, 0), max(y0 - margin_px, 0)
    x1, y1 = min(x1 + margin_px, image.width), min(y1 + margin_px, image.height)
    return {
        "id": "rect1",
        "type": "rectanglelabels",
        "from_name": "rect",
        "to_name": "image",
        "original_width": image.width,
        "original_height": image.height,
        "image_rotation": 0,
        "origin": "manual",
        "value": {
            "x": x0 * 100.0 / image.width,
            "y": y0 * 100.0 / image.height,
            "width": (x1 - x0) * 100.0 / image.width,
            "height": (y1 - y0) * 100.0 / image.height,
            "rotation": 0,
            "rectanglelabels": ["Object"],
        },
    }


def _interactive(
    client: LabelStudioClient, project: Project, image: SampleImage, region: dict[str, Any]
) -> dict[str, Any]:
    """Send one smart region through Label Studio; return the suggestion (``data``) it relays."""
    task_id = project.tasks[image.path.name]
    answer = client.interactive_annotating(project.ml_backend_id, task_id, {"result": [region]})
    assert "errors" not in answer, f"Label Studio relayed an error: {answer}"
    data: dict[str, Any] = answer["data"]
    assert data["model_version"] == project.model_version
    return data


def _brush_mask(data: dict[str, Any], image: SampleImage) -> np.ndarray:
    """Decode the single brush region of a suggestion to an ``(H, W)`` bool mask."""
    regions = data["result"]
    assert len(regions) == 1, f"expected one brush region, got {[r.get('type') for r in regions]}"
    region = regions[0]
    assert region["type"] == "brushlabels"
    assert (region["from_name"], region["to_name"]) == ("brush", "image")
    assert region["value"]["brushlabels"] == ["Object"]
    assert (region["original_width"], region["original_height"]) == (image.width, image.height)
    assert region["value"]["format"] == "rle"
    rgba = decode_rle(region["value"]["rle"])
    assert rgba.size == image.width * image.height * 4, "RLE length does not match the image size"
    return np.asarray(rgba.reshape(image.height, image.width, 4)[..., 3] > 0)


def _polygon_mask(data: dict[str, Any], image: SampleImage) -> np.ndarray:
    """Rasterise the suggestion's polygons (percent points) to an ``(H, W)`` bool mask."""
    regions = data["result"]
    assert regions, "no polygon came back"
    canvas = Image.new("L", (image.width, image.height), 0)
    draw = ImageDraw.Draw(canvas)
    for region in regions:
        assert region["type"] == "polygonlabels"
        assert (region["from_name"], region["to_name"]) == ("poly", "image")
        assert region["value"]["polygonlabels"] == ["Object"]
        points = region["value"]["points"]
        assert len(points) >= 3
        assert all(0.0 <= x <= 100.0 and 0.0 <= y <= 100.0 for x, y in points), "points outside 0-100 %"
        # Pixel (i, j) covers [i, i+1); PIL fills pixel centres, hence the half-pixel shift.
        pixels = [(x * image.width / 100.0 - 0.5, y * image.height / 100.0 - 0.5) for x, y in points]
        draw.polygon(pixels, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _assert_covers_coin(mask: np.ndarray, image: SampleImage) -> None:
    x, y = image.point_xy
    assert mask[y, x], f"the clicked point ({x}, {y}) is not inside the returned mask"
    overlap = iou(mask, image.mask)
    assert overlap > MIN_IOU, (
        f"IoU with the reference coin is {overlap:.3f} (mask {int(mask.sum())} px, reference {int(image.mask.sum())} px)"
    )


IMAGE_NAMES = ["coins_upload.jpg", "coins.png", "coins_crop_rgb.png"]


def test_connect_reports_the_backend_model_version(
    ls_client: LabelStudioClient, brush_project: Project, backend: Backend
) -> None:
    ml_backend = ls_client.get_ml_backend(brush_project.ml_backend_id)
    assert ml_backend["state"] == "CO", ml_backend
    assert ml_backend["is_interactive"] is True
    assert brush_project.model_version and ml_backend["model_version"] == brush_project.model_version


def test_opening_a_task_stores_an_empty_prediction_and_logs_why(
    ls_client: LabelStudioClient, brush_project: Project, backend: Backend
) -> None:
    task_id = brush_project.tasks["coins_upload.jpg"]
    log_start = len(backend.web.log_text())
    ls_client.get_task(task_id)
    stored = _predictions_of_version(ls_client, task_id, brush_project.model_version)
    assert len(stored) == 1, f"predictions on task {task_id}: {ls_client.list_predictions(task_id)}"
    assert stored[0]["result"] == []
    reason = _wait_for_log(backend, re.compile(r"empty prelabel prediction: (.+)"), log_start)
    assert reason is not None, "the backend did not log why the automatic prediction is empty"
    assert "weights" in reason.group(1).lower(), reason.group(0)


def test_retrieve_predictions_gives_every_task_a_prediction(
    ls_client: LabelStudioClient, brush_project: Project
) -> None:
    answer = ls_client.retrieve_predictions(brush_project.id)
    assert "error" not in str(answer.get("detail", "")).lower(), answer
    for name, task_id in brush_project.tasks.items():
        stored = _predictions_of_version(ls_client, task_id, brush_project.model_version)
        assert len(stored) == 1, f"{name}: {ls_client.list_predictions(task_id)}"
        assert stored[0]["result"] == []


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_smart_keypoint_gives_a_brush_mask_of_the_clicked_coin(
    ls_client: LabelStudioClient, brush_project: Project, sample_images: SampleImages, image_name: str
) -> None:
    image = sample_images.by_file_name()[image_name]
    task_id = brush_project.tasks[image_name]
    stored_before = len(ls_client.list_predictions(task_id))
    data = _interactive(ls_client, brush_project, image, _keypoint(image))
    _assert_covers_coin(_brush_mask(data, image), image)
    assert len(ls_client.list_predictions(task_id)) == stored_before, "an interactive suggestion was stored"


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_smart_rectangle_gives_a_brush_mask_of_the_boxed_coin(
    ls_client: LabelStudioClient, brush_project: Project, sample_images: SampleImages, image_name: str
) -> None:
    image = sample_images.by_file_name()[image_name]
    data = _interactive(ls_client, brush_project, image, _rectangle(image))
    _assert_covers_coin(_brush_mask(data, image), image)


@pytest.mark.parametrize("image_name", ["coins_upload.jpg", "coins_crop_rgb.png"])
def test_smart_keypoint_gives_a_polygon_of_the_clicked_coin(
    ls_client: LabelStudioClient, polygon_project: Project, sample_images: SampleImages, image_name: str
) -> None:
    image = sample_images.by_file_name()[image_name]
    data = _interactive(ls_client, polygon_project, image, _keypoint(image))
    _assert_covers_coin(_polygon_mask(data, image), image)


def test_images_and_work_travel_the_way_the_deployment_says(
    ls_client: LabelStudioClient,
    brush_project: Project,
    backend: Backend,
    sample_images: SampleImages,
    label_studio: LabelStudioServer,
) -> None:
    """Inline: images read from Label Studio's directories. Celery: the worker downloads them with
    the personal access token exchanged for an access token, and does the segmentation itself."""
    for name in IMAGE_NAMES:
        image = sample_images.by_file_name()[name]
        _assert_covers_coin(
            _brush_mask(_interactive(ls_client, brush_project, image, _keypoint(image)), image), image
        )
    ls_log = label_studio.process.log_text()[backend.label_studio_log_start :]
    fetched = set(re.findall(r'"GET (/data/\S+) HTTP/1\.1" 200', ls_log))
    if backend.mode == "inline":
        assert fetched == set(), "the inline backend should read uploads and local files from disk"
        assert backend.worker is None
        return
    assert '"POST /api/token/refresh/ HTTP/1.1" 200' in ls_log, (
        "the personal access token was never exchanged"
    )
    for name, url in brush_project.image_urls.items():
        assert url in fetched, (
            f"{name} ({url}) was not downloaded from Label Studio; fetched {sorted(fetched)}"
        )
    assert backend.worker is not None
    assert re.search(r"Task xsam\.predict_interactive\[[0-9a-f-]+\] received", backend.worker.log_text()), (
        "the Celery worker never received an interactive task"
    )
