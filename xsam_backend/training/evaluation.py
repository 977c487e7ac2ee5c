"""Hold-out metrics (mask mIoU and mask AP) and the promotion gate; numpy only.

Definitions (every mask ``(H, W)`` bool in the original pixel frame of its image):

* **mask mIoU**: for every ground-truth instance, the IoU of the best-overlapping predicted mask
  *of the same label* among the predictions scoring at least ``miou_score`` (0 when there is
  none); the mean over all ground-truth instances of the set. It answers "how good is the mask
  a pre-label gives this object".
* **mask AP**: COCO-style: for each label, predictions of all images sorted by score are matched
  greedily to unmatched ground truths of that label at IoU ≥ t; precision is made monotone and
  read at 101 recall points; the mean over labels present in the ground truth and over
  ``t = 0.50, 0.55, …, 0.95``.
* **gate**: the candidate is promoted when neither metric is worse than the serving version's by
  more than ``margin`` (``TRAIN_PROMOTE_MARGIN``; 0: "not worse"; negative: must improve).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True, eq=False)
class ImagePrediction:
    """Predicted instances of one image: ``masks`` ``(P, H, W)`` bool, ``labels`` and ``scores`` ``(P,)``."""

    masks: np.ndarray
    labels: tuple[str, ...]
    scores: np.ndarray


@dataclass(frozen=True, eq=False)
class ImageTruth:
    """Ground-truth instances of one image: ``masks`` ``(G, H, W)`` bool and their ``labels``."""

    masks: np.ndarray
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Scores:
    """Hold-out metrics in ``[0, 1]``, and how many images and instances they cover."""

    miou: float
    ap: float
    num_images: int
    num_instances: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "miou": round(self.miou, 6),
            "ap": round(self.ap, 6),
            "num_images": self.num_images,
            "num_instances": self.num_instances,
        }


def iou_matrix(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``pred`` ``(P, H, W)`` and ``truth`` ``(G, H, W)`` bool masks: ``(P, G)`` float64."""
    if pred.shape[0] == 0 or truth.shape[0] == 0:
        return np.zeros((pred.shape[0], truth.shape[0]))
    if pred.shape[1:] != truth.shape[1:]:
        raise ValueError(f"prediction masks are {pred.shape[1:]} but ground truth is {truth.shape[1:]}")
    p = pred.reshape(pred.shape[0], -1).astype(np.float64)
    t = truth.reshape(truth.shape[0], -1).astype(np.float64)
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _same_label(pred: ImagePrediction, truth: ImageTruth) -> np.ndarray:
    return np.array([[p == t for t in truth.labels] for p in pred.labels], dtype=bool).reshape(
        len(pred.labels), len(truth.labels)
    )


def mask_miou(
    predictions: Sequence[ImagePrediction], truths: Sequence[ImageTruth], miou_score: float = 0.5
) -> float:
    """Mean over ground-truth instances of the best same-label IoU (see the module docstring)."""
    best: list[float] = []
    for pred, truth in zip(predictions, truths, strict=True):
        if len(truth.labels) == 0:
            continue
        keep = pred.scores >= miou_score
        kept = ImagePrediction(
            pred.masks[keep], tuple(np.asarray(pred.labels, dtype=object)[keep]), pred.scores[keep]
        )
        ious = iou_matrix(kept.masks, truth.masks) * _same_label(kept, truth)
        best.extend(ious.max(axis=0) if ious.shape[0] else np.zeros(len(truth.labels)))
    return float(np.mean(best)) if best else 0.0


def mask_ap(predictions: Sequence[ImagePrediction], truths: Sequence[ImageTruth]) -> float:
    """COCO-style mask AP over labels and IoU thresholds 0.50:0.95 (see the module docstring)."""
    labels = sorted({label for truth in truths for label in truth.labels})
    if not labels:
        return 0.0
    per_image = [(iou_matrix(p.masks, t.masks), p, t) for p, t in zip(predictions, truths, strict=True)]
    values = []
    for label in labels:
        for threshold in IOU_THRESHOLDS:
            values.append(_average_precision(per_image, label, threshold))
    return float(np.mean(values))


def _average_precision(
    per_image: Sequence[tuple[np.ndarray, ImagePrediction, ImageTruth]], label: str, threshold: float
) -> float:
    detections: list[tuple[float, int, int]] = []  # (score, image index, prediction index)
    num_truth = 0
    for index, (_, pred, truth) in enumerate(per_image):
        num_truth += sum(1 for t in truth.labels if t == label)
        detections.extend((float(pred.scores[k]), index, k) for k, p in enumerate(pred.labels) if p == label)
    if num_truth == 0:
        return 0.0
    detections.sort(key=lambda d: -d[0])
    matched: set[tuple[int, int]] = set()
    hits = np.zeros(len(detections))
    for rank, (_, index, k) in enumerate(detections):
        ious, _, truth = per_image[index]
        best, best_iou = -1, threshold
        for g, t in enumerate(truth.labels):
            if t != label or (index, g) in matched:
                continue
            if ious[k, g] >= best_iou:
                best, best_iou = g, ious[k, g]
        if best >= 0:
            matched.add((index, best))
            hits[rank] = 1
    tp = np.cumsum(hits)
    recall = tp / num_truth
    precision = tp / np.arange(1, len(detections) + 1) if detections else np.zeros(0)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0, 1, 101)
    read = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in read]))


def evaluate(
    predictions: Sequence[ImagePrediction], truths: Sequence[ImageTruth], miou_score: float = 0.5
) -> Scores:
    """:func:`mask_miou` and :func:`mask_ap` of a set of images (``predictions[i]`` ↔ ``truths[i]``)."""
    return Scores(
        miou=mask_miou(predictions, truths, miou_score),
        ap=mask_ap(predictions, truths),
        num_images=len(truths),
        num_instances=sum(len(t.labels) for t in truths),
    )


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote the candidate, and why (a sentence for the logs and ``meta.json``)."""

    promote: bool
    reason: str


def promotion_gate(candidate: Scores, serving: Scores, margin: float = 0.0) -> GateDecision:
    """Promote when ``candidate ≥ serving − margin`` on both mIoU and AP (see the module docstring)."""
    if candidate.num_instances == 0:
        return GateDecision(False, "the hold-out set has no instance: nothing to compare on")
    worse = [
        f"{name} {c:.4f} < {s:.4f} - {margin:g}"
        for name, c, s in (("mIoU", candidate.miou, serving.miou), ("AP", candidate.ap, serving.ap))
        if c < s - margin
    ]
    summary = f"mIoU {candidate.miou:.4f} vs {serving.miou:.4f}, AP {candidate.ap:.4f} vs {serving.ap:.4f}"
    if worse:
        return GateDecision(False, f"candidate is worse than the serving version ({'; '.join(worse)})")
    return GateDecision(True, f"candidate is not worse than the serving version ({summary})")
