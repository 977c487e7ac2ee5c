"""COCO instance segmentation, one ``annotations/instances_<split>.json`` per split, streamed.

* categories: ids 1..K in the label config's order;
* images: ``id`` = the Label Studio task id, ``width`` / ``height`` after EXIF orientation, plus
  ``ls_task_id`` and ``ls_image`` (the task's image URL);
* annotations: brush regions as compressed RLE (``{"size": [H, W], "counts": str}``, exact);
  polygon and rectangle regions as one polygon ``[x1, y1, x2, y2, ...]`` in continuous pixel
  coordinates, vertices clipped to the image; ``bbox`` ``[x, y, w, h]`` (the mask's tight box
  for brushes, the clipped polygon's bounds otherwise); ``area`` as pycocotools computes it
  from the segmentation; ``iscrowd`` 0; ``ls_region_id`` and ``ls_type`` for traceability.

Images and annotations go to JSON Lines files under ``.partial/`` as they arrive; ``close``
concatenates them into the final JSON without loading either, then removes the partial files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from pycocotools import mask as coco_mask

from xsam_backend.export.dataset import ImageEntry
from xsam_backend.export.regions import Instance
from xsam_backend.masks import encode_coco_rle, mask_to_box


def clipped_polygon(points: np.ndarray, width: int, height: int) -> list[float]:
    """``(N, 2)`` pixel ``(x, y)`` to COCO's flat ``[x1, y1, ...]``, clipped to ``[0, W] x [0, H]``."""
    clipped = np.column_stack((np.clip(points[:, 0], 0.0, width), np.clip(points[:, 1], 0.0, height)))
    return [round(float(v), 3) for v in clipped.ravel()]


def coco_annotation(
    instance: Instance, category_id: int, image_id: int, annotation_id: int
) -> dict[str, Any]:
    """One COCO annotation dict for ``instance`` (mask ``(H, W)`` bool, pixel frame)."""
    height, width = instance.height, instance.width
    segmentation: Any
    if instance.polygon is None:
        segmentation = encode_coco_rle(instance.mask)
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        box = mask_to_box(instance.mask) or (0.0, 0.0, 0.0, 0.0)
    else:
        flat = clipped_polygon(instance.polygon, width, height)
        segmentation = [flat]
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        xs, ys = flat[0::2], flat[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": float(coco_mask.area(rle)),
        "bbox": [round(box[0], 3), round(box[1], 3), round(box[2] - box[0], 3), round(box[3] - box[1], 3)],
        "iscrowd": 0,
        "ls_region_id": instance.region_id,
        "ls_type": instance.kind,
    }


class CocoWriter:
    """Writes ``out_dir/annotations/instances_<split>.json`` for each of ``splits`` (empty or not).

    ``categories``: label names in order (category id = position + 1); ``info``: COCO's
    ``info`` object (project, export options).
    """

    def __init__(
        self, out_dir: Path, categories: Sequence[str], info: Mapping[str, Any], splits: Sequence[str]
    ) -> None:
        self._out = out_dir
        self._partial = out_dir / ".partial" / "coco"
        self._partial.mkdir(parents=True, exist_ok=True)
        self._category_ids = {name: i + 1 for i, name in enumerate(categories)}
        self._categories = [
            {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(categories)
        ]
        self._info = dict(info)
        self._files: dict[str, tuple[IO[str], IO[str]]] = {}
        self._next_id = 1
        for split in splits:
            self._streams(split)

    def _streams(self, split: str) -> tuple[IO[str], IO[str]]:
        if split not in self._files:
            self._files[split] = (
                (self._partial / f"{split}.images.jsonl").open("w", encoding="utf-8"),
                (self._partial / f"{split}.annotations.jsonl").open("w", encoding="utf-8"),
            )
        return self._files[split]

    def add(self, image: ImageEntry, instances: Sequence[Instance]) -> None:
        """Append one image and its instances (masks ``(H, W)`` bool, the image's pixel frame)."""
        images, records = self._streams(image.split)
        entry = {
            "id": image.task_id,
            "file_name": image.file_name,
            "width": image.width,
            "height": image.height,
            "ls_task_id": image.task_id,
            "ls_image": image.source,
        }
        images.write(json.dumps(entry) + "\n")
        for instance in instances:
            record = coco_annotation(
                instance, self._category_ids[instance.label], image.task_id, self._next_id
            )
            records.write(json.dumps(record) + "\n")
            self._next_id += 1

    def close(self) -> list[Path]:
        """Assemble each split's JSON from its partial files; return the JSON paths."""
        written = []
        (self._out / "annotations").mkdir(parents=True, exist_ok=True)
        for split, (images, records) in sorted(self._files.items()):
            images.close()
            records.close()
            path = self._out / "annotations" / f"instances_{split}.json"
            with path.open("w", encoding="utf-8") as out:
                out.write('{"info": ' + json.dumps(self._info) + ', "licenses": [], ')
                out.write('"categories": ' + json.dumps(self._categories) + ",\n")
                _write_array(out, "images", Path(images.name))
                out.write(",\n")
                _write_array(out, "annotations", Path(records.name))
                out.write("}\n")
            written.append(path)
        shutil.rmtree(self._partial, ignore_errors=True)
        return written


def _write_array(out: IO[str], key: str, lines_path: Path) -> None:
    """Write ``"key": [line, line, ...]`` from a JSON Lines file, one line at a time."""
    out.write(f'"{key}": [')
    with lines_path.open(encoding="utf-8") as lines:
        for i, line in enumerate(lines):
            out.write(("\n" if i == 0 else ",\n") + line.rstrip("\n"))
    out.write("\n]")
