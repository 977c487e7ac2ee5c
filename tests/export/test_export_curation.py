"""The acceptance rule, annotation choice, agreement and the split."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from export_samples import annotation, disc

from xsam_backend.errors import BadRequest
from xsam_backend.export.curation import (
    AcceptancePolicy,
    CurationFilters,
    agreement_iou,
    choose_annotation,
    is_accepted,
    latest_prediction,
    rejection_reason,
    split_of,
)
from xsam_backend.export.regions import Instance

SUBMITTED = AcceptancePolicy()
GROUND_TRUTH = AcceptancePolicy("ground_truth")
REVIEWED = AcceptancePolicy("reviewed")


def test_submitted_and_not_cancelled_is_accepted_by_default() -> None:
    assert is_accepted(annotation([], 1), SUBMITTED)
    assert not is_accepted(annotation([], 1, was_cancelled=True), SUBMITTED)
    assert (
        rejection_reason(annotation([], 1, was_cancelled=True), SUBMITTED)
        == "cancelled (skipped by the annotator)"
    )
    assert not is_accepted({"id": 3, "result": None}, SUBMITTED)


def test_ground_truth_rule_needs_the_flag_and_still_refuses_cancelled() -> None:
    assert is_accepted(annotation([], 1, ground_truth=True), GROUND_TRUTH)
    assert not is_accepted(annotation([], 1), GROUND_TRUTH)
    assert not is_accepted(annotation([], 1, ground_truth=True, was_cancelled=True), GROUND_TRUTH)


def test_reviewed_rule_reads_last_action_or_the_newest_review() -> None:
    assert is_accepted(annotation([], 1, last_action="accepted"), REVIEWED)
    assert is_accepted(annotation([], 1, last_action="fixed_and_accepted"), REVIEWED)
    assert rejection_reason(annotation([], 1, last_action="rejected"), REVIEWED) == "rejected in review"
    reviews = [
        {"id": 1, "accepted": False, "created_at": "2025-01-01T00:00:00Z"},
        {"id": 2, "accepted": True, "created_at": "2025-01-02T00:00:00Z"},
    ]
    assert is_accepted(annotation([], 1, last_action="submitted", reviews=reviews), REVIEWED)
    assert not is_accepted(annotation([], 1, reviews=reviews[:1]), REVIEWED)
    reason = rejection_reason(annotation([], 1, last_action="submitted"), REVIEWED)
    assert reason is not None and reason.startswith("no review data")


def test_choice_prefers_ground_truth_then_the_newest_then_the_highest_id() -> None:
    old = annotation([], 1, updated_at="2025-01-01T00:00:00Z")
    new = annotation([], 2, updated_at="2025-03-01T00:00:00+00:00")
    skipped = annotation([], 3, was_cancelled=True, updated_at="2026-01-01T00:00:00Z")
    choice = choose_annotation([old, new, skipped], SUBMITTED)
    assert choice.annotation is new
    assert dict(choice.rejected) == {
        3: "cancelled (skipped by the annotator)",
        1: "another accepted annotation (2) was chosen",
    }
    truth = annotation([], 4, ground_truth=True, updated_at="2024-01-01T00:00:00Z")
    assert choose_annotation([old, new, truth], SUBMITTED).annotation is truth
    same_time = [annotation([], 7), annotation([], 9), annotation([], 8)]
    assert choose_annotation(same_time, SUBMITTED).annotation is same_time[1]


def test_annotator_filter_refuses_other_users() -> None:
    mine = annotation([], 1, completed_by=5)
    theirs = annotation(
        [], 2, completed_by={"id": 6, "email": "x@example.com"}, updated_at="2026-01-01T00:00:00Z"
    )
    assert choose_annotation([mine, theirs], SUBMITTED, frozenset({5})).annotation is mine
    assert choose_annotation([mine, theirs], SUBMITTED, frozenset({6})).annotation is theirs
    choice = choose_annotation([mine], SUBMITTED, frozenset({6}))
    assert choice.annotation is None and "annotator 5" in choice.rejected[0][1]


def test_latest_prediction_by_time_and_version() -> None:
    predictions = [
        {"id": 1, "result": [], "model_version": "a", "created_at": "2025-01-01T00:00:00Z"},
        {"id": 2, "result": [], "model_version": "b", "created_at": "2025-02-01T00:00:00Z"},
        {"id": 3, "result": [], "model_version": "a", "created_at": "2025-01-15T00:00:00Z"},
    ]
    assert latest_prediction(predictions)["id"] == 2  # type: ignore[index]
    assert latest_prediction(predictions, "a")["id"] == 3  # type: ignore[index]
    assert latest_prediction(predictions, "c") is None
    # the SDK's typed fields hold datetimes; naive times count as UTC
    typed = [
        {"id": 4, "result": [], "created_at": datetime(2025, 3, 1, tzinfo=UTC)},
        {"id": 5, "result": [], "created_at": datetime(2025, 2, 1)},
        {"id": 6, "result": [], "created_at": "2025-02-15T00:00:00"},
    ]
    assert latest_prediction([*predictions, *typed])["id"] == 4  # type: ignore[index]
    assert latest_prediction([*predictions, *typed[1:]])["id"] == 6  # type: ignore[index]


def _instance(label: str, mask: np.ndarray) -> Instance:
    return Instance(label, "brush", mask, None, label)


def test_agreement_is_the_mean_per_label_iou() -> None:
    a = np.zeros((10, 10), bool)
    a[:, :4] = True  # 40 px
    b = np.zeros((10, 10), bool)
    b[:, 2:6] = True  # 40 px, 20 shared, union 60
    assert agreement_iou([_instance("Cat", a)], [_instance("Cat", a)]) == 1.0
    assert agreement_iou([_instance("Cat", a)], [_instance("Cat", b)]) == pytest.approx(1 / 3)
    # "Dog" only in the prediction scores 0 for that label.
    assert agreement_iou([_instance("Cat", a)], [_instance("Cat", a), _instance("Dog", b)]) == pytest.approx(
        0.5
    )
    # Two annotated parts of one label are compared as their union.
    left, right = a.copy(), np.zeros((10, 10), bool)
    right[:, 4:6] = True
    assert (
        agreement_iou([_instance("Cat", left), _instance("Cat", right)], [_instance("Cat", a | right)]) == 1.0
    )
    assert agreement_iou([], []) == 1.0
    assert (
        agreement_iou([_instance("Cat", disc(10, 10, 5, 5, 3))], [_instance("Cat", np.ones((5, 5), bool))])
        == 0.0
    )


def test_split_is_stable_per_task_and_close_to_the_fraction() -> None:
    splits = [split_of(task_id, 0.2, seed=3) for task_id in range(5000)]
    assert splits == [split_of(task_id, 0.2, seed=3) for task_id in range(5000)]
    assert 0.18 < splits.count("val") / len(splits) < 0.22
    assert splits != [split_of(task_id, 0.2, seed=4) for task_id in range(5000)]
    assert {split_of(t, 0.0) for t in range(100)} == {"train"}
    with pytest.raises(BadRequest):
        split_of(1, 1.5)


def test_filters_validate_their_values() -> None:
    with pytest.raises(BadRequest):
        CurationFilters(min_agreement_iou=1.5)
    with pytest.raises(BadRequest):
        CurationFilters(model_version="v1")
    with pytest.raises(BadRequest):
        AcceptancePolicy("maybe")  # type: ignore[arg-type]
