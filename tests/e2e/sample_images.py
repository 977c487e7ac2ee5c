"""Real photographs for the end-to-end tests, with reference masks derived independently of the backend.

The images come from scikit-image's bundled samples (``skimage.data.coins()``: 303 x 384 greyscale
coins on a darker background). The reference object is one coin found by Otsu thresholding and
connected components, so the backend's masks are compared with something it never computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, filters, measure, morphology


@dataclass(frozen=True)
class SampleImage:
    """An image written to disk and the coin the tests click on.

    ``mask``: ``(H, W)`` bool in pixel coordinates of the stored image (no EXIF rotation);
    ``point_xy``: a pixel inside the coin, ``(x, y)``, its centroid rounded;
    ``box_xyxy``: the coin's bounding box in pixels, ``(x0, y0, x1, y1)``, end-exclusive.
    """

    path: Path
    mask: np.ndarray
    point_xy: tuple[int, int]
    box_xyxy: tuple[int, int, int, int]

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def reference_coin_mask(grey: np.ndarray) -> np.ndarray:
    """The largest well-shaped coin in ``grey`` (``(H, W)`` uint8): Otsu, opening, holes filled.

    "Well-shaped" means solidity > 0.95 (Otsu merges some touching coins into one blob) and not
    touching the image border. Returns an ``(H, W)`` bool mask.
    """
    foreground = grey > filters.threshold_otsu(grey)
    foreground = morphology.binary_opening(foreground, morphology.disk(2))
    labels = measure.label(foreground)
    height, width = grey.shape
    candidates = [
        region
        for region in measure.regionprops(labels)
        if region.solidity > 0.95
        and region.bbox[0] > 0
        and region.bbox[1] > 0
        and region.bbox[2] < height
        and region.bbox[3] < width
    ]
    if not candidates:
        raise ValueError("no isolated coin found in the image")
    coin = max(candidates, key=lambda region: region.area)
    return np.asarray(ndimage.binary_fill_holes(labels == coin.label), dtype=bool)


def _describe(path: Path, grey: np.ndarray) -> SampleImage:
    mask = reference_coin_mask(grey)
    rows, cols = np.nonzero(mask)
    point = (int(round(cols.mean())), int(round(rows.mean())))
    if not mask[point[1], point[0]]:
        raise ValueError(f"the centroid of the reference coin in {path.name} lies outside it")
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    return SampleImage(path=path, mask=mask, point_xy=point, box_xyxy=box)


def write_coins_jpeg(path: Path) -> SampleImage:
    """The whole coins photograph as a greyscale JPEG (quality 95)."""
    grey = data.coins()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey).save(path, quality=95)
    return _describe(path, grey)


def write_coins_png(path: Path) -> SampleImage:
    """The whole coins photograph as a greyscale PNG."""
    grey = data.coins()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey).save(path)
    return _describe(path, grey)


def write_coins_crop_rgb_png(path: Path) -> SampleImage:
    """The lower-right part of the coins photograph (203 x 234), as a 3-channel RGB PNG."""
    grey = np.ascontiguousarray(data.coins()[100:, 150:])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)
    return _describe(path, grey)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(H, W)`` bool masks (0.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
