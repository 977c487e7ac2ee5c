"""Accepted annotations → instance masks with labels; deterministic hold-out split."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from xsam_backend.labelstudio.api import LabelledTask
from xsam_backend.masks import encode_brush_rle
from xsam_backend.training.dataset import (
    TrainingExample,
    collect_examples,
    is_accepted,
    split_holdout,
    task_example,
)

H, W = 480, 640


def brush_result(mask: np.ndarray, label: str = "Object") -> dict[str, Any]:
    return {
        "id": "b1",
        "from_name": "brush",
        "to_name": "image",
        "type": "brushlabels",
        "original_height": mask.shape[0],
        "original_width": mask.shape[1],
        "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]},
    }


def real_annotation(captured: dict[str, Any]) -> dict[str, Any]:
    """The captured ANNOTATION_CREATED annotation, its (trimmed) brush replaced by a real one."""
    annotation = copy.deepcopy(captured["webhook_ANNOTATION_CREATED_data"]["annotation"])
    mask = np.zeros((H, W), bool)
    mask[300:400, 400:520] = True
    annotation["result"][0] = brush_result(mask)
    return annotation


def test_brush_polygon_and_rectangle_become_instances(captured_payloads: dict[str, Any]) -> None:
    annotation = real_annotation(captured_payloads)
    task = LabelledTask(10, {"image": "/data/upload/4/x.jpg"}, (annotation,))
    example = task_example(task, "image", ("Object",), "submitted")
    assert example is not None
    assert (example.task_id, example.annotation_id, example.image_size) == (10, 1, (H, W))
    assert example.labels == ("Object", "Object", "Object")
    brush, polygon, rectangle = (i.mask for i in example.instances)
    assert brush.sum() == 100 * 120
    # rectangle x=30 %, y=25 %, 40 % x 50 %: columns 192..447, rows 120..359
    ys, xs = np.nonzero(rectangle)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (192, 447, 120, 359)
    assert polygon.any() and polygon.shape == (H, W)


def test_rotated_rectangle() -> None:
    result = {
        "id": "r",
        "type": "rectanglelabels",
        "original_height": 100,
        "original_width": 100,
        "value": {"x": 50, "y": 10, "width": 20, "height": 10, "rotation": 90, "rectanglelabels": ["Object"]},
    }
    task = LabelledTask(1, {"image": "u"}, ({"id": 1, "result": [result]},))
    example = task_example(task, "image", ("Object",), "submitted")
    assert example is not None
    ys, xs = np.nonzero(example.instances[0].mask)
    # turned 90° clockwise about (50, 10): x from 40 to 50, y from 10 to 30
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40, 49, 10, 29)


def test_acceptance_modes(captured_payloads: dict[str, Any]) -> None:
    annotation = real_annotation(captured_payloads)
    assert is_accepted(annotation, "submitted")
    assert not is_accepted({**annotation, "was_cancelled": True}, "submitted")
    assert not is_accepted(annotation, "ground_truth")
    assert is_accepted({**annotation, "ground_truth": True}, "ground_truth")
    assert not is_accepted(annotation, "reviewed")
    assert is_accepted({**annotation, "last_action": "accepted"}, "reviewed")
    assert not is_accepted({**annotation, "last_action": "rejected"}, "reviewed")


def test_ground_truth_wins_and_unknown_labels_are_skipped(captured_payloads: dict[str, Any]) -> None:
    base = real_annotation(captured_payloads)
    newer = {**base, "id": 2, "updated_at": "2030-01-01T00:00:00Z"}
    truth = {**base, "id": 3, "ground_truth": True, "result": [base["result"][0]]}
    cancelled = {**base, "id": 4, "was_cancelled": True, "updated_at": "2031-01-01T00:00:00Z"}
    task = LabelledTask(10, {"image": "u"}, (base, newer, truth, cancelled))
    example = task_example(task, "image", ("Object",), "submitted")
    assert example is not None and example.annotation_id == 3 and len(example.instances) == 1
    assert task_example(task, "image", ("Car",), "submitted") is None  # no region has a known label
    unlabelled = LabelledTask(11, {"other": "u"}, (base,))
    assert collect_examples([unlabelled, task], "image", ("Object",), "submitted")[0].task_id == 10


def examples(n: int) -> list[TrainingExample]:
    return [TrainingExample(i, 100 + i, f"/data/{i}.png", (4, 4), ()) for i in range(1, n + 1)]


def test_split_is_deterministic_and_stable_as_the_project_grows() -> None:
    first = split_holdout(examples(50), 0.2, seed=0)
    again = split_holdout(list(reversed(examples(50))), 0.2, seed=0)
    assert [e.task_id for e in first.holdout] == [e.task_id for e in again.holdout]
    assert [e.task_id for e in first.train] == [e.task_id for e in again.train]
    held = {e.task_id for e in first.holdout}
    assert 3 <= len(held) <= 20
    assert {e.task_id for e in first.train} | held == set(range(1, 51)) and not held & {
        e.task_id for e in first.train
    }
    grown = split_holdout(examples(80), 0.2, seed=0)
    assert held <= {e.task_id for e in grown.holdout}
    assert {e.task_id for e in split_holdout(examples(50), 0.2, seed=1).holdout} != held


def test_small_projects_get_both_sides() -> None:
    two = split_holdout(examples(2), 0.2)
    assert len(two.train) == 1 and len(two.holdout) == 1
    one = split_holdout(examples(1), 0.2)
    assert len(one.train) == 1 and one.holdout == ()
    assert split_holdout(examples(5), 0.0).holdout == ()
    with pytest.raises(ValueError):
        split_holdout(examples(5), 1.0)
