"""Brush RLE speed next to label-studio-sdk, plus compact RLE sizes; prints a table.

    python -m bench.bench_masks [--repeat N]     (from the repository root)

Each time is the best of N runs (the SDK: of max(1, N // 3) runs on large masks). Both encoders'
bytes are checked to be identical and both decoders' masks equal before anything is timed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from xsam_backend.masks import (
    decode_brush_rle,
    decode_compact_rle,
    encode_brush_rle,
    encode_compact_rle,
    mask_to_polygons,
)


def blobs(height: int, width: int, count: int, seed: int = 0) -> np.ndarray:
    """(H, W) uint8 0/255 with ``count`` random filled ellipses."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(count):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(10, 150)), int(rng.integers(10, 150)))
        cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 255, -1)
    return mask


def single_object(height: int, width: int) -> np.ndarray:
    """(H, W) uint8 0/255: one large rotated ellipse with a bite taken out."""
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, height // 2), (width // 3, height // 3), 25.0, 0, 360, 255, -1)
    cv2.circle(mask, (width // 3, height // 3), min(height, width) // 8, 0, -1)
    return mask


def speckle(height: int, width: int, fraction: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random((height, width)) < fraction, 255, 0).astype(np.uint8)


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    cases = [
        ("4000x3000, 200 blobs", blobs(3000, 4000, 200)),
        ("1920x1080, single object", single_object(1080, 1920)),
        ("4000x3000, single object", single_object(3000, 4000)),
        ("1024x1024, 40 blobs", blobs(1024, 1024, 40, seed=2)),
        ("640x480, single object", single_object(480, 640)),
        ("1000x1000, 2% speckle", speckle(1000, 1000, 0.02)),
    ]
    header = (
        f"{'mask':<26} {'runs':>7} {'rle B':>8} | {'sdk enc':>9} {'ours':>8} {'ratio':>6} | "
        f"{'sdk dec':>9} {'ours':>8} {'ratio':>6} | {'compact B':>9} {'poly ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, mask in cases:
        h, w = mask.shape
        sdk_rle = mask2rle(mask)
        ours_rle = encode_brush_rle(mask)
        if ours_rle != sdk_rle:
            raise SystemExit(f"{name}: encoders disagree")
        sdk_mask = decode_rle(sdk_rle).reshape(h, w, 4)[:, :, 3] != 0
        if not np.array_equal(decode_brush_rle(sdk_rle, h, w), sdk_mask):
            raise SystemExit(f"{name}: decoders disagree")
        slow_repeat = max(1, args.repeat // 3) if mask.size > 2_000_000 else args.repeat
        sdk_enc = best_of(lambda m=mask: mask2rle(m), slow_repeat)
        our_enc = best_of(lambda m=mask: encode_brush_rle(m), args.repeat)
        sdk_dec = best_of(
            lambda r=sdk_rle, hh=h, ww=w: decode_rle(r).reshape(hh, ww, 4)[:, :, 3], slow_repeat
        )
        our_dec = best_of(lambda r=sdk_rle, hh=h, ww=w: decode_brush_rle(r, hh, ww), args.repeat)
        compact = encode_compact_rle(mask)
        if not np.array_equal(decode_compact_rle(compact), mask != 0):
            raise SystemExit(f"{name}: compact RLE does not round-trip")
        poly = best_of(lambda m=mask: mask_to_polygons(m), max(1, args.repeat // 3))
        runs = int(np.count_nonzero(np.diff(mask.ravel()))) + 1
        print(
            f"{name:<26} {runs:>7} {len(sdk_rle):>8} | {sdk_enc * 1e3:>7.1f}ms {our_enc * 1e3:>6.2f}ms "
            f"{sdk_enc / our_enc:>5.0f}x | {sdk_dec * 1e3:>7.1f}ms {our_dec * 1e3:>6.2f}ms "
            f"{sdk_dec / our_dec:>5.0f}x | {len(compact['counts']):>9} {poly * 1e3:>8.1f}"
        )


if __name__ == "__main__":
    main()
