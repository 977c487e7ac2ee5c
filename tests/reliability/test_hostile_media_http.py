"""Hostile and unusual images through ``/predict``: each gives a mask on the object or a clear error.

``tests/labelstudio/test_media.py`` checks the decoder; here the whole path runs (media fetch,
decode, fallback engine, brush rendering), one click on the disk of each image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from reliability_support import (
    DISK_CENTER,
    DISK_RADIUS,
    H,
    W,
    assert_clear_error,
    keypoint,
    make_app,
    predict_body,
)
from repo_paths import label_config

BRUSH = label_config("interactive_brush")

MASKED = ["disk.png", "rgba.png", "grey.png", "grey16.png", "cmyk.jpg", "exif-rotated.jpg"]
REFUSED = {"bomb.png": (413, "pixels"), "truncated.jpg": (422, "cannot decode image"),
           "not-an-image.png": (422, "cannot decode image")}  # fmt: skip


@pytest.fixture(scope="module")
def client(fuzz_root: Path):  # type: ignore[no-untyped-def]
    return make_app(fuzz_root).test_client()


@pytest.mark.parametrize("name", MASKED)
def test_image_gives_the_disk_mask(client, name: str) -> None:  # type: ignore[no-untyped-def]
    body = predict_body(BRUSH, [f"images/{name}"], {"result": [keypoint(*DISK_CENTER)]})
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    (region,) = response.get_json()["results"][0]["result"]
    # EXIF orientation applied: the frame is the displayed 50x40, not the stored 40x50.
    assert (region["original_width"], region["original_height"]) == (W, H)
    mask = decode_rle(region["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0
    yy, xx = np.mgrid[:H, :W]
    disk = (xx - DISK_CENTER[0]) ** 2 + (yy - DISK_CENTER[1]) ** 2 < DISK_RADIUS**2
    assert (mask & disk).sum() / disk.sum() > 0.95, name  # the whole object
    assert mask.sum() < 0.8 * mask.size, name  # and not the whole image


@pytest.mark.parametrize("name", MASKED)
def test_image_gives_a_tight_disk_mask(client, name: str) -> None:  # type: ignore[no-untyped-def]
    body = predict_body(BRUSH, [f"images/{name}"], {"result": [keypoint(*DISK_CENTER)]})
    (region,) = client.post("/predict", json=body).get_json()["results"][0]["result"]
    mask = decode_rle(region["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0
    yy, xx = np.mgrid[:H, :W]
    disk = (xx - DISK_CENTER[0]) ** 2 + (yy - DISK_CENTER[1]) ** 2 < DISK_RADIUS**2
    assert (mask & disk).sum() / (mask | disk).sum() > 0.8, name


def test_one_pixel_image_gives_a_mask_or_a_clear_error(client) -> None:  # type: ignore[no-untyped-def]
    body = predict_body(BRUSH, ["images/one-pixel.png"], {"result": [keypoint(0.5, 0.5, width=1, height=1)]})
    response = client.post("/predict", json=body)
    if response.status_code == 200:
        (prediction,) = response.get_json()["results"]
        for region in prediction["result"]:
            assert (region["original_width"], region["original_height"]) == (1, 1)
    else:
        assert response.status_code < 500
        assert_clear_error(response.status_code, response.get_data())


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_image_gives_a_clear_error(client, name: str) -> None:  # type: ignore[no-untyped-def]
    body = predict_body(BRUSH, [f"images/{name}"], {"result": [keypoint(*DISK_CENTER)]})
    response = client.post("/predict", json=body)
    status, fragment = REFUSED[name]
    payload = assert_clear_error(response.status_code, response.get_data(), name)
    assert response.status_code == status and fragment in payload["message"] and name in payload["message"]


def test_hostile_images_in_a_batch_fail_alone(client) -> None:  # type: ignore[no-untyped-def]
    names = ["disk.png", *sorted(REFUSED), "grey16.png"]
    body = predict_body(BRUSH, [f"images/{n}" for n in names], {"result": [keypoint(*DISK_CENTER)]})
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [bool(r["result"]) for r in results] == [True, False, False, False, True]
