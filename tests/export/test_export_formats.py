"""Whole exports of a small project (tasks from a list) in each format, checked against the source masks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from export_samples import (
    CATEGORIES,
    LABEL_CONFIG,
    ListSource,
    annotation,
    brush_region,
    disc,
    polygon_region,
    rectangle_region,
)
from pycocotools.coco import COCO

from xsam_backend.errors import BadRequest, MediaNotFound
from xsam_backend.export.curation import CurationFilters, split_of
from xsam_backend.export.runner import ExportOptions, run_export
from xsam_backend.labelstudio.api import LabelledTask
from xsam_backend.masks import rasterize_polygon

H, W = 60, 80
RING = disc(H, W, 25, 25, 15) & ~disc(H, W, 25, 25, 6)  # a brush mask with a hole
TWO_PARTS = disc(H, W, 60, 15, 8) | disc(H, W, 62, 45, 7)
BIRD = [[5.0, 50.0], [40.0, 42.5], [30.0, 58.0]]
CAR = (50.0, 30.0, 75.0, 41.0)


def _tasks() -> list[LabelledTask]:
    full = [
        brush_region(RING, "Cat", "cat"),
        polygon_region(BIRD, "Bird", W, H, "bird"),
        rectangle_region(CAR, "Car", W, H, "car"),
        brush_region(TWO_PARTS, "Dog", "dog"),
        brush_region(RING, "Horse", "horse"),
    ]
    newer_skip = annotation([], 12, was_cancelled=True, updated_at="2026-01-01T00:00:00Z")
    return [
        LabelledTask(1, {"image": "/data/upload/7/a photo.jpg"}, (annotation(full, 11), newer_skip)),
        LabelledTask(
            2, {"image": "/data/local-files/?d=pics/b.png"}, (annotation([], 21, was_cancelled=True),)
        ),
        LabelledTask(3, {"image": "/data/upload/7/empty.jpg"}, (annotation([], 31),)),
        LabelledTask(
            4, {"image": "/data/upload/7/dog.jpg"}, (annotation([brush_region(TWO_PARTS, "Dog", "d")], 41),)
        ),
    ]


EXPECTED_MASKS = {
    "cat": RING,
    "bird": rasterize_polygon(np.array(BIRD), H, W),
    "car": rasterize_polygon(np.array([[50, 30], [75, 30], [75, 41], [50, 41]], float), H, W),
    "dog": TWO_PARTS,
    "d": TWO_PARTS,
}


def _export(
    tmp_path: Path, fmt: str, predictions: dict[int, list[dict[str, Any]]] | None = None, **kwargs: Any
) -> tuple[dict[str, Any], Path]:
    """Export ``_tasks()``; ``predictions``: task id → the predictions listed with that task."""
    out = tmp_path / fmt
    extra = {k: kwargs.pop(k) for k in ("images",) if k in kwargs}
    options = ExportOptions(project_id=7, format=fmt, out_dir=out, val_fraction=0.5, seed=1, **kwargs)  # type: ignore[arg-type]
    tasks = [replace(t, predictions=tuple((predictions or {}).get(t.id, ()))) for t in _tasks()]
    summary = run_export(ListSource(LABEL_CONFIG, tasks), options, progress=False, **extra)
    return summary, out


def _manifest(out: Path) -> dict[int, dict[str, Any]]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {entry["task_id"]: entry for entry in map(json.loads, lines)}


def _boundary_band(mask: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    u8 = mask.astype(np.uint8)
    return cv2.dilate(u8, kernel).astype(bool) & ~cv2.erode(u8, kernel).astype(bool)


def test_coco_round_trips_every_mask_through_pycocotools(tmp_path: Path) -> None:
    summary, out = _export(tmp_path, "coco")
    assert not (out / ".partial").exists()
    checked = 0
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
        assert coco.getCatIds() == [1, 2, 3, 4]
        for image in coco.loadImgs(coco.getImgIds()):
            assert split_of(image["id"], 0.5, seed=1) == split
            assert (image["width"], image["height"]) == (W, H)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
                decoded = coco.annToMask(ann).astype(bool)
                expected = EXPECTED_MASKS[ann["ls_region_id"]]
                assert (
                    coco.loadCats(ann["category_id"])[0]["name"]
                    == {"cat": "Cat", "bird": "Bird", "car": "Car", "dog": "Dog", "d": "Dog"}[
                        ann["ls_region_id"]
                    ]
                )
                if ann["ls_type"] == "brush":
                    assert isinstance(ann["segmentation"], dict)
                    np.testing.assert_array_equal(decoded, expected)
                else:
                    assert isinstance(ann["segmentation"], list)
                    # pycocotools and Label Studio rasterise polygons with different pixel-centre rules.
                    assert not (decoded ^ expected)[~_boundary_band(expected)].any()
                assert ann["area"] == pytest.approx(decoded.sum())
                x, y, w, h = ann["bbox"]
                ys, xs = np.nonzero(decoded)
                assert x <= xs.min() + 1 and xs.max() <= x + w and y <= ys.min() + 1 and ys.max() <= y + h
                checked += 1
    assert checked == 5  # the "Horse" region is not in the label config
    assert summary["tasks"] == {"seen": 4, "included": 2, "excluded": 2}
    assert summary["excluded"] == {"image_size_unknown": 1, "no_accepted_annotation": 1}


def test_coco_rectangles_on_whole_pixels_are_exact(tmp_path: Path) -> None:
    _, out = _export(tmp_path, "coco")
    anns = [
        a
        for split in ("train", "val")
        for a in json.loads((out / "annotations" / f"instances_{split}.json").read_text())["annotations"]
    ]
    car = next(a for a in anns if a["ls_region_id"] == "car")
    assert car["bbox"] == [50.0, 30.0, 25.0, 11.0]
    assert car["area"] == 25 * 11


def test_manifest_says_what_was_included_and_why_the_rest_was_not(tmp_path: Path) -> None:
    summary, out = _export(tmp_path, "coco")
    entries = _manifest(out)
    first = entries[1]
    assert first["status"] == "included" and first["annotation_id"] == 11
    assert first["instances"] == {"Cat": 1, "Bird": 1, "Car": 1, "Dog": 1}
    assert first["file_name"] == "1_a_photo.jpg"
    assert [tuple(r) for r in first["skipped_regions"]] == [
        ("horse", "label 'Horse' is not an output label of the label config")
    ]
    assert first["other_annotations"] == [[12, "cancelled (skipped by the annotator)"]]
    assert entries[2]["reason"] == "no_accepted_annotation" and "cancelled" in entries[2]["detail"]
    assert entries[3]["reason"] == "image_size_unknown"
    assert summary["skipped_regions"] == 1
    assert summary["options"]["acceptance"] == "submitted"
    assert "manifest.jsonl" in summary["files"]
    assert json.loads((out / "manifest.json").read_text()) == summary


def test_tasks_without_regions_are_read_for_their_size_and_images_copied(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    read: list[tuple[str, int]] = []

    def images(url: str, task_id: int) -> np.ndarray:
        read.append((url, task_id))
        return pixels

    summary, out = _export(tmp_path, "coco", images=images, copy_images=True)
    assert summary["tasks"]["included"] == 3
    assert sorted(t for _, t in read) == [1, 3, 4]
    entry = _manifest(out)[3]
    copied = cv2.imread(str(out / "images" / entry["split"] / entry["file_name"]))[:, :, ::-1]
    np.testing.assert_array_equal(copied, pixels)


def test_image_problems_exclude_the_task_with_a_reason(tmp_path: Path) -> None:
    def images(url: str, task_id: int) -> np.ndarray:
        if task_id == 4:
            raise MediaNotFound(f"{url} not found")
        return np.zeros((H + 1, W, 3), np.uint8)

    summary, out = _export(tmp_path, "masks", images=images, copy_images=True)
    assert summary["excluded"] == {
        "image_size_mismatch": 1,
        "image_unavailable": 1,
        "no_accepted_annotation": 1,
    }
    assert "not found" in _manifest(out)[4]["detail"]
    assert summary["tasks"]["included"] == 1  # task 3: no regions, so its size comes from the image


def test_yolo_polygons_are_normalised_and_within_the_fidelity_bound(tmp_path: Path) -> None:
    _, out = _export(tmp_path, "yolo-seg")
    data_yaml = (out / "data.yaml").read_text()
    assert 'names:\n  0: "Cat"\n  1: "Dog"\n  2: "Bird"\n  3: "Car"\n' in data_yaml
    assert "train: images/train\nval: images/val" in data_yaml
    entry = _manifest(out)[1]
    lines = (out / "labels" / entry["split"] / "1_a_photo.txt").read_text().splitlines()
    by_class: dict[int, list[np.ndarray]] = {}
    for line in lines:
        cls, *coords = line.split()
        values = np.array(coords, float).reshape(-1, 2)
        assert values.min() >= 0 and values.max() <= 1
        by_class.setdefault(int(cls), []).append(values * [W, H])
    assert sorted((k, len(v)) for k, v in by_class.items()) == [(0, 1), (1, 2), (2, 1), (3, 1)]
    for cls, source in ((0, RING), (1, TWO_PARTS), (2, EXPECTED_MASKS["bird"]), (3, EXPECTED_MASKS["car"])):
        drawn = np.zeros((H, W), bool)
        for ring in by_class[cls]:
            drawn |= rasterize_polygon(ring, H, W)
        # Holes cannot be written in YOLO polygons: compare with the filled mask.
        filled = source | (disc(H, W, 25, 25, 6) if cls == 0 else False)
        iou = (drawn & filled).sum() / (drawn | filled).sum()
        assert iou >= 0.97, (cls, iou)


def test_png_masks_hold_class_values_and_instance_ids(tmp_path: Path) -> None:
    _, out = _export(tmp_path, "masks")
    assert json.loads((out / "classes.json").read_text()) == {
        "0": "background",
        "1": "Cat",
        "2": "Dog",
        "3": "Bird",
        "4": "Car",
    }
    entry = _manifest(out)[1]
    semantic = cv2.imread(str(out / "semantic" / entry["split"] / "1_a_photo.png"), cv2.IMREAD_UNCHANGED)
    instance = cv2.imread(str(out / "instance" / entry["split"] / "1_a_photo.png"), cv2.IMREAD_UNCHANGED)
    assert semantic.dtype == np.uint8 and instance.dtype == np.uint16 and semantic.shape == (H, W)
    expected = np.zeros((H, W), np.uint8)
    expected_ids = np.zeros((H, W), np.uint16)
    for i, (region, value) in enumerate((("cat", 1), ("bird", 3), ("car", 4), ("dog", 2)), start=1):
        expected[EXPECTED_MASKS[region]] = value
        expected_ids[EXPECTED_MASKS[region]] = i
    np.testing.assert_array_equal(semantic, expected)
    np.testing.assert_array_equal(instance, expected_ids)
    table = json.loads((out / "instance" / entry["split"] / "1_a_photo.json").read_text())
    assert [(t["id"], t["label"], t["region_id"], t["visible_pixels"]) for t in table["instances"]] == [
        (i, label, region, int((expected_ids == i).sum()))
        for i, (label, region) in enumerate(
            (("Cat", "cat"), ("Bird", "bird"), ("Car", "car"), ("Dog", "dog")), start=1
        )
    ]


def test_label_filter_keeps_selected_labels_and_excludes_tasks_left_empty(tmp_path: Path) -> None:
    summary, out = _export(tmp_path, "coco", filters=CurationFilters(labels=frozenset({"Cat"})))
    anns = [
        a
        for s in ("train", "val")
        for a in json.loads((out / "annotations" / f"instances_{s}.json").read_text())["annotations"]
    ]
    assert [a["ls_region_id"] for a in anns] == ["cat"]
    cats = json.loads((out / "annotations" / "instances_train.json").read_text())["categories"]
    assert [c["name"] for c in cats] == ["Cat"]
    assert _manifest(out)[4]["reason"] == "no_selected_labels"
    with pytest.raises(BadRequest, match="not in the label config"):
        _export(tmp_path / "again", "coco", filters=CurationFilters(labels=frozenset({"Zebra"})))


def test_agreement_filter_compares_with_the_latest_prediction(tmp_path: Path) -> None:
    shifted = np.roll(TWO_PARTS, 4, axis=1)
    predictions = {
        1: [
            {
                "id": 5,
                "model_version": "v1",
                "created_at": "2025-01-01T00:00:00Z",
                "result": [brush_region(RING, "Cat")],
            }
        ],
        4: [
            {
                "id": 6,
                "model_version": "v1",
                "created_at": "2025-01-01T00:00:00Z",
                "result": [brush_region(TWO_PARTS, "Dog")],
            },
            {
                "id": 7,
                "model_version": "v2",
                "created_at": "2025-02-01T00:00:00Z",
                "result": [brush_region(shifted, "Dog")],
            },
        ],
    }
    filters = CurationFilters(min_agreement_iou=0.9)
    summary, out = _export(
        tmp_path, "coco", filters=filters, predictions=predictions
    )
    entries = _manifest(out)
    assert entries[1]["reason"] == "low_agreement"  # Cat agrees, Dog, Bird and Car were not predicted
    assert entries[1]["agreement_iou"] == pytest.approx(0.25)
    assert entries[4]["reason"] == "low_agreement"  # the newest prediction (v2) is shifted
    filters_v1 = CurationFilters(min_agreement_iou=0.9, model_version="v1")
    summary, out = _export(
        tmp_path / "v1", "coco", filters=filters_v1, predictions=predictions
    )
    assert _manifest(out)[4]["status"] == "included" and _manifest(out)[4]["agreement_iou"] == 1.0


def test_output_folder_must_be_new_or_empty_and_options_are_checked(tmp_path: Path) -> None:
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "old.json").write_text("{}")
    with pytest.raises(BadRequest, match="not empty"):
        _export(tmp_path, "coco")
    with pytest.raises(BadRequest, match="format"):
        ExportOptions(project_id=1, format="voc", out_dir=tmp_path)  # type: ignore[arg-type]
    # the agreement filter needs nothing more: a task without predictions is excluded, with why
    _, out = _export(tmp_path / "x", "coco", filters=CurationFilters(min_agreement_iou=0.5))
    assert {e["reason"] for e in _manifest(out).values() if e["status"] == "excluded"} >= {"no_prediction"}
    with pytest.raises(BadRequest, match="read them"):
        _export(tmp_path / "y", "coco", copy_images=True)


def test_tasks_are_streamed_including_cancelled_annotations(tmp_path: Path) -> None:
    source = ListSource(LABEL_CONFIG, _tasks())
    options = ExportOptions(project_id=7, format="coco", out_dir=tmp_path / "out", val_fraction=0.0)
    summary = run_export(source, options, progress=False)
    assert source.calls == [{"only_annotated": True, "include_cancelled": True}]
    assert summary["images"] == {"train": 2}
    assert sorted(p.name for p in (tmp_path / "out" / "annotations").iterdir()) == ["instances_train.json"]
