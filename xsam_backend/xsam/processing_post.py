"""X-SAM post-processing: decoder mask logits and class logits to masks in the original frame.

Inputs, for one image (the batch dimension removed):

* ``class_logits``: ``(Q, C + 1)`` float, open-vocabulary class logits; column ``k < C`` is the
  ``k``-th ``<p>...</p>`` phrase (or region), the last column is the background class;
* ``mask_logits``: ``(Q, P, P)`` float, mask logits upsampled to the **SAM padded frame**
  (:func:`upsample_mask_logits`), the resized image in ``[0:scaled_h, 0:scaled_w]``;
* ``scaled_size`` ``(h, w)`` and ``original_size`` ``(H, W)`` from pre-processing.

Every function that resizes masks also takes ``pad_size``: when it is given, ``mask_logits`` are
the decoder's stride-8 logits ``(Q, P/8, P/8)`` and only the queries a rule needs are upsampled to
the ``P x P`` padded frame, then cropped and resized. Resizing is per query (bit for bit the same
as resizing all of them), so the results are the official ones without the ``Q x P x P`` tensor.

Every function follows the official ``*_postprocess_fn`` of its task (``AAAI26_Archive``) step
by step, including its quirks (noted where they matter), so results match the official ones;
class probabilities are ``softmax(class_logits)[:, :-1]`` everywhere. Outputs are torch tensors
on the input's device, in the original frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def _to_original(
    mask_logits: torch.Tensor,
    queries: torch.Tensor | slice,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    pad_size: int | None,
) -> torch.Tensor:
    """The logits of ``queries`` in the original frame, ``(K, H, W)``; see the module docstring."""
    selected = mask_logits[queries]
    count = selected.shape[0]
    if count == 1:
        # A lone plane is resized with another work split (and rounding) than a plane of a batch:
        # resizing two copies keeps the values bit for bit those of the official batched call.
        selected = selected.repeat(2, 1, 1)
    if pad_size is not None:
        selected = upsample_mask_logits(selected.float(), pad_size)
    return sem_seg_postprocess(selected, scaled_size, original_size)[:count]


# Queries resized at once while scoring: bounds the (K, H, W) fp32 temporaries to ~64 MB each.
_CHUNK_PIXELS = 1 << 24


def _chunk_size(original_size: tuple[int, int]) -> int:
    return max(2, _CHUNK_PIXELS // max(1, int(original_size[0]) * int(original_size[1])))


def _mask_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official instance mask scoring of ``(K, H, W)`` original-frame logits.

    Returns the binary masks ``(K, H, W)`` bool (logit ``> 0``) and the mean mask probability
    inside each mask ``(K,)`` float32 (0 for an empty mask).
    """
    binary = (logits > 0).float()
    inside = logits.sigmoid().flatten(1) * binary.flatten(1)
    area = binary.flatten(1)
    if inside.shape[0] == 1:
        # A lone row is summed by several threads in another order than a row of a batch is:
        # scoring two copies keeps the sums bit for bit those of the official batched call.
        inside, area = inside.repeat(2, 1), area.repeat(2, 1)
    scores = inside.sum(1) / (area.sum(1) + 1e-6)
    return binary.bool(), scores[: logits.shape[0]]


@dataclass(frozen=True, eq=False)
class _TopK:
    """The official instance ranking: the ``Q`` best (query, class) pairs, unsorted top-k order.

    ``class_probs``: ``(N,)`` float32, each pair's class probability (the upper bound of its
    score); ``classes`` and ``queries``: ``(N,)`` int64.
    """

    class_probs: torch.Tensor
    classes: torch.Tensor
    queries: torch.Tensor


def _official_topk(class_logits: torch.Tensor) -> _TopK:
    probs = _class_probs(class_logits)
    num_queries, num_classes = probs.shape
    labels = torch.arange(num_classes, device=probs.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    # sorted=False as the official code: the order of the kept instances depends on it.
    scores, topk = probs.flatten(0, 1).topk(num_queries, sorted=False)
    queries = torch.div(topk, num_classes, rounding_mode="floor")
    return _TopK(scores, labels[topk], queries)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of masks ``(K, H, W)``: ``(K, 4)`` float32 ``[x0, y0, x1, y1]``, x1/y1 exclusive.

    An empty mask gets ``[0, 0, 0, 0]`` (detectron2 ``BitMasks.get_bounding_boxes``).
    """
    occupied = masks if masks.dtype == torch.bool else masks != 0
    x_any = occupied.any(dim=1)  # (K, W)
    y_any = occupied.any(dim=2)  # (K, H)

    def span(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # argmax returns the first maximum: the first occupied column (row) from either end.
        first = occupied.byte().argmax(dim=1)
        last = occupied.shape[1] - occupied.flip(1).byte().argmax(dim=1)
        return first, last

    if masks.shape[0] == 0 or masks.shape[1] == 0 or masks.shape[2] == 0:
        return torch.zeros(masks.shape[0], 4, dtype=torch.float32, device=masks.device)
    x0, x1 = span(x_any)
    y0, y1 = span(y_any)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return boxes * x_any.any(dim=1, keepdim=True)


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
    pad_size: int | None = None,
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
    mask_prob = _to_original(mask_logits, keep, scaled_size, original_size, pad_size).sigmoid()

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
    min_score: float,
    pad_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official instance scoring of the pairs that reach ``min_score``: (binary masks ``(K, H, W)``
    bool, scores ``(K,)``, classes ``(K,)``), in the official top-k order.

    A pair's score is its class probability times a mean mask probability (at most 1), so a pair
    whose class probability is below ``min_score`` can never reach it: it is left out *before*
    its mask is resized. Masks are resized and scored a few queries at a time.
    """
    top = _official_topk(class_logits)
    needed = torch.nonzero(top.class_probs >= min_score).flatten()
    scores, classes, queries = top.class_probs[needed], top.classes[needed], top.queries[needed]
    size = (int(original_size[0]), int(original_size[1]))
    masks = torch.zeros((len(needed), *size), dtype=torch.bool, device=mask_logits.device)
    mask_scores = torch.zeros(len(needed), dtype=torch.float32, device=mask_logits.device)
    unique, inverse = torch.unique(queries, return_inverse=True)
    step = _chunk_size(size)
    for start in range(0, len(unique), step):
        binary, chunk_scores = _mask_scores(
            _to_original(mask_logits, unique[start : start + step], scaled_size, size, pad_size)
        )
        rows = (inverse >= start) & (inverse < start + step)
        masks[rows] = binary[inverse[rows] - start]
        mask_scores[rows] = chunk_scores[inverse[rows] - start].to(mask_scores.dtype)
    return masks, scores * mask_scores, classes


def _instances(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float,
    background: int,
    pad_size: int | None,
) -> InstanceResult:
    masks, scores, classes = _topk_instances(
        class_logits, mask_logits, scaled_size, original_size, threshold, pad_size
    )
    segmentation = torch.full(
        (int(original_size[0]), int(original_size[1])),
        background,
        dtype=torch.long,
        device=mask_logits.device,
    )
    keep = scores >= threshold
    current = 0
    for j in range(masks.shape[0]):
        if keep[j] and masks[j].any():
            segmentation[masks[j]] = current
            current += 1
    kept = masks[keep]
    return InstanceResult(
        masks=kept,
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
    pad_size: int | None = None,
) -> InstanceResult:
    """Instance segmentation (official ``genseg_postprocess_fn``, instance branch).

    The ``Q`` best (query, class) pairs; mask = logit ``> 0``; score = class probability times
    the mean mask probability inside the mask; keep ``score >= thresholds.instance_score``. A kept
    mask may be empty (the official ``Instances`` keep it too).
    """
    return _instances(
        class_logits, mask_logits, scaled_size, original_size, thresholds.instance_score, -1, pad_size
    )


@dataclass(frozen=True, eq=False)
class RankedInstance:
    """One (query, class) pair of the official instance ranking, scored.

    ``rank``: its position in the official top-k order; ``class_prob``: its class probability,
    an upper bound of ``score`` (class probability times mean mask probability); ``mask``:
    ``(H, W)`` bool, original frame.
    """

    rank: int
    query: int
    category_id: int
    class_prob: float
    score: float
    mask: torch.Tensor


def instances_by_class_probability(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    pad_size: int | None = None,
) -> Iterator[RankedInstance]:
    """Every pair that :func:`instance_postprocess` scores, lazily, highest class probability first
    (ties in top-k order).

    Since ``score <= class_prob``, a caller looking for the best-scoring instance with some property
    may stop as soon as ``class_prob`` falls below the best score found: the remaining masks are
    never resized. Pairs are resized in batches of 2, 4, 8, ... up to a ~64 MB chunk, so memory
    stays bounded whatever the image size. Scores are those of :func:`instance_postprocess` with a
    zero threshold.
    """
    top = _official_topk(class_logits)
    probs = top.class_probs.tolist()
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    size = (int(original_size[0]), int(original_size[1]))
    start, count = 0, 2
    while start < len(order):
        ranks = order[start : start + count]
        # Batches double (up to a chunk): an early stop wastes little, a long scan stays fast.
        start, count = start + count, min(2 * count, _chunk_size(size))
        queries = top.queries[ranks]
        binary, mask_scores = _mask_scores(_to_original(mask_logits, queries, scaled_size, size, pad_size))
        scores = top.class_probs[ranks] * mask_scores
        for j, rank in enumerate(ranks):
            yield RankedInstance(
                rank=rank,
                query=int(queries[j]),
                category_id=int(top.classes[rank]),
                class_prob=probs[rank],
                score=float(scores[j]),
                mask=binary[j],
            )


def _semantic_maps(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, pad_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_q P(c | q) sigmoid(mask_q)`` ``(C, P, P)`` (official) and ``sum_q sigmoid(mask_q)``
    ``(P, P)``, padded frame."""
    probs = _class_probs(class_logits)
    masks = mask_logits if pad_size is None else upsample_mask_logits(mask_logits.float(), pad_size)
    sigmoid = masks.sigmoid()
    return torch.einsum("qc,qhw->chw", probs, sigmoid), sigmoid.sum(0)


def semantic_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    pad_size: int | None = None,
) -> torch.Tensor:
    """Semantic segmentation (official ``genseg_postprocess_fn``, semantic branch).

    ``sum_q P(class | q) * sigmoid(mask_q)`` in the padded frame, then cropped and resized, then
    the argmax over classes. Returns ``(H, W)`` int64 phrase indices (no void class).
    """
    semseg, _ = _semantic_maps(class_logits, mask_logits, pad_size)
    return sem_seg_postprocess(semseg, scaled_size, original_size).argmax(dim=0)


@dataclass(frozen=True, eq=False)
class SemanticResult:
    """``segmentation``: ``(H, W)`` int64 phrase indices (as :func:`semantic_postprocess`);
    ``scores``: ``(C,)`` float32 in ``[0, 1]``, per class the mean over the pixels it wins of the
    pixel's class probability (0 for a class that wins no pixel)."""

    segmentation: torch.Tensor
    scores: torch.Tensor


def semantic_segments(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    pad_size: int | None = None,
) -> SemanticResult:
    """Semantic segmentation with a score per class.

    The segmentation is the official one. A pixel's class probability is the mask-weighted mixture
    of the queries' class distributions, ``p(c | x) = sum_q P(c | q) sigmoid(m_q(x)) / sum_q
    sigmoid(m_q(x))`` (in ``[0, 1]``; the background takes the rest), both sums cropped and resized
    as the official map; a class's score is the mean of ``p(c | x)`` over the pixels where ``c``
    wins the argmax.
    """
    semseg, total = _semantic_maps(class_logits, mask_logits, pad_size)
    num_classes = semseg.shape[0]
    # Resizing is per channel: stacking the normaliser leaves the official channels unchanged.
    resized = sem_seg_postprocess(torch.cat([semseg, total[None]]), scaled_size, original_size)
    segmentation = resized[:num_classes].argmax(dim=0)
    winning = resized[:num_classes].gather(0, segmentation[None])[0]
    pixel_prob = winning / resized[num_classes].clamp(min=1e-12)
    flat = segmentation.flatten()
    sums = torch.zeros(num_classes, dtype=torch.float64, device=flat.device)
    sums.index_add_(0, flat, pixel_prob.flatten().double())
    counts = torch.bincount(flat, minlength=num_classes).double()
    scores = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
    return SemanticResult(segmentation, scores.float().clamp(0, 1))


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
    pad_size: int | None = None,
    category: int = 0,
) -> MaskResult:
    """Referring and reasoning segmentation (official ``refseg_postprocess_fn``).

    The query with the highest probability of phrase ``category`` gives the mask ``sigmoid >
    thresholds.mask``; only that query is resized (resizing is per query, so the result equals
    the official one). The official function takes exactly one phrase (``(Q, 2)``, ``category``
    0); with several expressions the ``k``-th ``<SEG>`` pass is read with ``category = k``, the
    class its training target has.
    """
    probs = _class_probs(class_logits)
    if not 0 <= category < probs.shape[1]:
        raise ValueError(f"category {category} out of range for {probs.shape[1]} phrase(s)")
    score, query = probs[:, category].max(dim=0)
    q = int(query.item())
    mask_pred = _to_original(mask_logits, slice(q, q + 1), scaled_size, original_size, pad_size)[0]
    return MaskResult(mask_pred.sigmoid() > thresholds.mask, q, category, round(score.item(), 6))


def reaseg_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
    pad_size: int | None = None,
) -> MaskResult:
    """Reasoning segmentation: the same as :func:`refseg_postprocess` (as the official code)."""
    return refseg_postprocess(class_logits, mask_logits, scaled_size, original_size, thresholds, pad_size)


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
    pad_size: int | None = None,
) -> GcgResult:
    """Grounded conversation (official ``gcgseg_postprocess_fn``): per phrase its best query's mask."""
    probs = _class_probs(class_logits)
    scores, queries = probs.max(dim=0)
    mask_pred = _to_original(mask_logits, queries, scaled_size, original_size, pad_size)
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
    pad_size: int | None = None,
) -> InstanceResult:
    """Visual grounding, "find all similar" (official ``vgdseg_postprocess_fn``).

    Instance scoring as :func:`instance_postprocess` over (query, region) pairs, kept when
    ``score >= thresholds.vgd_score``; ``classes`` are region indices; background 255.
    """
    return _instances(
        class_logits, mask_logits, scaled_size, original_size, thresholds.vgd_score, 255, pad_size
    )


@dataclass(frozen=True, eq=False)
class IntsegResult:
    """Interactive segmentation: the chosen ``mask`` ``(H, W)`` bool, its ``score``.

    The candidates (the pairs that passed the score rule, official top-k order) are described by
    ``candidate_queries`` ``(K,)`` (decoder queries), ``candidate_scores`` ``(K,)`` and
    ``candidate_boxes`` ``(K, 4)``; their masks are not kept. ``prompt_box`` ``(4,)`` is the prompt
    mask's box, ``ious`` ``(K,)`` the candidates' box IoUs with it, ``index`` the chosen candidate.
    ``scored``: how many masks were resized to find them (at most ``Q``).
    """

    mask: torch.Tensor
    score: float
    category_id: int
    index: int
    candidate_queries: torch.Tensor
    candidate_scores: torch.Tensor
    candidate_boxes: torch.Tensor
    prompt_box: torch.Tensor
    ious: torch.Tensor
    scored: int


def intseg_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    scaled_size: tuple[int, int],
    original_size: tuple[int, int],
    prompt_mask: torch.Tensor,
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
    pad_size: int | None = None,
) -> IntsegResult:
    """Interactive segmentation (official ``intseg_postprocess_fn``), resizing only what can matter.

    ``class_logits``: ``(Q, 2)`` (one region). ``prompt_mask``: ``(P, P)`` the preprocessed
    prompt mask (padded frame); it is mapped back to the original frame with nearest resizing.
    Instance scoring as :func:`instance_postprocess`; candidates are the instances with
    ``score >= thresholds.intseg_score`` plus every instance with the top score; the chosen mask
    is the candidate whose box has the highest IoU with the prompt mask's box (first on ties).

    Pruning, exact because ``score <= class probability``: the pairs whose class probability
    reaches the threshold are scored; the others are visited in decreasing class probability only
    while it is ``>=`` the best score so far (so a tie with the top score is still found), and the
    rest can neither reach the threshold nor the top score. Each scored mask is reduced to its box
    at once; the chosen one is resized again at the end.
    """
    if class_logits.shape[-1] != 2:
        raise ValueError(f"interactive segmentation takes one region; got {class_logits.shape[-1] - 1}")
    threshold = thresholds.intseg_score
    prompt = prompt_masks_to_original(prompt_mask[None], scaled_size, original_size)
    top = _official_topk(class_logits)
    n = len(top.queries)
    size = (int(original_size[0]), int(original_size[1]))
    scores = torch.zeros(n, dtype=torch.float32, device=mask_logits.device)
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=mask_logits.device)
    scored = torch.zeros(n, dtype=torch.bool, device=mask_logits.device)

    def score(ranks: list[int]) -> float:
        """Score the pairs at ``ranks``; returns their best score."""
        index = torch.tensor(ranks, dtype=torch.long, device=mask_logits.device)
        binary, mask_scores = _mask_scores(
            _to_original(mask_logits, top.queries[index], scaled_size, size, pad_size)
        )
        scores[index] = top.class_probs[index] * mask_scores
        boxes[index] = masks_to_boxes(binary)
        scored[index] = True
        return float(scores[index].max())

    probs = top.class_probs.tolist()
    confident = [i for i in range(n) if probs[i] >= threshold]
    step = _chunk_size(size)
    best = float("-inf")
    for start in range(0, len(confident), step):
        best = max(best, score(confident[start : start + step]))
    others = sorted((i for i in range(n) if probs[i] < threshold), key=lambda i: (-probs[i], i))
    start = 0
    while start < len(others) and probs[others[start]] >= best:
        # Every pair that could still tie the best so far goes in one batch (at least two, at most
        # a chunk); scoring one that the batch's own best then rules out is harmless.
        end = start + 1
        while end < len(others) and end - start < step and (probs[others[end]] >= best or end - start < 2):
            end += 1
        best = max(best, score(others[start:end]))
        start = end

    keep = scored & ((scores >= threshold) | (scores == best))
    if not bool(keep.any()):
        raise ValueError("interactive post-processing found no candidate: the mask scores are not finite")
    ious = box_iou(boxes[keep], masks_to_boxes(prompt))[:, 0]
    chosen = int(ious.argmax().item())
    rank = int(torch.nonzero(keep).flatten()[chosen])
    query = int(top.queries[rank])
    mask = _to_original(mask_logits, slice(query, query + 1), scaled_size, size, pad_size)[0] > 0
    prompt_box = masks_to_boxes(prompt)[0]
    return IntsegResult(
        mask=mask,
        score=round(scores[rank].item(), 6),
        category_id=int(top.classes[rank]),
        index=chosen,
        candidate_queries=top.queries[keep],
        candidate_scores=scores[keep],
        candidate_boxes=boxes[keep],
        prompt_box=prompt_box,
        ious=ious,
        scored=int(scored.sum()),
    )
