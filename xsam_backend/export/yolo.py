"""YOLO segmentation (Ultralytics layout): ``labels/<split>/<stem>.txt`` and ``data.yaml``.

Each line is ``<class> x1 y1 x2 y2 ...``: the class index in the label config's order and one
polygon with vertices normalised by the image's width and height (``x / W``, ``y / H``, in
[0, 1], 6 decimals). Polygon and rectangle regions give one line each (vertices clipped to the
image). A brush mask is traced (:func:`~xsam_backend.masks.mask_to_polygons`, at most
:data:`TOLERANCE_PX` from the pixel edges, IoU >= 0.99 with each part) into one line per
8-connected part; YOLO polygons cannot hold holes, so holes are filled. An image without
instances gets an empty file (a background image). Images go to ``images/<split>/<stem>.png``
when copied; otherwise put them there under the names in the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xsam_backend.export.dataset import ImageEntry
from xsam_backend.export.regions import Instance
from xsam_backend.masks import HolePolicy, mask_to_polygons

TOLERANCE_PX = 1.0
MIN_PART_PX = 4.0
_FILL_HOLES = HolePolicy(large_hole="fill")


def yolo_polygons(instance: Instance) -> list[np.ndarray]:
    """The instance's polygons normalised to the image: each ``(N, 2)`` float64 in [0, 1]."""
    scale = np.array([1.0 / instance.width, 1.0 / instance.height])
    if instance.polygon is not None:
        rings = [instance.polygon]
    else:
        traced = mask_to_polygons(
            instance.mask, tolerance_px=TOLERANCE_PX, min_area_px=MIN_PART_PX, hole_policy=_FILL_HOLES
        )
        rings = traced.polygons
    return [np.clip(ring * scale, 0.0, 1.0) for ring in rings]


def yolo_lines(instances: Sequence[Instance], class_index: dict[str, int]) -> list[str]:
    """The label file's lines for one image's instances."""
    lines = []
    for instance in instances:
        for ring in yolo_polygons(instance):
            coords = " ".join(f"{v:.6f}" for v in ring.ravel())
            lines.append(f"{class_index[instance.label]} {coords}")
    return lines


class YoloWriter:
    """Writes ``out_dir/labels/<split>/<stem>.txt`` per image and ``out_dir/data.yaml`` at the end."""

    def __init__(self, out_dir: Path, categories: Sequence[str], splits: Sequence[str]) -> None:
        self._out = out_dir
        self._categories = list(categories)
        self._class_index = {name: i for i, name in enumerate(categories)}
        self._splits = list(splits)
        for split in self._splits:
            (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
            (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)

    def add(self, image: ImageEntry, instances: Sequence[Instance]) -> None:
        """Write one image's label file (masks ``(H, W)`` bool, the image's pixel frame)."""
        lines = yolo_lines(instances, self._class_index)
        path = self._out / "labels" / image.split / f"{image.stem}.txt"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    def close(self) -> list[Path]:
        """Write ``data.yaml`` (names quoted as JSON strings, which YAML reads unchanged)."""
        val = "val" if "val" in self._splits else "train"
        lines = [
            "# YOLO segmentation dataset exported from Label Studio",
            f"path: {json.dumps(str(self._out.resolve()))}",
            "train: images/train",
            f"val: images/{val}",
            f"nc: {len(self._categories)}",
            "names:",
            *(f"  {i}: {json.dumps(name)}" for i, name in enumerate(self._categories)),
        ]
        path = self._out / "data.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [path]
