"""The Mask2Former set loss X-SAM trains its segmentor with: Hungarian matching, point-sampled masks.

For one image with ``Q`` queries and ``N`` ground-truth instances:

1. **Matching** (no gradient): ``num_points`` points drawn uniformly in the padded SAM frame;
   cost = ``class_weight · (−P(class))`` + ``mask_weight · BCE`` + ``dice_weight · dice`` on the
   sampled logits; the assignment minimising it (``scipy.optimize.linear_sum_assignment``).
2. **Losses**: cross-entropy over the ``C + 1`` classes, background (last column) for unmatched
   queries with weight ``no_object_weight``; for matched pairs BCE and dice on ``num_points``
   points chosen by PointRend uncertainty sampling (``oversample_ratio`` candidates, of which
   ``importance_sample_ratio`` are the most uncertain, the rest uniform). Mask terms are averaged
   over the instances.
3. **Deep supervision** (``use_auxiliary_loss``, on in X-SAM): the same matching and losses on
   every intermediate prediction of the decoder (the initial one and one per layer but the last),
   each matched on its own, all added with equal weight (:func:`deep_supervision_loss`).

Coordinates: every mask here lives in the padded SAM frame (the resized image in the top-left
corner of an ``S × S`` square) at any resolution; points are ``(x, y)`` in ``[0, 1]`` of that
square, so predictions at ``S/8`` and targets at ``S/4`` sample the same places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class LossWeights:
    """Weights and sampling of the Mask2Former loss (X-SAM's values by default)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    auxiliary: bool = True
    llm_weight: float = 1.0

    @classmethod
    def from_config(cls, mask2former: Mapping[str, Any]) -> LossWeights:
        """The values of a model config's ``mask2former_config`` section (defaults where absent)."""
        default = cls()
        return cls(
            class_weight=float(mask2former.get("class_weight", default.class_weight)),
            mask_weight=float(mask2former.get("mask_weight", default.mask_weight)),
            dice_weight=float(mask2former.get("dice_weight", default.dice_weight)),
            no_object_weight=float(mask2former.get("no_object_weight", default.no_object_weight)),
            num_points=int(mask2former.get("train_num_points", default.num_points)),
            oversample_ratio=float(mask2former.get("oversample_ratio", default.oversample_ratio)),
            importance_sample_ratio=float(
                mask2former.get("importance_sample_ratio", default.importance_sample_ratio)
            ),
            auxiliary=bool(mask2former.get("use_auxiliary_loss", default.auxiliary)),
        )


@dataclass(frozen=True)
class LossTerms:
    """The weighted total (a scalar with gradient) and its unweighted parts (floats, for logs);
    with deep supervision, the parts are those of the final prediction and ``layers`` counts the
    predictions whose losses make up ``total``; ``llm``: the answer's next-token loss (LLM adapter
    only, weight ``llm_weight``)."""

    total: torch.Tensor
    cls: float
    mask: float
    dice: float
    layers: int = 1
    llm: float = 0.0


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``maps`` ``(N, H, W)`` at ``points`` ``(N, P, 2)`` ``(x, y)`` in ``[0, 1]``.

    Returns ``(N, P)`` fp32. ``align_corners=False``: ``x = 0`` and ``x = 1`` are the outer edges
    of the first and last pixel, as Mask2Former's ``point_sample``.
    """
    grid = (2.0 * points.float() - 1.0).unsqueeze(2)  # (N, P, 1, 2)
    sampled = F.grid_sample(maps.float().unsqueeze(1), grid, mode="bilinear", align_corners=False)
    return sampled[:, 0, :, 0]


def uncertain_points(
    mask_logits: torch.Tensor, weights: LossWeights, generator: torch.Generator | None = None
) -> torch.Tensor:
    """PointRend sampling for ``mask_logits`` ``(N, h, w)``: ``(N, num_points, 2)`` in ``[0, 1]``.

    Uncertainty is ``−|logit|`` (highest near the decision boundary).
    """
    n, p = mask_logits.shape[0], weights.num_points
    candidates = int(p * weights.oversample_ratio)
    device = mask_logits.device
    coords = torch.rand(n, candidates, 2, generator=generator, device="cpu").to(device)
    uncertainty = -point_sample(mask_logits.detach(), coords).abs()
    important = int(weights.importance_sample_ratio * p)
    top = uncertainty.topk(important, dim=1).indices
    chosen = torch.gather(coords, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    uniform = torch.rand(n, p - important, 2, generator=generator, device="cpu").to(device)
    return torch.cat([chosen, uniform], dim=1)


def _dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss: ``inputs`` ``(Q, P)`` logits, ``targets`` ``(N, P)`` in {0, 1} → ``(Q, N)``."""
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _bce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean BCE: ``(Q, P)`` logits against ``(N, P)`` targets → ``(Q, N)``."""
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


@torch.no_grad()
def hungarian_match(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_classes: torch.Tensor,
    target_masks: torch.Tensor,
    weights: LossWeights,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimum-cost assignment of queries to instances.

    ``class_logits``: ``(Q, C + 1)``; ``mask_logits``: ``(Q, h, w)``; ``target_classes``: ``(N,)``
    int64 in ``[0, C)``; ``target_masks``: ``(N, H, W)`` float in {0, 1}. Returns
    ``(query_indices, target_indices)``, two ``(min(Q, N),)`` int64 tensors.
    """
    if target_classes.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    probs = class_logits.float().softmax(-1)
    cost_class = -probs[:, target_classes]
    points = torch.rand(1, weights.num_points, 2, generator=generator).to(mask_logits.device)
    pred = point_sample(mask_logits, points.expand(mask_logits.shape[0], -1, -1))
    target = point_sample(target_masks, points.expand(target_masks.shape[0], -1, -1))
    cost = (
        weights.class_weight * cost_class
        + weights.mask_weight * _bce_cost(pred, target)
        + weights.dice_weight * _dice_cost(pred, target)
    )
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def mask2former_loss(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_classes: torch.Tensor,
    target_masks: torch.Tensor,
    weights: LossWeights,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """The weighted set loss of one image (shapes as :func:`hungarian_match`).

    With no instance every query is pushed to background by the class term alone.
    """
    num_classes = class_logits.shape[-1] - 1
    queries, targets = hungarian_match(
        class_logits, mask_logits, target_classes, target_masks, weights, generator
    )
    device = class_logits.device
    labels = torch.full((class_logits.shape[0],), num_classes, dtype=torch.int64, device=device)
    labels[queries.to(device)] = target_classes[targets].to(device)
    class_weight = torch.ones(num_classes + 1, device=device)
    class_weight[-1] = weights.no_object_weight
    loss_cls = F.cross_entropy(class_logits.float(), labels, weight=class_weight)

    if queries.numel() == 0:
        zero = loss_cls.new_zeros(())
        loss_mask, loss_dice = zero, zero
    else:
        pred_masks = mask_logits[queries.to(mask_logits.device)]
        true_masks = target_masks[targets.to(target_masks.device)]
        points = uncertain_points(pred_masks, weights, generator)
        pred = point_sample(pred_masks, points)
        with torch.no_grad():
            true = point_sample(true_masks, points.to(true_masks.device)).to(pred.device)
        count = float(queries.numel())
        loss_mask = F.binary_cross_entropy_with_logits(pred, true, reduction="none").mean(1).sum() / count
        probs = pred.sigmoid()
        dice = 1 - (2 * (probs * true).sum(-1) + 1) / (probs.sum(-1) + true.sum(-1) + 1)
        loss_dice = dice.sum() / count
    total = (
        weights.class_weight * loss_cls + weights.mask_weight * loss_mask + weights.dice_weight * loss_dice
    )
    return LossTerms(
        total=total,
        cls=float(loss_cls.detach()),
        mask=float(loss_mask.detach()),
        dice=float(loss_dice.detach()),
    )


def deep_supervision_loss(
    predictions: Sequence[tuple[torch.Tensor, torch.Tensor]],
    target_classes: torch.Tensor,
    target_masks: torch.Tensor,
    weights: LossWeights,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """The sum of :func:`mask2former_loss` over decoder ``predictions``, earliest first, the final
    one last: each ``(class_logits (Q, C + 1), mask_logits (Q, h, w))`` of one image, matched to
    the targets on its own. Only the final one counts unless ``weights.auxiliary``."""
    if not predictions:
        raise ValueError("deep supervision needs at least the final prediction")
    used = predictions if weights.auxiliary else predictions[-1:]
    parts = [
        mask2former_loss(classes, masks, target_classes, target_masks, weights, generator)
        for classes, masks in used
    ]
    final = parts[-1]
    total = torch.stack([part.total for part in parts]).sum()
    return LossTerms(total=total, cls=final.cls, mask=final.mask, dice=final.dice, layers=len(parts))
