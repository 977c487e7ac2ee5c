"""Which labels are curated: the acceptance rule, the filters and the train/val split.

The acceptance rule is shared with training, so the two always agree on what an accepted
annotation is. Annotations are the dicts Label Studio's task API returns (``id``, ``result``,
``was_cancelled``, ``ground_truth``, ``completed_by``, ``created_at``, ``updated_at``, and in
editions with reviewing, ``last_action`` and ``reviews``).

* ``submitted`` (default): submitted and not cancelled (skipped). Drafts are not annotations in
  the task API, so they never appear here.
* ``ground_truth``: as ``submitted``, and marked as ground truth.
* ``reviewed``: as ``submitted``, and accepted by a reviewer: ``last_action`` is ``accepted`` or
  ``fixed_and_accepted``, or the newest entry of ``reviews`` has ``accepted: true``. Annotations
  without any review data are refused with a reason saying so.

When a task has several accepted annotations, :func:`choose_annotation` takes a ground-truth one
first, then the most recently updated, then the highest id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from xsam_backend.errors import BadRequest
from xsam_backend.export.regions import Instance

AcceptanceRule = Literal["submitted", "ground_truth", "reviewed"]
Split = Literal["train", "val"]

_REVIEW_ACCEPTED = ("accepted", "fixed_and_accepted")
_REVIEW_REJECTED = ("rejected",)


@dataclass(frozen=True)
class AcceptancePolicy:
    """Which annotations count as accepted (see the module docstring for each ``rule``)."""

    rule: AcceptanceRule = "submitted"

    def __post_init__(self) -> None:
        if self.rule not in ("submitted", "ground_truth", "reviewed"):
            raise BadRequest(
                f"acceptance rule must be submitted, ground_truth or reviewed; got {self.rule!r}"
            )


@dataclass(frozen=True)
class CurationFilters:
    """Optional filters on top of the acceptance rule; ``None`` switches a filter off.

    ``labels``: keep only regions with these labels (a task left with none is excluded).
    ``annotators``: accept only annotations completed by these user ids.
    ``min_agreement_iou``: keep a task only when its accepted annotation and its latest
    prediction (of ``model_version`` when given) agree with at least this IoU
    (:func:`agreement_iou`).
    """

    labels: frozenset[str] | None = None
    annotators: frozenset[int] | None = None
    min_agreement_iou: float | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.min_agreement_iou is not None and not 0.0 <= self.min_agreement_iou <= 1.0:
            raise BadRequest(f"min_agreement_iou must lie in [0, 1]; got {self.min_agreement_iou}")
        if self.model_version is not None and self.min_agreement_iou is None:
            raise BadRequest("model_version selects the prediction to agree with: set min_agreement_iou too")


@dataclass(frozen=True)
class AnnotationChoice:
    """The annotation chosen for a task (``None`` when none is accepted) and why the others were not.

    ``rejected``: ``(annotation id, reason)`` for every annotation not accepted.
    """

    annotation: Mapping[str, Any] | None
    rejected: tuple[tuple[int | None, str], ...]


def _review_verdict(annotation: Mapping[str, Any]) -> bool | None:
    """True / False when review data accepts / rejects the annotation, None without review data."""
    last_action = annotation.get("last_action")
    if last_action in _REVIEW_ACCEPTED:
        return True
    if last_action in _REVIEW_REJECTED:
        return False
    reviews = annotation.get("reviews")
    if isinstance(reviews, list):
        verdicts = [r for r in reviews if isinstance(r, Mapping) and isinstance(r.get("accepted"), bool)]
        if verdicts:
            newest = max(verdicts, key=lambda r: (_timestamp(r.get("created_at")), _int_or(r.get("id"), -1)))
            return bool(newest["accepted"])
    return None


def rejection_reason(annotation: Mapping[str, Any], policy: AcceptancePolicy) -> str | None:
    """Why ``annotation`` is not accepted under ``policy``, or ``None`` when it is."""
    if not isinstance(annotation, Mapping):
        return "not an annotation object"
    if annotation.get("was_cancelled"):
        return "cancelled (skipped by the annotator)"
    if not isinstance(annotation.get("result"), list):
        return "no result list"
    if policy.rule == "ground_truth" and not annotation.get("ground_truth"):
        return "not marked as ground truth"
    if policy.rule == "reviewed":
        verdict = _review_verdict(annotation)
        if verdict is None:
            return "no review data (reviewing is not enabled, or the annotation was not reviewed)"
        if not verdict:
            return "rejected in review"
    return None


def is_accepted(annotation: Mapping[str, Any], policy: AcceptancePolicy) -> bool:
    """Whether ``annotation`` (a task API annotation dict) is accepted under ``policy``."""
    return rejection_reason(annotation, policy) is None


def annotator_id(annotation: Mapping[str, Any]) -> int | None:
    """The user id in ``completed_by`` (an int, or a user object with ``id``)."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("id")
    return who if isinstance(who, int) and not isinstance(who, bool) else None


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _timestamp(value: Any) -> float:
    """Seconds since the epoch of an ISO 8601 string (``Z`` allowed) or a ``datetime`` (what the
    SDK's typed task fields hold); -inf when missing or invalid. Naive times are taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return float("-inf")
    if not isinstance(value, datetime):
        return float("-inf")
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


def choose_annotation(
    annotations: Iterable[Mapping[str, Any]],
    policy: AcceptancePolicy,
    annotators: frozenset[int] | None = None,
) -> AnnotationChoice:
    """The task's accepted annotation: ground truth first, then the newest ``updated_at``, then id.

    ``annotators``: when given, annotations completed by anyone else are refused.
    """
    accepted: list[Mapping[str, Any]] = []
    rejected: list[tuple[int | None, str]] = []
    for annotation in annotations:
        reason = rejection_reason(annotation, policy)
        if reason is None and annotators is not None and annotator_id(annotation) not in annotators:
            reason = f"annotator {annotator_id(annotation)} is not among the selected annotators"
        if reason is None:
            accepted.append(annotation)
        else:
            ident = annotation.get("id") if isinstance(annotation, Mapping) else None
            rejected.append((ident if isinstance(ident, int) else None, reason))
    if not accepted:
        return AnnotationChoice(None, tuple(rejected))
    best = max(
        accepted,
        key=lambda a: (
            bool(a.get("ground_truth")),
            _timestamp(a.get("updated_at") or a.get("created_at")),
            _int_or(a.get("id"), -1),
        ),
    )
    for other in accepted:
        if other is not best:
            rejected.append(
                (_int_or(other.get("id"), -1), f"another accepted annotation ({best.get('id')}) was chosen")
            )
    return AnnotationChoice(best, tuple(rejected))


def latest_prediction(
    predictions: Sequence[Mapping[str, Any]], model_version: str | None = None
) -> Mapping[str, Any] | None:
    """The newest prediction (by ``created_at``, then id), among those of ``model_version`` if given."""
    candidates = [
        p
        for p in predictions
        if isinstance(p, Mapping)
        and isinstance(p.get("result"), list)
        and (model_version is None or p.get("model_version") == model_version)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (_timestamp(p.get("created_at")), _int_or(p.get("id"), -1)))


def agreement_iou(annotated: Sequence[Instance], predicted: Sequence[Instance]) -> float:
    """How well a prediction agrees with an annotation: the mean, over every label in either, of
    the IoU of that label's union mask in the two (1.0 when both are empty, 0.0 for a label only
    one of them has).

    Instances' masks are ``(H, W)`` bool in the same pixel frame; a size mismatch gives 0.0.
    """
    labels = sorted({i.label for i in annotated} | {i.label for i in predicted})
    if not labels:
        return 1.0
    scores = []
    for label in labels:
        a = _union([i.mask for i in annotated if i.label == label])
        b = _union([i.mask for i in predicted if i.label == label])
        if a is None or b is None or a.shape != b.shape:
            scores.append(0.0)
            continue
        union = int(np.count_nonzero(a | b))
        scores.append(int(np.count_nonzero(a & b)) / union if union else 1.0)
    return float(np.mean(scores))


def _union(masks: list[np.ndarray]) -> np.ndarray | None:
    if not masks:
        return None
    out = masks[0].copy()
    for mask in masks[1:]:
        if mask.shape != out.shape:
            return None
        out |= mask
    return out


def split_of(task_id: int, val_fraction: float, seed: int = 0) -> Split:
    """``"val"`` for a stable ``val_fraction`` of tasks, chosen by hashing the task id with ``seed``.

    The split of a task never depends on the other tasks, their order or the project's size, so
    re-exporting a grown project keeps every earlier task in its split.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise BadRequest(f"val_fraction must lie in [0, 1]; got {val_fraction}")
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if position < val_fraction else "train"
