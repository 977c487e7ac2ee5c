"""X-SAM post-processing: decoder mask logits and class logits to masks in the original frame.

Inputs, for one image (the batch dimension removed):

* ``class_logits``: ``(Q, C + 1)`` float, open-vocabulary class logits; column ``k < C`` is the
  ``k``-th ``<p>...</p>`` phrase (or region), the last column is the background class;
* ``mask_logits``: ``(Q, P, P)`` float, mask logits upsampled to the **SAM padded frame**
  (:func:`upsample_mask_logits`), the resized image in ``[0:scaled_h, 0:scaled_w]``;
* ``scaled_size`` ``(h, w)`` and ``original_size`` ``(H, W)`` from pre-processing.

Every function follows the official ``*_postprocess_fn`` of its task (``AAAI26_Archive``) step
by step, including its quirks (noted where they matter), so results match the official ones;
class probabilities are ``softmax(class_logits)[:, :-1]`` everywhere. Outputs are torch tensors
on the input's device, in the original frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PostprocessThresholds:
    """Score and mask thresholds. Defaults are the official function defaults (and demo values).

    * ``panoptic_score``: keep a query whose best class probability is ``>`` this;
    * ``instance_score``, ``vgd_score``: keep an instance whose score (class probability times
      mean mask probability) is ``>=`` this;
    * ``intseg_score``: interactive candidates ``>=`` this (the best one is always a candidate);
    * ``mask``: sigmoid probability above which a pixel is in the mask (panoptic, referring,
      reasoning, GCG);
    * ``overlap_area``: panoptic: a segment survives when its visible area over its own area
      (probability ``>= mask``) is ``>`` this.

    :data:`OFFICIAL_EVAL_THRESHOLDS` holds the values of the official evaluation configs.
    """

    panoptic_score: float = 0.5
    instance_score: float = 0.5
    vgd_score: float = 0.5
    intseg_score: float = 0.5
    mask: float = 0.5
    overlap_area: float = 0.8


DEFAULT_THRESHOLDS = PostprocessThresholds()
OFFICIAL_EVAL_THRESHOLDS = PostprocessThresholds(panoptic_score=0.0, instance_score=0.0, vgd_score=0.0)


def upsample_mask_logits(mask_logits: torch.Tensor, pad_size: int) -> torch.Tensor:
    """Decoder mask logits ``(..., Q, h, w)`` (``h = w = P / 8``) to the padded frame ``(..., Q, P, P)``.

    Bilinear, ``align_corners=False``, as the official segmentor. Upsample only the last layer's
    masks: the official code upsamples every intermediate set and uses one.
    """
    lead = mask_logits.shape[:-2]
    flat = mask_logits.reshape(-1, *mask_logits.shape[-3:]) if mask_logits.dim() > 3 else mask_logits[None]
    out = F.interpolate(flat, size=(pad_size, pad_size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, pad_size, pad_size)


def sem_seg_postprocess(
    result: torch.Tensor, scaled_size: tuple[int, int], original_size: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Padded-frame maps ``(C, P, P)`` to the original frame ``(C, H, W)``.

    Crops ``[:, :h, :w]`` (the resized image without padding), then resizes to ``(H, W)``:
    bilinear with ``align_corners=False`` for logits and probabilities, ``"nearest"`` for masks
    (returned as float, as the official function).
    """
    h, w = int(scaled_size[0]), int(scaled_size[1])
    size = (int(original_size[0]), int(original_size[1]))
    if result.shape[0] == 0:
        return result.new_zeros((0, *size), dtype=result.dtype if mode == "bilinear" else torch.float32)
    cropped = result[:, :h, :w].expand(1, -1, -1, -1)
    if mode == "bilinear":
        return F.interpolate(cropped, size=size, mode="bilinear", align_corners=False)[0]
    if mode == "nearest":
        return F.interpolate(cropped.float(), size=size, mode="nearest")[0]
    raise ValueError(f"mode must be 'bilinear' or 'nearest'; got {mode!r}")


def prompt_masks_to_original(
    masks: torch.Tensor, scaled_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """Padded-frame prompt masks ``(N, P, P)`` back to the original frame, ``(N, H, W)`` bool (nearest)."""
    return sem_seg_postprocess(masks, scaled_size, original_size, mode="nearest") > 0


def _class_probs(class_logits: torch.Tensor) -> torch.Tensor:
    if class_logits.dim() != 2 or class_logits.shape[1] < 2:
        raise ValueError(f"expected class logits (Q, C + 1) with C >= 1; got {tuple(class_logits.shape)}")
    return F.softmax(class_logits, dim=-1)[:, :-1]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of masks ``(K, H, W)``: ``(K, 4)`` float32 ``[x0, y0, x1, y1]``, x1/y1 exclusive.

    An empty mask gets ``[0, 0, 0, 0]`` (detectron2 ``BitMasks.get_bounding_boxes``).
    """
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32, device=masks.device)
    x_any = torch.any(masks != 0, dim=1)
    y_any = torch.any(masks != 0, dim=2)
    for i in range(masks.shape[0]):
        x = torch.where(x_any[i])[0]
        y = torch.where(y_any[i])[0]
        if len(x) > 0 and len(y) > 0:
            boxes[i] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
    return boxes


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes: ``(N, M)``, 0 where they do not intersect."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2])
    inter = wh.clamp(min=0).prod(dim=2)
    union = area1[:, None] + area2 - inter
    return torch.where(inter > 0, inter / union, torch.zeros(1, dtype=inter.dtype, device=inter.device))


# -- generic / open-vocabulary -------------------------------------------------------------------


@dataclass(frozen=True)
class PanopticSegment:
    """One panoptic segment: ``id`` in the segmentation map, ``category_id`` = phrase index.

    ``isthing`` is false for fused stuff classes (several queries then share one ``id`` and the
    segment appears once per fused query, as in the official output).
    """

    id: int
    category_id: int
    isthing: bool
    score: float


@dataclass(frozen=True, eq=False)
class PanopticResult:
    """``segmentation``: ``(H, W)`` int32, 0 = void, else a segment ``id``; ``segments`` in id order."""

    segmentation: torch.Tensor
    segments: tuple[PanopticSegment, ...]


def panoptic_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    stuff_classes: Iterable[int] = (),
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
) -> PanopticResult:
    """Panoptic segmentation (official ``genseg_postprocess_fn``, panoptic branch).

    Per query the best class and its probability; queries with probability ``>
    thresholds.panoptic_score`` compete per pixel by ``sigmoid(mask) * probability``; a query keeps
    its pixels when their area over its own area (``weighted probability >= thresholds.mask``, the
    official rule measures the score-weighted map) is ``> thresholds.overlap_area``. Classes in
    ``stuff_classes`` (phrase indices) are fused into one segment per class.
    """
    stuff = set(int(c) for c in stuff_classes)
    probs = _class_probs(class_logits)
    num_labels = probs.shape[1]
    pred_score, pred_label = probs.max(-1)
    keep = pred_label.ne(num_labels) & (pred_score > thresholds.panoptic_score)
    pred_score, pred_label = pred_score[keep], pred_label[keep]
    # The official code resizes every query and then drops the unconfident ones; resizing is per
    # query, so dropping them first gives the same result.
    mask_prob = sem_seg_postprocess(mask_logits[keep], scaled_size, original_size).sigmoid()

    height, width = int(original_size[0]), int(original_size[1])
    segmentation = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    if mask_prob.shape[0] == 0:
        return PanopticResult(segmentation, ())

    mask_prob = mask_prob * pred_score.view(-1, 1, 1)
    mask_labels = mask_prob.argmax(0)
    segments: list[PanopticSegment] = []
    stuff_ids: dict[int, int] = {}
    current = 0
    for k in range(pred_label.shape[0]):
        cls = int(pred_label[k].item())
        fuse = cls in stuff
        mask_k = mask_labels == k
        area = mask_k.sum()
        own_area = (mask_prob[k] >= thresholds.mask).sum()
        if not (area > 0 and own_area > 0 and (area / own_area).item() > thresholds.overlap_area):
            continue
        if cls in stuff_ids:
            current = stuff_ids[cls]
        else:
            current += 1
        segmentation[mask_k] = current
        segments.append(PanopticSegment(current, cls, not fuse, round(pred_score[k].item(), 6)))
        if fuse:
            stuff_ids[cls] = current
    return PanopticResult(segmentation, tuple(segments))


@dataclass(frozen=True, eq=False)
class InstanceResult:
    """Instances above the score threshold, in the official (top-k) order.

    ``masks``: ``(K, H, W)`` bool; ``scores``: ``(K,)`` float32; ``classes``: ``(K,)`` int64 phrase
    or region indices; ``boxes``: ``(K, 4)`` float32 xyxy, x1/y1 exclusive. ``segmentation``:
    ``(H, W)`` int64 map painted with the running instance index in order (later instances
    overwrite earlier ones; background ``-1`` for generic instances, ``255`` for visual grounding,
    as the official functions).
    """

    masks: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    boxes: torch.Tensor
    segmentation: torch.Tensor


def _topk_instances(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    min_score: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official instance scoring: (binary masks ``(K, H, W)``, scores, classes, queries).

    The ``Q`` best (query, class) pairs in the official (unsorted top-k) order. With
    ``min_score`` set, pairs whose class probability is below it are left out *before* their
    masks are resized: the instance score is the class probability times a mean mask
    probability (at most 1), so such a pair can never reach ``min_score``. Resizing is per query,
    so the kept results are exactly the official ones at a fraction of the memory and time.
    """
    probs = _class_probs(class_logits)
    num_queries, num_classes = probs.shape
    labels = torch.arange(num_classes, device=probs.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    # sorted=False as the official code: the order of the kept instances depends on it.
    scores, topk = probs.flatten(0, 1).topk(num_queries, sorted=False)
    classes = labels[topk]
    queries = torch.div(topk, num_classes, rounding_mode="floor")
    if min_score is not None and min_score > 0:
        needed = scores >= min_score
        scores, classes, queries = scores[needed], classes[needed], queries[needed]
    unique, inverse = torch.unique(queries, return_inverse=True)
    mask_pred = sem_seg_postprocess(mask_logits[unique], scaled_size, original_size)[inverse]
    masks = (mask_pred > 0).float()
    mask_scores = (mask_pred.sigmoid().flatten(1) * masks.flatten(1)).sum(1) / (
        masks.flatten(1).sum(1) + 1e-6
    )
    return masks, scores * mask_scores, classes, queries


def _instances(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float,
    background: int,
) -> InstanceResult:
    masks, scores, classes, _ = _topk_instances(
        class_logits, mask_logits, scaled_size, original_size, threshold
    )
    segmentation = torch.full(
        (int(original_size[0]), int(original_size[1])),
        background,
        dtype=torch.long,
        device=mask_logits.device,
    )
    current = 0
    for j in range(masks.shape[0]):
        if scores[j].item() >= threshold and not torch.all(masks[j] == 0):
            segmentation[masks[j] == 1] = current
            current += 1
    keep = scores >= threshold
    kept = masks[keep]
    return InstanceResult(
        masks=kept.bool(),
        scores=scores[keep],
        classes=classes[keep],
        boxes=masks_to_boxes(kept),
        segmentation=segmentation,
    )


def instance_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
) -> InstanceResult:
    """Instance segmentation (official ``genseg_postprocess_fn``, instance branch).

    The ``Q`` best (query, class) pairs; mask = logit ``> 0``; score = class probability times
    the mean mask probability inside the mask; keep ``score >= thresholds.instance_score``. A kept
    mask may be empty (the official ``Instances`` keep it too).
    """
    return _instances(class_logits, mask_logits, scaled_size, original_size, thresholds.instance_score, -1)


def semantic_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
) -> torch.Tensor:
    """Semantic segmentation (official ``genseg_postprocess_fn``, semantic branch).

    ``sum_q P(class | q) * sigmoid(mask_q)`` in the padded frame, then cropped and resized, then
    the argmax over classes. Returns ``(H, W)`` int64 phrase indices (no void class).
    """
    probs = _class_probs(class_logits)
    semseg = torch.einsum("qc,qhw->chw", probs, mask_logits.sigmoid())
    return sem_seg_postprocess(semseg, scaled_size, original_size).argmax(dim=0)


# -- single-mask tasks -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MaskResult:
    """One mask: ``mask`` ``(H, W)`` bool, the ``query`` it came from, its ``category_id``, ``score``."""

    mask: torch.Tensor
    query: int
    category_id: int
    score: float


def refseg_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
) -> MaskResult:
    """Referring and reasoning segmentation (official ``refseg_postprocess_fn``).

    ``class_logits`` must have exactly one phrase (``(Q, 2)``). The query with the highest
    phrase probability gives the mask ``sigmoid > thresholds.mask``; only that query is resized
    (resizing is per query, so the result equals the official one).
    """
    probs = _class_probs(class_logits)
    if probs.shape[1] != 1:
        raise ValueError(f"referring segmentation takes one phrase per <SEG>; got {probs.shape[1]}")
    score, query = probs[:, 0].max(dim=0)
    q = int(query.item())
    mask_pred = sem_seg_postprocess(mask_logits[q : q + 1], scaled_size, original_size)[0]
    return MaskResult(mask_pred.sigmoid() > thresholds.mask, q, 0, round(score.item(), 6))


def reaseg_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
) -> MaskResult:
    """Reasoning segmentation: the same as :func:`refseg_postprocess` (as the official code)."""
    return refseg_postprocess(class_logits, mask_logits, scaled_size, original_size, thresholds)


@dataclass(frozen=True, eq=False)
class GcgResult:
    """Grounded conversation masks.

    ``segmentation``: ``(H, W)`` int64, ``k + 1`` where phrase ``k`` won, 255 elsewhere (later
    phrases overwrite earlier ones, as the official function). ``masks``: ``(C, H, W)`` bool, each
    phrase's own mask before that overwriting; ``scores``: ``(C,)`` float32; ``queries``: ``(C,)``.
    """

    segmentation: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor
    queries: torch.Tensor


def gcgseg_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
) -> GcgResult:
    """Grounded conversation (official ``gcgseg_postprocess_fn``): per phrase its best query's mask."""
    probs = _class_probs(class_logits)
    scores, queries = probs.max(dim=0)
    mask_pred = sem_seg_postprocess(mask_logits[queries], scaled_size, original_size)
    masks = mask_pred.sigmoid() > thresholds.mask
    segmentation = torch.full(
        (int(original_size[0]), int(original_size[1])), 255, dtype=torch.long, device=mask_logits.device
    )
    for k in range(masks.shape[0]):
        segmentation[masks[k]] = k + 1
    return GcgResult(segmentation, masks, scores, queries)


def vgdseg_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
) -> InstanceResult:
    """Visual grounding, "find all similar" (official ``vgdseg_postprocess_fn``).

    Instance scoring as :func:`instance_postprocess` over (query, region) pairs, kept when
    ``score >= thresholds.vgd_score``; ``classes`` are region indices; background 255.
    """
    return _instances(class_logits, mask_logits, scaled_size, original_size, thresholds.vgd_score, 255)


@dataclass(frozen=True, eq=False)
class IntsegResult:
    """Interactive segmentation: the chosen ``mask`` ``(H, W)`` bool, its ``score``.

    ``candidates``: ``(K, H, W)`` bool masks that passed the score rule (official top-k order),
    ``candidate_queries`` ``(K,)`` their decoder queries, ``candidate_scores`` ``(K,)``,
    ``candidate_boxes`` ``(K, 4)``; ``prompt_box`` ``(4,)`` the prompt mask's box;
    ``ious`` ``(K,)`` box IoUs with it; ``index`` the chosen candidate.
    """

    mask: torch.Tensor
    score: float
    category_id: int
    index: int
    candidates: torch.Tensor
    candidate_queries: torch.Tensor
    candidate_scores: torch.Tensor
    candidate_boxes: torch.Tensor
    prompt_box: torch.Tensor
    ious: torch.Tensor


def intseg_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    prompt_mask: torch.Tensor,
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
) -> IntsegResult:
    """Interactive segmentation (official ``intseg_postprocess_fn``).

    ``class_logits``: ``(Q, 2)`` (one region). ``prompt_mask``: ``(P, P)`` the preprocessed
    prompt mask (padded frame); it is mapped back to the original frame with nearest resizing.
    Instance scoring as :func:`instance_postprocess`; candidates are the instances with
    ``score >= thresholds.intseg_score`` plus every instance with the top score; the chosen mask
    is the candidate whose box has the highest IoU with the prompt mask's box (first on ties).
    """
    if class_logits.shape[-1] != 2:
        raise ValueError(f"interactive segmentation takes one region; got {class_logits.shape[-1] - 1}")
    prompt = prompt_masks_to_original(prompt_mask[None], scaled_size, original_size)
    # Every query competes for the best score, so none can be left out before resizing.
    masks, scores, classes, queries = _topk_instances(
        class_logits, mask_logits, scaled_size, original_size, None
    )
    keep = (scores >= thresholds.intseg_score) | (scores == scores.max())
    masks, scores, classes, queries = masks[keep], scores[keep], classes[keep], queries[keep]
    boxes = masks_to_boxes(masks)
    prompt_box = masks_to_boxes(prompt)
    ious = box_iou(boxes, prompt_box)[:, 0]
    best = int(ious.argmax().item())
    return IntsegResult(
        mask=masks[best].bool(),
        score=round(scores[best].item(), 6),
        category_id=int(classes[best].item()),
        index=best,
        candidates=masks.bool(),
        candidate_queries=queries,
        candidate_scores=scores,
        candidate_boxes=boxes,
        prompt_box=prompt_box[0],
        ious=ious,
    )
