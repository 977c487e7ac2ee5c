"""PNG masks: one semantic and one instance map per image, plus the class table.

* ``semantic/<split>/<stem>.png``: ``(H, W)`` single channel, 0 = background, ``k + 1`` = the
  k-th label of the label config (uint8; uint16 past 255 labels);
* ``instance/<split>/<stem>.png``: ``(H, W)`` uint16, 0 = background, ``i`` = the i-th instance
  (1-based, in the annotation's region order), with ``instance/<split>/<stem>.json`` giving each
  id's label, class value, region id, type and visible pixel count;
* ``classes.json``: ``{"0": "background", "1": <first label>, ...}``.

Both maps are in the image's pixel frame after EXIF orientation. Where regions overlap, the
later region wins (Label Studio draws later regions on top), so an instance may be partly or
wholly hidden; its visible pixel count says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from xsam_backend.errors import BadRequest
from xsam_backend.export.dataset import ImageEntry
from xsam_backend.export.regions import Instance

MAX_INSTANCES = 65535


def semantic_map(
    instances: Sequence[Instance], class_value: dict[str, int], height: int, width: int
) -> np.ndarray:
    """``(H, W)`` class values (0 = background), later instances painted over earlier ones.

    uint8 when every value fits, else uint16.
    """
    dtype = np.uint8 if max(class_value.values(), default=0) <= 255 else np.uint16
    out = np.zeros((height, width), dtype=dtype)
    for instance in instances:
        out[instance.mask] = class_value[instance.label]
    return out


def instance_map(instances: Sequence[Instance], height: int, width: int) -> np.ndarray:
    """``(H, W)`` uint16 instance ids (1-based, 0 = background), later instances on top."""
    if len(instances) > MAX_INSTANCES:
        raise BadRequest(f"an instance PNG holds at most {MAX_INSTANCES} instances; got {len(instances)}")
    out = np.zeros((height, width), dtype=np.uint16)
    for i, instance in enumerate(instances, start=1):
        out[instance.mask] = i
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


class PngMaskWriter:
    """Writes the semantic and instance PNGs of each image and ``classes.json``."""

    def __init__(self, out_dir: Path, categories: Sequence[str], splits: Sequence[str]) -> None:
        self._out = out_dir
        self._categories = list(categories)
        self._class_value = {name: i + 1 for i, name in enumerate(categories)}
        for split in splits:
            (out_dir / "semantic" / split).mkdir(parents=True, exist_ok=True)
            (out_dir / "instance" / split).mkdir(parents=True, exist_ok=True)

    def add(self, image: ImageEntry, instances: Sequence[Instance]) -> None:
        """Write one image's maps (instance masks ``(H, W)`` bool, the image's pixel frame)."""
        h, w = image.height, image.width
        _write_png(
            self._out / "semantic" / image.split / f"{image.stem}.png",
            semantic_map(instances, self._class_value, h, w),
        )
        ids = instance_map(instances, h, w)
        _write_png(self._out / "instance" / image.split / f"{image.stem}.png", ids)
        visible = np.bincount(ids.ravel(), minlength=len(instances) + 1)
        table = {
            "task_id": image.task_id,
            "file_name": image.file_name,
            "width": w,
            "height": h,
            "instances": [
                {
                    "id": i,
                    "label": instance.label,
                    "class_value": self._class_value[instance.label],
                    "region_id": instance.region_id,
                    "type": instance.kind,
                    "visible_pixels": int(visible[i]),
                }
                for i, instance in enumerate(instances, start=1)
            ],
        }
        (self._out / "instance" / image.split / f"{image.stem}.json").write_text(json.dumps(table, indent=1))

    def close(self) -> list[Path]:
        """Write ``classes.json``."""
        path = self._out / "classes.json"
        classes = {"0": "background", **{str(v): k for k, v in self._class_value.items()}}
        path.write_text(json.dumps(classes, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return [path]
