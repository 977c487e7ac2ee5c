"""Synthetic labelled scenes for the training tests, and where the tiny model comes from."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from repo_paths import SHARED

PARITY_DIR = Path(os.environ.get("XSAM_PARITY_DIR", SHARED / "xsam_parity"))
CLASSES = ("square", "disk")
SCENE_SHAPE = (96, 128)  # (H, W)


def scene(seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(H, W, 3)`` uint8 RGB with a red square (class 0) and a green disk (class 1) at places
    drawn from ``seed``; their masks ``(2, H, W)`` bool and class indices."""
    rng = np.random.default_rng(seed)
    h, w = SCENE_SHAPE
    yy, xx = np.mgrid[:h, :w]
    image = np.full((h, w, 3), 40, np.uint8)
    x0, y0 = int(rng.integers(5, 55)), int(rng.integers(5, 55))
    square = (xx >= x0) & (xx < x0 + 30) & (yy >= y0) & (yy < y0 + 30)
    cx, cy = int(rng.integers(90, 112)), int(rng.integers(20, 75))
    disk = (xx - cx) ** 2 + (yy - cy) ** 2 < 15**2
    image[square] = (200, 50, 50)
    image[disk] = (50, 200, 60)
    return image, np.stack([square, disk & ~square]), [0, 1]
