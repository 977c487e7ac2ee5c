"""X-SAM pre-processing: SigLIP and SAM image tensors, visual-prompt masks and their sample points.

Frames used here:

* **original**: the image as given, ``(H, W)`` pixels, x to the right, y down; pixel ``(r, c)``
  covers ``[c, c+1) x [r, r+1)`` in Label Studio's continuous pixel coordinates;
* **SAM padded**: ``(P, P)`` (``P = 1024`` for the released model): the image resized so that its
  longest side is ``P`` occupies ``[0:scaled_h, 0:scaled_w]``; the rest is zero padding;
* **SigLIP square**: the image pasted at the centre of a ``max(H, W)`` square filled with
  ``(127, 127, 127)``, resized to ``S x S`` (``S = 384``).

Everything reproduces the official processors (PIL resampling on ``uint8``, float32 rescale and
normalisation as Hugging Face image processors do); the parity tests check it bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from xsam_backend.errors import PromptError
from xsam_backend.prompt import VisualRegion

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_BACKGROUND = (127, 127, 127)  # int(0.5 * 255) per channel: the SigLIP mean as uint8
POINT_RADIUS = 10.0
SCRIBBLE_RADIUS = 5.0
NUM_SAMPLE_POINTS = 256
_RESCALE = 1 / 255


@dataclass(frozen=True)
class SiglipPreprocessConfig:
    """SigLIP input: ``size`` square, PIL ``resample`` code (2 = bilinear), mean/std per channel.

    ``pad_to_square`` pastes the image centred on a square of ``fill`` first (official evaluation
    and demo; training squashed the image instead).
    """

    size: int = 384
    resample: int = 2
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pad_to_square: bool = True
    fill: tuple[int, int, int] = SIGLIP_BACKGROUND


@dataclass(frozen=True)
class SamPreprocessConfig:
    """SAM input: longest side resized to ``longest_edge``, then padded bottom/right to ``pad_size``."""

    longest_edge: int = 1024
    pad_size: int = 1024
    resample: int = 2
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


DEFAULT_SIGLIP_CONFIG = SiglipPreprocessConfig()
DEFAULT_SAM_CONFIG = SamPreprocessConfig()


@dataclass(frozen=True, eq=False)
class SamImageInput:
    """The SAM branch input of one image.

    ``pixel_values``: ``(1, 3, P, P)`` float32, normalised, zero-padded after normalisation.
    ``scaled_size``: ``(h, w)`` of the resized image inside the padded frame.
    ``original_size``: ``(H, W)`` of the original image.
    """

    pixel_values: torch.Tensor
    scaled_size: tuple[int, int]
    original_size: tuple[int, int]


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image; got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"the image is empty: {image.shape}")


def _normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    # Same arithmetic as transformers' rescale (float64 product, cast to float32) and normalize
    # (float32 mean/std), so that the result is bitwise the official processors'.
    scaled = (image.astype(np.float64) * _RESCALE).astype(np.float32)
    return (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def expand_to_square(image: np.ndarray, fill: tuple[int, int, int] = SIGLIP_BACKGROUND) -> np.ndarray:
    """Paste ``image`` ``(H, W, 3)`` uint8 centred on a ``max(H, W)`` square of colour ``fill``.

    The offset is ``((S - W) // 2, (S - H) // 2)``, as xtuner's ``expand2square``. Returns
    ``(S, S, 3)`` uint8 (the input itself when it is already square).
    """
    _check_image(image)
    h, w = image.shape[:2]
    if h == w:
        return image
    side = max(h, w)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = np.asarray(fill, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas


def preprocess_siglip(
    image: np.ndarray, config: SiglipPreprocessConfig = DEFAULT_SIGLIP_CONFIG
) -> torch.Tensor:
    """SigLIP pixel values for ``image`` ``(H, W, 3)`` uint8 RGB.

    Returns ``(1, 3, S, S)`` float32 in the SigLIP square frame, normalised to about ``[-1, 1]``.
    """
    _check_image(image)
    square = expand_to_square(image, config.fill) if config.pad_to_square else image
    resized = Image.fromarray(square).resize((config.size, config.size), resample=config.resample)
    pixels = _normalise(np.asarray(resized), config.mean, config.std)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def sam_scaled_size(original_size: tuple[int, int], longest_edge: int = 1024) -> tuple[int, int]:
    """``(h, w)`` of an ``(H, W)`` image resized so its longest side is ``longest_edge``.

    Each side is ``int(side * longest_edge / max(H, W) + 0.5)``, as the official processor.
    """
    height, width = original_size
    scale = longest_edge * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess_sam(image: np.ndarray, config: SamPreprocessConfig = DEFAULT_SAM_CONFIG) -> SamImageInput:
    """SAM pixel values for ``image`` ``(H, W, 3)`` uint8 RGB (see :class:`SamImageInput`)."""
    _check_image(image)
    original = (int(image.shape[0]), int(image.shape[1]))
    h, w = sam_scaled_size(original, config.longest_edge)
    if max(h, w) > config.pad_size:
        raise ValueError(f"longest_edge {config.longest_edge} exceeds pad_size {config.pad_size}")
    resized = np.asarray(Image.fromarray(image).resize((w, h), resample=config.resample))
    pixels = np.zeros((config.pad_size, config.pad_size, 3), dtype=np.float32)
    pixels[:h, :w] = _normalise(resized, config.mean, config.std)
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
    return SamImageInput(pixel_values=tensor, scaled_size=(h, w), original_size=original)


def preprocess_prompt_masks(
    masks: np.ndarray, config: SamPreprocessConfig = DEFAULT_SAM_CONFIG
) -> torch.Tensor:
    """Visual-prompt masks from the original frame to the SAM padded frame.

    ``masks``: ``(N, H, W)`` bool or 0/1 integers, original frame. Each is resized with PIL
    NEAREST to the SAM scaled size and zero-padded bottom/right. Returns ``(N, P, P)`` uint8 0/1.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected prompt masks of shape (N, H, W); got {masks.shape}")
    h, w = sam_scaled_size((int(masks.shape[1]), int(masks.shape[2])), config.longest_edge)
    out = np.zeros((masks.shape[0], config.pad_size, config.pad_size), dtype=np.uint8)
    for i, mask in enumerate(masks):
        small = Image.fromarray((mask != 0).astype(np.uint8)).resize(
            (w, h), resample=Image.Resampling.NEAREST
        )
        out[i, :h, :w] = np.asarray(small)
    return torch.from_numpy(out)


# -- visual prompts: Label Studio regions -> masks in the original frame -------------------------


def _disk(radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (np.sqrt(x * x + y * y) <= radius).astype(np.uint8)


def dilate_with_disks(mask: np.ndarray, radius: float) -> np.ndarray:
    """Union of the disks ``distance <= radius`` around every on-pixel of ``mask`` ``(H, W)``.

    The official ``enhance_with_circles`` (one ``draw_circle`` per pixel), computed as a
    dilation with the same disk. Returns ``(H, W)`` bool.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0; got {radius}")
    src = (mask != 0).astype(np.uint8)
    return cv2.dilate(src, _disk(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _pixel_index(value: float, size: int) -> int:
    # A continuous coordinate lies in pixel floor(value); clicks on the far edge stay inside.
    return min(max(int(math.floor(value)), 0), size - 1)


def point_prompt_mask(
    image_size: tuple[int, int], points_xy: Sequence[tuple[float, float]], radius: float = POINT_RADIUS
) -> np.ndarray:
    """Disks of ``radius`` pixels (official point prompts: 10) around each point, united.

    ``image_size``: ``(H, W)``; ``points_xy``: ``[(x, y), ...]`` continuous pixel coordinates of
    the original frame; each disk is centred on the pixel the point falls in. Returns ``(H, W)`` bool.
    """
    height, width = image_size
    if not points_xy:
        raise PromptError("a point prompt needs at least one point")
    centres = np.zeros((height, width), dtype=np.uint8)
    for x, y in points_xy:
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptError(f"point ({x:g}, {y:g}) lies outside the {width}x{height} image")
        centres[_pixel_index(y, height), _pixel_index(x, width)] = 1
    return dilate_with_disks(centres, radius)


def box_prompt_mask(image_size: tuple[int, int], box_xyxy: Sequence[float]) -> np.ndarray:
    """A filled box (official box prompts), ``(H, W)`` bool.

    ``box_xyxy``: ``(x_min, y_min, x_max, y_max)`` continuous pixel coordinates; pixel edges are
    at integers, so the box covers rows ``round(y_min):round(y_max)`` and columns
    ``round(x_min):round(x_max)`` (half-open, at least one pixel), clipped to the image.
    """
    height, width = image_size
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    if x1 < x0 or y1 < y0:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has negative size")
    c0, r0 = min(max(round(x0), 0), width - 1), min(max(round(y0), 0), height - 1)
    c1, r1 = min(max(round(x1), c0 + 1), width), min(max(round(y1), r0 + 1), height)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image")
    mask = np.zeros((height, width), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def line_pixels(r0: int, c0: int, r1: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the integer line from ``(r0, c0)`` to ``(r1, c1)``, both ends included.

    The Bresenham variant of ``skimage.draw.line``, which the official scribble prompts use.
    Returns two ``(n,)`` int64 arrays.
    """
    steep = abs(r1 - r0) > abs(c1 - c0)
    r, c, dr, dc = r0, c0, abs(r1 - r0), abs(c1 - c0)
    sr = 1 if r1 - r0 > 0 else -1
    sc = 1 if c1 - c0 > 0 else -1
    if steep:
        r, c, dr, dc, sr, sc = c, r, dc, dr, sc, sr
    d = 2 * dr - dc
    rows, cols = np.empty(dc + 1, dtype=np.int64), np.empty(dc + 1, dtype=np.int64)
    for i in range(dc):
        rows[i], cols[i] = (c, r) if steep else (r, c)
        while d >= 0:
            r += sr
            d -= 2 * dc
        c += sc
        d += 2 * dr
    rows[dc], cols[dc] = r1, c1
    return rows, cols


def polyline_prompt_mask(
    image_size: tuple[int, int], polyline_xy: Sequence[tuple[float, float]], radius: float = SCRIBBLE_RADIUS
) -> np.ndarray:
    """A scribble given as a polyline: integer lines between vertices, dilated by ``radius``.

    ``polyline_xy``: ``[(x, y), ...]`` pixel coordinates (truncated to integers, as the official
    rendering). Returns ``(H, W)`` bool.
    """
    height, width = image_size
    if len(polyline_xy) < 1:
        raise PromptError("a scribble needs at least one vertex")
    stroke = np.zeros((height, width), dtype=np.uint8)
    pts = [(_pixel_index(y, height), _pixel_index(x, width)) for x, y in polyline_xy]
    if len(pts) == 1:
        stroke[pts[0]] = 1
    for (ra, ca), (rb, cb) in zip(pts, pts[1:]):
        rows, cols = line_pixels(ra, ca, rb, cb)
        stroke[rows, cols] = 1
    return dilate_with_disks(stroke, radius)


def scribble_prompt_mask(stroke: np.ndarray, radius: float = SCRIBBLE_RADIUS) -> np.ndarray:
    """A scribble given as a stroke mask ``(H, W)``, dilated by ``radius`` (official: 5 px).

    Returns ``(H, W)`` bool; raises ``PromptError`` for an empty stroke.
    """
    if not np.any(stroke):
        raise PromptError("the scribble is empty")
    return dilate_with_disks(stroke, radius)


def region_prompt_mask(
    region: VisualRegion,
    image_size: tuple[int, int],
    stroke: np.ndarray | None = None,
    *,
    point_radius: float = POINT_RADIUS,
    scribble_radius: float = SCRIBBLE_RADIUS,
) -> np.ndarray:
    """The prompt mask of one :class:`~xsam_backend.prompt.VisualRegion`, ``(H, W)`` bool.

    Points become united disks, boxes filled rectangles, scribbles their dilated stroke; a
    scribble's stroke is passed decoded as ``stroke`` ``(H, W)`` (its RLE lives in the region).
    """
    if region.kind == "point":
        return point_prompt_mask(image_size, region.points, point_radius)
    if region.kind == "box":
        return box_prompt_mask(image_size, region.coords)
    if stroke is None:
        raise PromptError("a scribble region needs its decoded stroke mask")
    if stroke.shape != tuple(image_size):
        raise PromptError(
            f"the scribble mask is {stroke.shape[::-1]} but the image is {image_size[::-1]} (W x H)"
        )
    return scribble_prompt_mask(stroke, scribble_radius)


# -- visual prompts: masks -> sample points for the region embedding -----------------------------


def sample_prompt_points(mask: torch.Tensor, num_points: int = NUM_SAMPLE_POINTS) -> torch.Tensor:
    """Exactly ``num_points`` points of a padded-frame prompt mask, deterministically.

    ``mask``: ``(P, P)`` (any dtype, non-zero = on), SAM padded frame. The candidates are
    ``mask.nonzero() / (P, P)``: ``(row / P, col / P)`` in row-major order, as the official sampler.
    Returns ``(num_points, 2)`` float32 ``(y, x)`` in ``[0, 1)``; the model flips them to ``(x, y)``.

    Where this departs from the official random sampler (``rand_sample_repeat``):

    * exactly ``num_points`` pixels: all of them, unchanged: identical;
    * fewer: the official code appends random repeats, here the points repeat cyclically. The
      region embedding is a max-pool over the points, which a repeat cannot change: identical;
    * more: the official code keeps a random subset, here ``num_points`` evenly spaced in
      row-major order. The only case whose result differs, and then by the choice of subset.

    Raises ``PromptError`` for an empty mask (the official code would fail on it).
    """
    coords = mask.nonzero()
    n = int(coords.shape[0])
    if n == 0:
        raise PromptError("a visual prompt covers no pixel of the image after resizing")
    size = torch.tensor([mask.shape[-2], mask.shape[-1]], device=mask.device)[None]
    points = coords / size
    if n == num_points:
        return points
    if n < num_points:
        extra = torch.arange(num_points - n, device=mask.device) % n
        return torch.cat([points, points[extra]], dim=0)
    keep = torch.arange(num_points, device=mask.device) * n // num_points
    return points[keep]
