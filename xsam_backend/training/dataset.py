"""Accepted Label Studio annotations → instance masks with labels, and a deterministic hold-out split.

Training and the dataset export agree on what counts, because they share the code:

* the acceptance rule (``TRAIN_ACCEPT``: ``submitted``, ``ground_truth`` or ``reviewed``) and
  the choice of one annotation per task are :mod:`xsam_backend.export.curation`'s;
* brush (RLE), polygon (percent points) and rectangle (percent box, rotated about its top-left
  corner) results become ``(H, W)`` bool masks in the original pixel frame through
  :func:`xsam_backend.export.regions.parse_result`; regions with a label the config does not
  output, or unreadable ones, are skipped with a logged reason.

:func:`split_holdout` holds a task out when a hash of ``(seed, task id)`` falls below the
fraction, so a task stays on the same side as the project grows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xsam_backend.export.curation import AcceptancePolicy, choose_annotation
from xsam_backend.export.curation import is_accepted as _policy_accepts
from xsam_backend.export.regions import Instance, parse_result
from xsam_backend.labelstudio.api import LabelledTask
from xsam_backend.settings import AcceptChoice

log = logging.getLogger(__name__)


def is_accepted(annotation: Mapping[str, Any], mode: AcceptChoice) -> bool:
    """Whether ``annotation`` (Label Studio annotation JSON) is training data under ``mode``."""
    return _policy_accepts(annotation, AcceptancePolicy(mode))


@dataclass(frozen=True, eq=False)
class TrainingExample:
    """One task's accepted annotation as instances.

    ``image_url``: the task data value (downloaded like a prediction's image); ``image_size``:
    ``(H, W)`` the regions refer to; ``instances``: masks ``(H, W)`` bool with their labels.
    """

    task_id: int
    annotation_id: int
    image_url: str
    image_size: tuple[int, int]
    instances: tuple[Instance, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(i.label for i in self.instances)


def task_example(
    task: LabelledTask, image_key: str, labels: Sequence[str], mode: AcceptChoice
) -> TrainingExample | None:
    """The training example of ``task``: its chosen accepted annotation's regions whose label is
    one of ``labels`` (``None`` when no such region has a mask)."""
    annotation = choose_annotation(task.annotations, AcceptancePolicy(mode)).annotation
    if annotation is None:
        return None
    url = task.data.get(image_key, task.data.get("$undefined$"))
    if not isinstance(url, str) or not url:
        log.warning("task %s has no image under data.%s; skipped", task.id, image_key)
        return None
    result = annotation.get("result")
    parsed = parse_result(result if isinstance(result, list) else [], labels)
    for region_id, reason in parsed.skipped:
        log.warning("task %s, region %s: skipped: %s", task.id, region_id, reason)
    instances = tuple(i for i in parsed.instances if i.mask.any())
    if not instances or parsed.size is None:
        return None
    annotation_id = annotation.get("id")
    return TrainingExample(
        task_id=task.id,
        annotation_id=annotation_id if isinstance(annotation_id, int) else -1,
        image_url=url,
        image_size=parsed.size,
        instances=instances,
    )


def collect_examples(
    tasks: Iterable[LabelledTask], image_key: str, labels: Sequence[str], mode: AcceptChoice
) -> list[TrainingExample]:
    """The training examples of ``tasks``, in task-id order (see :func:`task_example`)."""
    examples = [e for e in (task_example(t, image_key, labels, mode) for t in tasks) if e is not None]
    return sorted(examples, key=lambda e: e.task_id)


@dataclass(frozen=True)
class Split:
    """Training and hold-out examples, each in task-id order."""

    train: tuple[TrainingExample, ...]
    holdout: tuple[TrainingExample, ...]


def _unit_hash(seed: int, task_id: int) -> float:
    digest = hashlib.sha256(f"xsam-holdout:{seed}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_holdout(examples: Sequence[TrainingExample], fraction: float, seed: int = 0) -> Split:
    """Deterministic split by a hash of ``(seed, task id)``.

    With ``fraction`` > 0 and at least two examples, both sides get at least one example (the
    task with the smallest hash is held out, the one with the largest trains). ``fraction`` must
    be in ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the hold-out fraction must be in [0, 1); got {fraction}")
    ordered = sorted(examples, key=lambda e: _unit_hash(seed, e.task_id))
    held = [e for e in ordered if _unit_hash(seed, e.task_id) < fraction]
    if fraction > 0 and len(ordered) >= 2:
        if not held:
            held = ordered[:1]
        if len(held) == len(ordered):
            held = held[:-1]
    held_ids = {e.task_id for e in held}
    train = tuple(sorted((e for e in examples if e.task_id not in held_ids), key=lambda e: e.task_id))
    return Split(train=train, holdout=tuple(sorted(held, key=lambda e: e.task_id)))
