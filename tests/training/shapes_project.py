"""A Label Studio stand-in serving the shapes project: paginated tasks with brush annotations and
their PNG images, behind the real auth checks of ``tests/labelstudio/ls_http_server.py``."""

from __future__ import annotations

import importlib.util
import io
import sys
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image
from repo_paths import REPO_ROOT
from training_scenes import CLASSES, scene

from xsam_backend.masks import encode_brush_rle

PROJECT = 4
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="brush" toName="image"><Label value="square"/><Label value="disk"/></BrushLabels></View>'
)


def _ls_server_module() -> ModuleType:
    if "ls_http_server" in sys.modules:
        return sys.modules["ls_http_server"]
    spec = importlib.util.spec_from_file_location(
        "ls_http_server", REPO_ROOT / "tests" / "labelstudio" / "ls_http_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ls_http_server"] = module
    spec.loader.exec_module(module)
    return module


LS = _ls_server_module()


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled_task(task_id: int, cancelled: bool = False) -> tuple[dict[str, Any], bytes]:
    image, masks, classes = scene(task_id)
    results = [
        {
            "id": f"r{task_id}-{k}",
            "from_name": "brush",
            "to_name": "image",
            "type": "brushlabels",
            "original_height": image.shape[0],
            "original_width": image.shape[1],
            "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [CLASSES[c]]},
        }
        for k, (mask, c) in enumerate(zip(masks, classes))
    ]
    annotation = {"id": 100 + task_id, "result": results, "was_cancelled": cancelled, "ground_truth": False}
    task = {
        "id": task_id,
        "data": {"image": f"/data/upload/{PROJECT}/{task_id}.png"},
        "annotations": [annotation],
    }
    return task, png(image)


def shapes_server(num_tasks: int) -> Any:
    """A started server with project :data:`PROJECT` holding tasks ``1..num_tasks``, each one
    submitted annotation and its image (stop it with ``.stop()``)."""
    srv = LS.LabelStudioTestServer()
    srv.api_projects[PROJECT] = {"id": PROJECT, "title": "shapes", "label_config": CONFIG}
    srv.api_tasks[PROJECT] = []
    for task_id in range(1, num_tasks + 1):
        task, body = labelled_task(task_id)
        srv.api_tasks[PROJECT].append(task)
        srv.routes[f"/data/upload/{PROJECT}/{task_id}.png"] = LS.Route(
            body=body, content_type="image/png", protected=True
        )
    return srv
