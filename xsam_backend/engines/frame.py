"""Keep prompts and masks in the frame Label Studio draws in.

Label Studio's percentages refer to the image as the browser shows it (``original_width`` x
``original_height``, after EXIF orientation). The worker decodes the image itself; when the two
sizes differ (an image replaced in storage, a browser that ignores EXIF), the prompt is scaled
into the decoded image's pixel frame, and the result masks are scaled back to Label Studio's, so
regions land where the annotator clicked.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from xsam_backend.masks import decode_compact_rle, encode_compact_rle
from xsam_backend.prompt import Prompt, VisualRegion
from xsam_backend.segment import EngineResult, Segment


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool → ``size`` = ``(H, W)`` bool, nearest neighbour."""
    height, width = size
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def fit_prompt(prompt: Prompt, image_size: tuple[int, int]) -> Prompt:
    """``prompt`` with its pixel coordinates scaled from ``prompt.image_size`` to ``image_size``.

    Both sizes are ``(height, width)``. Unchanged when the prompt has no size or the sizes match.
    """
    if prompt.image_size is None or prompt.image_size == image_size:
        return prompt
    sy = image_size[0] / prompt.image_size[0]
    sx = image_size[1] / prompt.image_size[1]

    def scale(coords: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(c * (sx if i % 2 == 0 else sy) for i, c in enumerate(coords))

    regions = []
    for region in prompt.regions:
        if region.mask is not None:
            mask = encode_compact_rle(_resize_mask(decode_compact_rle(region.mask), image_size))
            regions.append(VisualRegion(region.kind, scale(region.coords), mask))
        else:
            regions.append(VisualRegion(region.kind, scale(region.coords)))
    negatives = tuple((x * sx, y * sy) for x, y in prompt.negative_points)
    return replace(prompt, regions=tuple(regions), negative_points=negatives, image_size=image_size)


def fit_result(result: EngineResult, size: tuple[int, int] | None) -> EngineResult:
    """``result`` with every mask resized to ``size`` = ``(height, width)`` (when given and different)."""
    if size is None or all(s.mask.shape == size for s in result.segments):
        return result
    segments = tuple(
        Segment(_resize_mask(s.mask, size), s.label, s.score, s.phrase) if s.mask.shape != size else s
        for s in result.segments
    )
    return replace(result, segments=segments)
