"""Label Studio results and tasks built from known masks, for the export tests.

Regions are written the way Label Studio stores them (brush RLE, percent polygons and
rectangles with ``original_width`` / ``original_height``), so the tests check the export against
masks they chose, not against the export's own reading of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from xsam_backend.labelstudio.api import LabelledTask
from xsam_backend.masks import encode_brush_rle, polygon_to_percent

LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Cat"/>
    <Label value="Dog"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="Dog"/>
    <Label value="Bird"/>
  </PolygonLabels>
  <RectangleLabels name="box" toName="image">
    <Label value="Car"/>
  </RectangleLabels>
  <Choices name="quality" toName="image">
    <Choice value="good"/>
  </Choices>
</View>
"""
CATEGORIES = ("Cat", "Dog", "Bird", "Car")


def disc(height: int, width: int, cx: float, cy: float, r: float) -> np.ndarray:
    """``(H, W)`` bool: pixels whose centres lie within ``r`` of ``(cx, cy)`` (pixel frame)."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def brush_region(mask: np.ndarray, label: str, region_id: str = "b1") -> dict[str, Any]:
    h, w = mask.shape
    return {
        "id": region_id,
        "type": "brushlabels",
        "from_name": "brush",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]},
    }


def polygon_region(
    points_px: Sequence[Sequence[float]], label: str, width: int, height: int, region_id: str = "p1"
) -> dict[str, Any]:
    return {
        "id": region_id,
        "type": "polygonlabels",
        "from_name": "poly",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "points": polygon_to_percent(np.asarray(points_px, float), width, height),
            "closed": True,
            "polygonlabels": [label],
        },
    }


def rectangle_region(
    box_px: tuple[float, float, float, float],
    label: str,
    width: int,
    height: int,
    region_id: str = "r1",
    rotation: float = 0.0,
) -> dict[str, Any]:
    x0, y0, x1, y1 = box_px
    return {
        "id": region_id,
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x0 / width * 100,
            "y": y0 / height * 100,
            "width": (x1 - x0) / width * 100,
            "height": (y1 - y0) / height * 100,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
    }


def annotation(result: list[dict[str, Any]], ident: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": ident,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "completed_by": 1,
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-01T00:00:00Z",
    }
    base.update(fields)
    return base


class ListSource:
    """Tasks from a list, paged like the real client (``iter_tasks`` yields one task at a time)."""

    def __init__(self, config: str, tasks: Sequence[LabelledTask]) -> None:
        self.config = config
        self.tasks = list(tasks)
        self.calls: list[dict[str, Any]] = []

    def label_config(self, project_id: int) -> str:
        return self.config

    def iter_tasks(
        self,
        project_id: int,
        *,
        only_annotated: bool = True,
        include_cancelled: bool = False,
        page_size: int = 100,
    ) -> Iterator[LabelledTask]:
        self.calls.append({"only_annotated": only_annotated, "include_cancelled": include_cancelled})
        for task in self.tasks:
            kept = tuple(a for a in task.annotations if include_cancelled or not a.get("was_cancelled"))
            if kept or not only_annotated:
                yield LabelledTask(task.id, task.data, kept, task.predictions)
