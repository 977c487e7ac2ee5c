"""Calibrated region scores for active learning: Platt scaling fitted on a project's hold-out set.

X-SAM's own score of a region (instance, interactive and visual-grounded tasks) is the class
probability of its query times the mean mask probability inside the mask: a ranking signal, not
a probability. After a training job, the candidate's hold-out predictions are matched to the
accepted annotations (a hit: same label and IoU ≥ 0.5, each annotation matched once, best score
first, as for AP) and a logistic curve is fitted::

    calibrated = sigmoid(a · logit(raw) + b)

so that a calibrated score estimates the probability that the region would be accepted as is.
With fewer than ``min_samples`` predictions, or only hits or only misses, the fit is not
trustworthy and the identity (``a = 1``, ``b = 0``) is stored instead. The mapping is monotone
increasing (``a`` is kept positive), so it never reorders the regions of one image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xsam_backend.training.evaluation import ImagePrediction, ImageTruth, iou_matrix

_EPS = 1e-6


@dataclass(frozen=True)
class ScoreCalibration:
    """``calibrated = sigmoid(a · logit(raw) + b)``; ``samples`` predictions were used to fit it."""

    a: float = 1.0
    b: float = 0.0
    samples: int = 0

    @property
    def is_identity(self) -> bool:
        return self.a == 1.0 and self.b == 0.0

    def apply(self, score: float) -> float:
        """The calibrated value of a raw score in ``[0, 1]``."""
        if self.is_identity:
            return float(score)
        s = min(max(float(score), _EPS), 1 - _EPS)
        z = self.a * math.log(s / (1 - s)) + self.b
        return 1.0 / (1.0 + math.exp(-z))

    def to_json(self) -> dict[str, float | int]:
        return {"a": self.a, "b": self.b, "samples": self.samples}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ScoreCalibration:
        if not data:
            return cls()
        return cls(
            a=float(data.get("a", 1.0)), b=float(data.get("b", 0.0)), samples=int(data.get("samples", 0))
        )


def match_hits(
    predictions: Sequence[ImagePrediction], truths: Sequence[ImageTruth], iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Every prediction's raw score and whether it hits an annotation: ``(scores, hits)``, ``(P,)``
    float64 and bool. Per image, predictions are matched best score first, each annotation once."""
    scores: list[float] = []
    hits: list[bool] = []
    for pred, truth in zip(predictions, truths, strict=True):
        ious = iou_matrix(pred.masks, truth.masks)
        used: set[int] = set()
        for k in np.argsort(-pred.scores, kind="stable"):
            best = -1
            for g, label in enumerate(truth.labels):
                candidate = g not in used and label == pred.labels[k] and ious[k, g] >= iou
                if candidate and (best < 0 or ious[k, g] > ious[k, best]):
                    best = g
            if best >= 0:
                used.add(best)
            scores.append(float(pred.scores[k]))
            hits.append(best >= 0)
    return np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool)


def fit_calibration(scores: np.ndarray, hits: np.ndarray, min_samples: int = 20) -> ScoreCalibration:
    """Platt scaling of ``scores`` ``(P,)`` in ``[0, 1]`` against ``hits`` ``(P,)`` bool.

    Newton's method on the logistic log-likelihood with a small ridge (towards the identity);
    the identity when the data cannot support a fit (module docstring).
    """
    n = int(scores.shape[0])
    if n < min_samples or hits.all() or not hits.any():
        return ScoreCalibration(samples=n)
    s = np.clip(scores, _EPS, 1 - _EPS)
    x = np.log(s / (1 - s))
    y = hits.astype(np.float64)
    features = np.stack([x, np.ones_like(x)], axis=1)
    prior = np.array([1.0, 0.0])
    ridge = 1e-2
    theta = prior.copy()
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(features @ theta)))
        gradient = features.T @ (p - y) + ridge * (theta - prior)
        hessian = (features * (p * (1 - p))[:, None]).T @ features + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    a, b = float(theta[0]), float(theta[1])
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        return ScoreCalibration(samples=n)
    return ScoreCalibration(a=a, b=b, samples=n)
