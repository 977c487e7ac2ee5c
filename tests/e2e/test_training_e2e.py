"""End to end: annotations in Label Studio → "Start training" → a new model version serves.

A real Label Studio 1.23.2 and the backend on the tiny random-weight X-SAM (the parity bundle,
converted with ``python -m xsam_backend convert-weights``), inline dispatcher, so the training job
runs in a background thread of the web process. The user's path:

1. connect the backend and "Retrieve predictions": every task gets a base-version prediction;
2. submit brush annotations of the coin on every task;
3. "Start training" (``POST /api/ml/<id>/train``; Label Studio sends ``START_TRAINING`` to the
   backend's ``/webhook``);
4. the backend's ``/versions`` reports the trained version as serving;
5. "Retrieve predictions" again: every task gets a prediction tagged with the new version, and the
   base version's predictions stay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from deployment import Backend, Project, SampleImages, create_connected_project
from labelstudio import LabelStudioClient
from labelstudio_server import REPO_ROOT, LabelStudioServer
from processes import ManagedProcess, free_port, start_process, stop_process, wait_for_http
from repo_paths import SHARED

from xsam_backend.masks import encode_brush_rle

pytestmark = pytest.mark.e2e

PARITY_DIR = SHARED / "xsam_parity"
CONVERT_TIMEOUT_S = 300.0
BACKEND_START_TIMEOUT_S = 120.0
TRAINING_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 2.0
LABEL = "coin"
LABEL_CONFIG = (
    '<View>\n  <Image name="image" value="$image"/>\n'
    f'  <BrushLabels name="brush" toName="image"><Label value="{LABEL}"/></BrushLabels>\n</View>\n'
)


@pytest.fixture(scope="module")
def tiny_model(e2e_dir: Path) -> Path:
    """The parity bundle's tiny model, converted the way a user converts released weights."""
    if not (PARITY_DIR / "model").is_dir():
        pytest.skip(f"no parity bundle at {PARITY_DIR}")
    target = e2e_dir / "training" / "xsam-tiny"
    completed = subprocess.run(
        [sys.executable, "-m", "xsam_backend", "convert-weights", str(PARITY_DIR), str(target)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, f"convert-weights failed:\n{completed.stdout}\n{completed.stderr}"
    assert (target / "config.json").is_file(), completed.stdout
    return target


@pytest.fixture(scope="module")
def training_backend(label_studio: LabelStudioServer, e2e_dir: Path, tiny_model: Path) -> Iterator[Backend]:
    """The backend on the tiny model, inline dispatcher (no ``REDIS_URL``): training runs in a thread."""
    workdir = e2e_dir / "backend-training"
    workdir.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "XSAM_ENGINE": "xsam",
        "XSAM_DEVICE": "cpu",
        "XSAM_MODEL_DIR": str(tiny_model),
        "MODEL_WEIGHTS_ROOT": str(workdir / "weights"),
        "MEDIA_CACHE_DIR": str(workdir / "media-cache"),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.files_root),
        "LABEL_STUDIO_MEDIA_DIR": str(label_studio.media_dir),
        "TRAIN_STEPS": "20",
        "TRAIN_LEARNING_RATE": "3e-3",
        # Only "Start training" queues a job here.
        "TRAIN_EVERY_N_ANNOTATIONS": "0",
        # This test proves the plumbing (webhook → job → version → predictions), so any trained
        # version is promoted; whether the gate rejects worse versions is tested in tests/training.
        "TRAIN_PROMOTE_MARGIN": "1.0",
    }
    label_studio_log_start = len(label_studio.process.log_text())
    port = free_port()
    web: ManagedProcess = start_process(
        "backend (training)",
        [sys.executable, "_wsgi.py", "--host", "127.0.0.1", "--port", str(port)],
        env,
        workdir / "web.log",
        cwd=REPO_ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(web, f"{url}/health", BACKEND_START_TIMEOUT_S)
        yield Backend(
            mode="inline", url=url, web=web, worker=None, label_studio_log_start=label_studio_log_start
        )
    finally:
        stop_process(web)


@pytest.fixture(scope="module")
def training_project(
    ls_client: LabelStudioClient,
    training_backend: Backend,
    sample_images: SampleImages,
    e2e_dir: Path,
) -> Project:
    config = e2e_dir / "training" / "brush_coin.xml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(LABEL_CONFIG)
    return create_connected_project(ls_client, training_backend, sample_images, config, "training inline")


def _brush_annotation(mask_height: int, mask_width: int, rle: list[int]) -> dict[str, Any]:
    """A submitted annotation with one brush region (RLE of the whole image, pixel frame)."""
    return {
        "result": [
            {
                "id": "coin1",
                "from_name": "brush",
                "to_name": "image",
                "type": "brushlabels",
                "origin": "manual",
                "original_width": mask_width,
                "original_height": mask_height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": rle, "brushlabels": [LABEL]},
            }
        ],
        "was_cancelled": False,
        "ground_truth": False,
    }


def _versions(backend: Backend, project_id: int) -> dict[str, Any]:
    response = requests.get(f"{backend.url}/versions", params={"project": project_id}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_for_new_serving_version(backend: Backend, project_id: int, base_version: str) -> dict[str, Any]:
    """Poll ``/versions`` until a trained version serves; fail with the last status on a failed job."""
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    body = _versions(backend, project_id)
    while time.monotonic() < deadline:
        body = _versions(backend, project_id)
        state = (body.get("training") or {}).get("state")
        if body["model_version"] != base_version and state == "promoted":
            return body
        assert state not in ("failed", "rejected", "no_data"), f"training ended as {state}: {body}"
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"no trained version served after {TRAINING_TIMEOUT_S:.0f} s; last /versions: {body}")


def _versions_of(client: LabelStudioClient, task_id: int) -> list[str]:
    return sorted(str(p.get("model_version")) for p in client.list_predictions(task_id))


def test_start_training_serves_a_new_version_that_retrieve_predictions_uses(
    ls_client: LabelStudioClient,
    training_project: Project,
    training_backend: Backend,
    sample_images: SampleImages,
    e2e_dir: Path,
) -> None:
    project = training_project
    base_version = project.model_version
    assert base_version and "+p" not in base_version, base_version

    ls_client.retrieve_predictions(project.id)
    for name, task_id in project.tasks.items():
        assert _versions_of(ls_client, task_id) == [base_version], f"{name} before training"

    images = sample_images.by_file_name()
    for name, task_id in project.tasks.items():
        image = images[name]
        ls_client.request(
            "POST",
            f"/api/tasks/{task_id}/annotations",
            json=_brush_annotation(image.height, image.width, encode_brush_rle(image.mask)),
        )

    ls_client.request("POST", f"/api/ml/{project.ml_backend_id}/train", json={})
    status = _wait_for_new_serving_version(training_backend, project.id, base_version)
    new_version = str(status["model_version"])
    assert new_version.startswith(f"{base_version}+p{project.id}."), status
    assert status["versions"] == [base_version, new_version], status
    (detail,) = status["details"]
    assert detail["promoted"] is True, detail
    meta = json.loads(
        (
            e2e_dir
            / "backend-training"
            / "weights"
            / "projects"
            / str(project.id)
            / detail["version"]
            / "meta.json"
        ).read_text()
    )
    # Every submitted annotation reached the job, for training or for the hold-out set.
    assert sorted(meta["task_ids"] + meta["holdout_task_ids"]) == sorted(project.tasks.values()), meta

    ls_client.retrieve_predictions(project.id)
    assert ls_client.get_ml_backend(project.ml_backend_id)["model_version"] == new_version
    for name, task_id in project.tasks.items():
        assert _versions_of(ls_client, task_id) == sorted([base_version, new_version]), (
            f"{name} after training: {ls_client.list_predictions(task_id)}"
        )
    # The job came from "Start training", through the webhook, into the web process's thread.
    assert f"project {project.id}: training job thread-1 queued (START_TRAINING)" in (
        training_backend.web.log_text()
    )
