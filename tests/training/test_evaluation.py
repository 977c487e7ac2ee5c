"""Hold-out metrics and the promotion gate on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from xsam_backend.training.evaluation import (
    ImagePrediction,
    ImageTruth,
    Scores,
    evaluate,
    iou_matrix,
    mask_ap,
    mask_miou,
    promotion_gate,
)


def box(y0: int, x0: int, y1: int, x1: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_iou_matrix() -> None:
    a, b = box(0, 0, 10, 10), box(0, 5, 10, 15)  # 50 shared of 150
    ious = iou_matrix(np.stack([a, b]), np.stack([a]))
    assert ious[:, 0] == pytest.approx([1.0, 50 / 150])
    assert iou_matrix(np.zeros((0, 20, 20), bool), np.stack([a])).shape == (0, 1)


def test_perfect_predictions_score_one() -> None:
    truth = ImageTruth(np.stack([box(0, 0, 10, 10), box(10, 10, 20, 20)]), ("cat", "dog"))
    pred = ImagePrediction(truth.masks.copy(), ("cat", "dog"), np.array([0.9, 0.8]))
    scores = evaluate([pred], [truth])
    assert (scores.miou, scores.ap, scores.num_instances) == (1.0, 1.0, 2)


def test_miou_needs_the_same_label_and_the_score() -> None:
    truth = ImageTruth(np.stack([box(0, 0, 10, 10)]), ("cat",))
    wrong_label = ImagePrediction(truth.masks.copy(), ("dog",), np.array([0.9]))
    low_score = ImagePrediction(truth.masks.copy(), ("cat",), np.array([0.3]))
    half = ImagePrediction(np.stack([box(0, 0, 10, 5)]), ("cat",), np.array([0.9]))
    assert mask_miou([wrong_label], [truth]) == 0.0
    assert mask_miou([low_score], [truth]) == 0.0
    assert mask_miou([half], [truth]) == pytest.approx(0.5)


def test_ap_ranks_false_positives() -> None:
    truth = ImageTruth(np.stack([box(0, 0, 10, 10)]), ("cat",))
    # a confident false positive ranked above the true positive halves the precision at recall 1
    pred = ImagePrediction(
        np.stack([box(10, 10, 20, 20), box(0, 0, 10, 10)]), ("cat", "cat"), np.array([0.9, 0.8])
    )
    assert mask_ap([pred], [truth]) == pytest.approx(0.5)
    reordered = ImagePrediction(pred.masks, pred.labels, np.array([0.1, 0.8]))
    assert mask_ap([reordered], [truth]) == pytest.approx(1.0)


def test_ap_averages_iou_thresholds() -> None:
    truth = ImageTruth(np.stack([box(0, 0, 10, 10)]), ("cat",))
    # IoU 0.7: a hit at thresholds 0.50..0.70 (5 of 10)
    pred = ImagePrediction(np.stack([box(0, 0, 10, 7)]), ("cat",), np.array([0.9]))
    assert mask_ap([pred], [truth]) == pytest.approx(0.5)


def test_gate() -> None:
    serving = Scores(miou=0.5, ap=0.3, num_images=2, num_instances=4)
    assert promotion_gate(Scores(0.5, 0.3, 2, 4), serving).promote  # not worse
    assert promotion_gate(Scores(0.6, 0.4, 2, 4), serving).promote
    worse = promotion_gate(Scores(0.6, 0.29, 2, 4), serving)
    assert not worse.promote and "AP 0.2900 < 0.3000" in worse.reason
    assert promotion_gate(Scores(0.6, 0.29, 2, 4), serving, margin=0.02).promote
    assert not promotion_gate(Scores(0.5, 0.3, 2, 4), serving, margin=-0.01).promote  # must improve
    assert not promotion_gate(Scores(1.0, 1.0, 0, 0), serving).promote
