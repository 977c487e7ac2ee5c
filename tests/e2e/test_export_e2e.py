"""End to end: annotate a real Label Studio 1.23.2 project through its API, export it with
``python -m xsam_backend export`` in each format, and check every mask against its source.

The project holds the sample photographs (one uploaded JPEG, one uploaded JPEG whose EXIF says
"rotate 90° clockwise", and two PNGs from local-files storage). Each annotated task gets a
rectangle, a polygon and a brush region of a coin, in that order; one task is only skipped, and
one has a newer skipped annotation beside its submitted one. Brush masks must come back exactly;
polygons within the rasterisation difference at their boundary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from deployment import SampleImages
from labelstudio import LabelStudioClient
from labelstudio_server import REPO_ROOT, LabelStudioServer
from PIL import Image
from pycocotools.coco import COCO
from sample_images import iou, reference_coin_mask
from skimage import data

from xsam_backend.masks import (
    encode_brush_rle,
    mask_to_box,
    mask_to_polygons,
    polygon_to_percent,
    rasterize_polygon,
)

pytestmark = pytest.mark.e2e

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Coin"/>
    <Label value="Background object"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="Coin"/>
    <Label value="Rim"/>
  </PolygonLabels>
  <RectangleLabels name="box" toName="image">
    <Label value="Coin box"/>
  </RectangleLabels>
</View>
"""
CATEGORIES = ["Coin", "Background object", "Rim", "Coin box"]
EXPORT_TIMEOUT_S = 120


def _write_exif_rotated_jpeg(path: Path) -> np.ndarray:
    """The coins photograph stored as is, with EXIF orientation 6 (shown turned 90° clockwise).

    Returns the image as shown: ``(384, 303)`` uint8, the frame Label Studio's regions refer to.
    """
    grey = data.coins()
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey).save(path, quality=95, exif=exif)
    return np.ascontiguousarray(np.rot90(grey, k=-1))


def _regions(coin: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """A rectangle, a polygon and a brush region of ``coin`` (``(H, W)`` bool), and their expected masks."""
    h, w = coin.shape
    common = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
    x0, y0, x1, y1 = mask_to_box(coin)  # type: ignore[misc]
    (ring,) = mask_to_polygons(coin).polygons
    box = {"x": x0 / w * 100, "y": y0 / h * 100, "width": (x1 - x0) / w * 100, "height": (y1 - y0) / h * 100}
    result = [
        {
            "id": "box",
            "type": "rectanglelabels",
            "from_name": "box",
            **common,
            "value": {**box, "rotation": 0, "rectanglelabels": ["Coin box"]},
        },
        {
            "id": "rim",
            "type": "polygonlabels",
            "from_name": "poly",
            **common,
            "value": {"points": polygon_to_percent(ring, w, h), "closed": True, "polygonlabels": ["Rim"]},
        },
        {
            "id": "coin",
            "type": "brushlabels",
            "from_name": "brush",
            **common,
            "value": {"format": "rle", "rle": encode_brush_rle(coin), "brushlabels": ["Coin"]},
        },
    ]
    box_mask = np.zeros_like(coin)
    box_mask[int(y0) : int(y1), int(x0) : int(x1)] = True
    return result, {"box": box_mask, "rim": rasterize_polygon(ring, h, w), "coin": coin}


class ExportProject:
    """The annotated project: ``expected[task id][region id]`` masks, ``shown[task id]`` images."""

    def __init__(
        self,
        project_id: int,
        expected: dict[int, dict[str, np.ndarray]],
        shown: dict[int, np.ndarray],
        skipped_task: int,
        tasks: dict[str, int],
    ) -> None:
        self.id = project_id
        self.expected = expected
        self.shown = shown
        self.skipped_task = skipped_task
        self.tasks = tasks


@pytest.fixture(scope="module")
def export_project(ls_client: LabelStudioClient, sample_images: SampleImages, e2e_dir: Path) -> ExportProject:
    project_id = ls_client.create_project("export", CONFIG)
    rotated_path = e2e_dir / "to-upload" / "coins_exif_rotated.jpg"
    rotated_shown = _write_exif_rotated_jpeg(rotated_path)
    ls_client.import_file(project_id, sample_images.upload.path)
    ls_client.import_file(project_id, rotated_path)
    storage_id = ls_client.add_local_files_storage(project_id, sample_images.local_dir, r".*\.png")
    ls_client.sync_local_files_storage(storage_id)
    names = [sample_images.upload.path.name, rotated_path.name, *sample_images.local]
    by_name: dict[str, int] = {}
    for task in ls_client.list_tasks(project_id):
        # Label Studio prefixes uploaded file names with a random token.
        (name,) = [n for n in names if str(task["data"]["image"]).endswith(n)]
        by_name[name] = int(task["id"])
    grey = data.coins()
    shown = {
        by_name[sample_images.upload.path.name]: np.asarray(
            Image.open(sample_images.upload.path).convert("L")
        ),
        by_name[rotated_path.name]: rotated_shown,
        by_name["coins.png"]: grey,
    }
    expected: dict[int, dict[str, np.ndarray]] = {}
    for task_id, image in shown.items():
        result, masks = _regions(reference_coin_mask(image))
        ls_client.request(
            "POST", f"/api/tasks/{task_id}/annotations/", json={"result": result, "was_cancelled": False}
        )
        expected[task_id] = masks
    png_task = by_name["coins.png"]
    ls_client.request(
        "POST", f"/api/tasks/{png_task}/annotations/", json={"result": [], "was_cancelled": True}
    )
    skipped_task = by_name["coins_crop_rgb.png"]
    ls_client.request(
        "POST", f"/api/tasks/{skipped_task}/annotations/", json={"result": [], "was_cancelled": True}
    )
    # Predictions for the agreement filter: identical on the uploaded JPEG, only the brush on the PNG.
    upload_task = by_name[sample_images.upload.path.name]
    same, _ = _regions(reference_coin_mask(shown[upload_task]))
    brush_only, _ = _regions(reference_coin_mask(grey))
    for task_id, result in ((upload_task, same), (png_task, brush_only[2:])):
        ls_client.request(
            "POST",
            "/api/predictions/",
            json={"task": task_id, "result": result, "model_version": "m1", "score": 0.9},
        )
    return ExportProject(project_id, expected, shown, skipped_task, by_name)


def _run_export(
    label_studio: LabelStudioServer, project: ExportProject, out: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(out.parent),
        "LANG": "C.UTF-8",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
        "LABEL_STUDIO_MEDIA_DIR": str(label_studio.media_dir),
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.files_root),
        "MEDIA_CACHE_DIR": str(out.parent / f"{out.name}-media-cache"),
    }
    command = [
        sys.executable,
        "-m",
        "xsam_backend",
        "export",
        "--project",
        str(project.id),
        "--out",
        str(out),
        *args,
    ]
    done = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S
    )
    assert done.returncode == 0, f"export failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _manifest(out: Path) -> dict[int, dict[str, Any]]:
    return {e["task_id"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def _boundary_band(mask: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    u8 = mask.astype(np.uint8)
    return cv2.dilate(u8, kernel).astype(bool) & ~cv2.erode(u8, kernel).astype(bool)


def test_coco_export_round_trips_every_mask(
    label_studio: LabelStudioServer, export_project: ExportProject, tmp_path: Path
) -> None:
    out = tmp_path / "coco"
    done = _run_export(
        label_studio, export_project, out, "--format", "coco", "--val-fraction", "0.5", "--copy-images"
    )
    assert "exported 3 of 4 tasks" in done.stdout
    assert "project" in done.stderr  # the progress bar
    seen = 0
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == CATEGORIES
        for image in coco.loadImgs(coco.getImgIds()):
            shown = export_project.shown[image["id"]]
            assert (image["height"], image["width"]) == shown.shape  # after EXIF orientation
            copied = cv2.imread(str(out / "images" / split / image["file_name"]), cv2.IMREAD_GRAYSCALE)
            if image["file_name"].startswith(f"{export_project.tasks['coins.png']}_"):
                np.testing.assert_array_equal(copied, shown)  # lossless source
            else:
                assert copied.shape == shown.shape and np.abs(copied.astype(int) - shown).mean() < 2
            expected = export_project.expected[image["id"]]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert sorted(a["ls_region_id"] for a in anns) == ["box", "coin", "rim"]
            for ann in anns:
                decoded = coco.annToMask(ann).astype(bool)
                source = expected[ann["ls_region_id"]]
                name = coco.loadCats(ann["category_id"])[0]["name"]
                assert name == {"box": "Coin box", "rim": "Rim", "coin": "Coin"}[ann["ls_region_id"]]
                if ann["ls_region_id"] == "coin":
                    np.testing.assert_array_equal(decoded, source)
                else:
                    assert not (decoded ^ source)[~_boundary_band(source)].any()
                    assert iou(decoded, expected["coin"] if ann["ls_region_id"] == "rim" else source) > 0.95
                seen += 1
    assert seen == 9
    manifest = _manifest(out)
    assert manifest[export_project.skipped_task]["reason"] == "no_accepted_annotation"
    png = manifest[export_project.tasks["coins.png"]]
    assert [r[1] for r in png["other_annotations"]] == ["cancelled (skipped by the annotator)"]


def test_yolo_export_polygons_are_within_the_fidelity_bound(
    label_studio: LabelStudioServer, export_project: ExportProject, tmp_path: Path
) -> None:
    out = tmp_path / "yolo"
    _run_export(label_studio, export_project, out, "--format", "yolo-seg", "--no-progress")
    assert (
        'names:\n  0: "Coin"\n  1: "Background object"\n  2: "Rim"\n  3: "Coin box"\n'
        in (out / "data.yaml").read_text()
    )
    for task_id, entry in _manifest(out).items():
        if entry["status"] != "included":
            continue
        expected = export_project.expected[task_id]
        h, w = expected["coin"].shape
        drawn: dict[int, np.ndarray] = {}
        stem = Path(entry["file_name"]).stem
        for line in (out / "labels" / entry["split"] / f"{stem}.txt").read_text().splitlines():
            cls, *coords = line.split()
            ring = np.array(coords, float).reshape(-1, 2) * [w, h]
            drawn[int(cls)] = drawn.get(int(cls), np.zeros((h, w), bool)) | rasterize_polygon(ring, h, w)
        assert sorted(drawn) == [0, 2, 3]
        assert iou(drawn[0], expected["coin"]) >= 0.97
        assert iou(drawn[2], expected["rim"]) >= 0.99
        np.testing.assert_array_equal(drawn[3], expected["box"])


def test_png_mask_export_is_exact(
    label_studio: LabelStudioServer, export_project: ExportProject, tmp_path: Path
) -> None:
    out = tmp_path / "masks"
    _run_export(
        label_studio, export_project, out, "--format", "masks", "--val-fraction", "0", "--no-progress"
    )
    included = {t: e for t, e in _manifest(out).items() if e["status"] == "included"}
    assert sorted(included) == sorted(export_project.expected)
    for task_id, entry in included.items():
        expected = export_project.expected[task_id]
        stem = Path(entry["file_name"]).stem
        semantic = cv2.imread(str(out / "semantic" / "train" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        instance = cv2.imread(str(out / "instance" / "train" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        want = np.zeros(expected["coin"].shape, np.uint8)
        want[expected["box"]], want[expected["rim"]], want[expected["coin"]] = 4, 3, 1
        np.testing.assert_array_equal(semantic, want)
        np.testing.assert_array_equal(instance == 3, expected["coin"])  # the brush, drawn last, on top


def test_agreement_filter_keeps_tasks_that_match_their_prediction(
    label_studio: LabelStudioServer, export_project: ExportProject, tmp_path: Path
) -> None:
    out = tmp_path / "agree"
    _run_export(
        label_studio,
        export_project,
        out,
        "--format",
        "coco",
        "--min-agreement-iou",
        "0.9",
        "--model-version",
        "m1",
        "--no-progress",
    )
    manifest = _manifest(out)
    upload = manifest[export_project.tasks["coins_upload.jpg"]]
    assert upload["status"] == "included" and upload["agreement_iou"] == 1.0
    png = manifest[export_project.tasks["coins.png"]]
    assert png["reason"] == "low_agreement" and png["agreement_iou"] == pytest.approx(1 / 3)
    assert manifest[export_project.tasks["coins_exif_rotated.jpg"]]["reason"] == "no_prediction"
