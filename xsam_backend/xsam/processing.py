"""X-SAM image processing: the public surface of :mod:`.processing_pre` and :mod:`.processing_post`.

Pre-processing (SigLIP and SAM tensors, visual-prompt masks, deterministic prompt points) lives in
``processing_pre``; post-processing of every task in ``processing_post``. This module re-exports
both and adds :func:`postprocess`, which runs the post-processing a task needs and names the
results as the pipeline reports them.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np
import torch

from xsam_backend.xsam.processing_post import (
    DEFAULT_THRESHOLDS,
    OFFICIAL_EVAL_THRESHOLDS,
    GcgResult,
    InstanceResult,
    IntsegResult,
    MaskResult,
    PanopticResult,
    PanopticSegment,
    PostprocessThresholds,
    box_iou,
    gcgseg_postprocess,
    instance_postprocess,
    intseg_postprocess,
    masks_to_boxes,
    panoptic_postprocess,
    prompt_masks_to_original,
    reaseg_postprocess,
    refseg_postprocess,
    sem_seg_postprocess,
    semantic_postprocess,
    upsample_mask_logits,
    vgdseg_postprocess,
)
from xsam_backend.xsam.processing_pre import (
    DEFAULT_SAM_CONFIG,
    DEFAULT_SIGLIP_CONFIG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_SAMPLE_POINTS,
    POINT_RADIUS,
    SCRIBBLE_RADIUS,
    SIGLIP_BACKGROUND,
    SamImageInput,
    SamPreprocessConfig,
    SiglipPreprocessConfig,
    box_prompt_mask,
    dilate_with_disks,
    expand_to_square,
    line_pixels,
    point_prompt_mask,
    polyline_prompt_mask,
    preprocess_prompt_masks,
    preprocess_sam,
    preprocess_siglip,
    region_prompt_mask,
    sam_scaled_size,
    sample_prompt_points,
    scribble_prompt_mask,
)

Thresholds = PostprocessThresholds

__all__ = [
    "DEFAULT_SAM_CONFIG",
    "DEFAULT_SIGLIP_CONFIG",
    "DEFAULT_THRESHOLDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_SAMPLE_POINTS",
    "OFFICIAL_EVAL_THRESHOLDS",
    "POINT_RADIUS",
    "SCRIBBLE_RADIUS",
    "SIGLIP_BACKGROUND",
    "GcgResult",
    "InstanceResult",
    "IntsegResult",
    "MaskResult",
    "PanopticResult",
    "PanopticSegment",
    "PostprocessThresholds",
    "SamImageInput",
    "SamPreprocessConfig",
    "SiglipPreprocessConfig",
    "Thresholds",
    "box_iou",
    "box_prompt_mask",
    "dilate_with_disks",
    "expand_to_square",
    "gcgseg_postprocess",
    "instance_postprocess",
    "intseg_postprocess",
    "line_pixels",
    "masks_to_boxes",
    "panoptic_postprocess",
    "point_prompt_mask",
    "polyline_prompt_mask",
    "postprocess",
    "preprocess_prompt_masks",
    "preprocess_sam",
    "preprocess_siglip",
    "prompt_masks_to_original",
    "reaseg_postprocess",
    "refseg_postprocess",
    "region_prompt_mask",
    "sam_scaled_size",
    "sample_prompt_points",
    "scribble_prompt_mask",
    "sem_seg_postprocess",
    "semantic_postprocess",
    "upsample_mask_logits",
    "vgdseg_postprocess",
]

_GENERIC = ("panoptic", "instance", "semantic")


def _padded_prompt_masks(prompt_masks: np.ndarray | torch.Tensor, pad_size: int) -> torch.Tensor:
    if (
        isinstance(prompt_masks, torch.Tensor)
        and prompt_masks.shape[-1] == pad_size == prompt_masks.shape[-2]
    ):
        return prompt_masks
    masks = prompt_masks.cpu().numpy() if isinstance(prompt_masks, torch.Tensor) else np.asarray(prompt_masks)
    return preprocess_prompt_masks(masks, SamPreprocessConfig(longest_edge=pad_size, pad_size=pad_size))


def _trace_instances(trace: MutableMapping[str, torch.Tensor], name: str, result: InstanceResult) -> None:
    trace[f"post.{name}.pred_masks"] = result.masks.to(torch.uint8)
    trace[f"post.{name}.scores"] = result.scores
    trace[f"post.{name}.pred_classes"] = result.classes
    trace[f"post.{name}.pred_boxes"] = result.boxes
    trace[f"post.{name}.segmentation"] = result.segmentation


def postprocess(
    task: str,
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    scaled_size: tuple[int, int],
    image_size: tuple[int, int],
    thresholds: PostprocessThresholds = DEFAULT_THRESHOLDS,
    segmentation: Sequence[str] = ("panoptic",),
    stuff_indices: Sequence[int] = (),
    prompt_masks: np.ndarray | torch.Tensor | None = None,
    trace: MutableMapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The official post-processing of ``task`` for one image.

    ``class_logits``: ``(Q, C + 1)``; ``mask_logits``: ``(Q, P, P)`` padded SAM frame;
    ``scaled_size`` ``(h, w)``; ``image_size`` ``(H, W)`` original frame.

    * ``genseg``/``ovseg``: each name of ``segmentation`` (``panoptic`` -> :class:`PanopticResult`
      with ``stuff_indices`` fused, ``instance`` -> :class:`InstanceResult`, ``semantic`` ->
      ``(H, W)`` int64 class map);
    * ``refseg``/``reaseg`` -> ``"refseg"``: :class:`MaskResult`; ``gcgseg`` -> :class:`GcgResult`;
    * ``vgdseg`` -> :class:`InstanceResult` (``"vgdseg"``), ``intseg`` -> :class:`IntsegResult`;
      both need ``prompt_masks``: ``(N, H, W)`` original frame, or ``(N, P, P)`` already
      pre-processed (a tensor); ``intseg`` maps its single mask back as the official code does.

    ``trace``, when given, receives the official-named tensors (``masks_queries_logits_orig``,
    ``post.<task>.*``) that the parity tests compare.
    """
    result: dict[str, Any] = {}
    if trace is not None:
        trace["masks_queries_logits_orig"] = sem_seg_postprocess(mask_logits, scaled_size, image_size)
    if task in ("genseg", "ovseg"):
        unknown = set(segmentation) - set(_GENERIC)
        if unknown:
            raise ValueError(f"segmentation must be among {_GENERIC}; got {sorted(unknown)}")
        if "panoptic" in segmentation:
            pan = panoptic_postprocess(
                class_logits, mask_logits, scaled_size, image_size, stuff_indices, thresholds
            )
            result["panoptic"] = pan
            if trace is not None:
                trace["post.panoptic.segmentation"] = pan.segmentation
        if "instance" in segmentation:
            ins = instance_postprocess(class_logits, mask_logits, scaled_size, image_size, thresholds)
            result["instance"] = ins
            if trace is not None:
                _trace_instances(trace, "instance", ins)
        if "semantic" in segmentation:
            sem = semantic_postprocess(class_logits, mask_logits, scaled_size, image_size)
            result["semantic"] = sem
            if trace is not None:
                trace["post.semantic.segmentation"] = sem
        return result
    if task in ("refseg", "reaseg"):
        ref = refseg_postprocess(class_logits, mask_logits, scaled_size, image_size, thresholds)
        result["refseg"] = ref
        if trace is not None:
            trace["post.refseg.segmentation"] = torch.where(ref.mask, 1, 255)
        return result
    if task == "gcgseg":
        gcg = gcgseg_postprocess(class_logits, mask_logits, scaled_size, image_size, thresholds)
        result["gcgseg"] = gcg
        if trace is not None:
            trace["post.gcgseg.segmentation"] = gcg.segmentation
        return result
    if task in ("vgdseg", "intseg"):
        if prompt_masks is None:
            raise ValueError(f"{task} post-processing needs the prompt masks")
        padded = _padded_prompt_masks(prompt_masks, int(mask_logits.shape[-1]))
        if task == "vgdseg":
            vgd = vgdseg_postprocess(class_logits, mask_logits, scaled_size, image_size, thresholds)
            result["vgdseg"] = vgd
            if trace is not None:
                _trace_instances(trace, "vgdseg", vgd)
        else:
            if padded.shape[0] != 1:
                raise ValueError(f"interactive segmentation takes one prompt mask; got {padded.shape[0]}")
            ints = intseg_postprocess(
                class_logits, mask_logits, scaled_size, image_size, padded[0], thresholds
            )
            result["intseg"] = ints
            if trace is not None:
                trace["post.intseg.segmentation"] = torch.where(ints.mask, 1, 255)
        if trace is not None:
            trace[f"post.{task}.vprompt_masks_orig"] = prompt_masks_to_original(
                padded, scaled_size, image_size
            ).to(torch.uint8)
        return result
    raise ValueError(f"unknown X-SAM task {task!r}")
