"""Masks to what Label Studio and datasets need; numpy, with OpenCV, shapely and pycocotools.

Every mask here is a 2-D array of shape ``(H, W)`` in the original image's pixel frame (after
EXIF orientation): row ``y`` from the top, column ``x`` from the left. Functions accept ``bool``
masks and integer masks holding 0/1 or 0/255 (any non-zero pixel is on) in any memory layout,
and return ``bool``. Continuous coordinates (boxes, polygon vertices) have their origin at the
top-left corner of the top-left pixel, so pixel ``(x, y)`` covers ``[x, x+1] x [y, y+1]``;
Label Studio percentages are those divided by the image's width or height, times 100.

* brush RLE for BrushLabels: :func:`encode_brush_rle`, :func:`decode_brush_rle`
  (``masks_brush``, byte-identical to label-studio-sdk and much faster);
* polygons for PolygonLabels: :func:`mask_to_polygons`, :func:`polygon_to_percent`,
  :func:`rasterize_polygon` (``masks_polygons``);
* boxes for RectangleLabels: :func:`mask_to_box`, :func:`box_to_percent`;
* cleanup before encoding: :func:`clean_mask`;
* transport between processes: :func:`encode_compact_rle` / :func:`decode_compact_rle`;
* datasets: :func:`encode_coco_rle` / :func:`decode_coco_rle` (pycocotools).

Malformed input raises :class:`~xsam_backend.errors.BadRequest` with what was expected.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from xsam_backend.errors import BadRequest, PayloadTooLarge
from xsam_backend.masks_brush import (
    brush_rle_num_values,
    change_points,
    decode_brush_rle,
    decode_brush_rle_values,
    decode_brush_runs,
    encode_brush_rle,
    encode_brush_rle_alpha,
)
from xsam_backend.masks_polygons import (
    HolePolicy,
    LargeHoleAction,
    PolygonSet,
    mask_to_polygons,
    percent_to_polygon,
    polygon_to_percent,
    rasterize_polygon,
)
from xsam_backend.masks_validation import MAX_DECODED_PIXELS, as_bool_mask, check_image_size, check_mask_array

__all__ = [
    "MAX_DECODED_PIXELS",
    "HolePolicy",
    "LargeHoleAction",
    "PolygonSet",
    "as_bool_mask",
    "box_to_percent",
    "brush_rle_num_values",
    "check_mask_array",
    "clean_mask",
    "decode_brush_rle",
    "decode_brush_rle_values",
    "decode_brush_runs",
    "decode_coco_rle",
    "decode_compact_rle",
    "encode_brush_rle",
    "encode_brush_rle_alpha",
    "encode_coco_rle",
    "encode_compact_rle",
    "mask_to_box",
    "mask_to_polygons",
    "percent_to_polygon",
    "polygon_to_percent",
    "rasterize_polygon",
]


def _runs(flat: np.ndarray) -> np.ndarray:
    """Lengths of alternating off/on runs of a 1-D bool array, starting with an off run (maybe 0).

    ``flat``: ``(N,)`` contiguous bool. Returns ``(R,)`` int64 summing to ``N``.
    """
    bounds = np.concatenate(([0], change_points(flat.view(np.uint8)), [flat.size]))
    lengths = np.diff(bounds)
    if flat[0]:
        lengths = np.concatenate(([0], lengths))
    return lengths


def _leb128_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value: 7 bits per byte, least significant first, high bit = more.

    ``values``: ``(R,)`` non-negative int64. Returns the concatenated bytes.
    """
    v = values.astype(np.uint64)
    nbytes = np.maximum(1, (np.floor(np.log2(np.maximum(v, 1).astype(np.float64))).astype(np.int64) // 7) + 1)
    # log2 in float64 is exact enough below 2**52; fix the rare rounding at 7-bit boundaries.
    nbytes = np.where(v >> (7 * nbytes).astype(np.uint64) != 0, nbytes + 1, nbytes)
    ends = np.cumsum(nbytes)
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    starts = ends - nbytes
    for k in range(int(nbytes.max()) if nbytes.size else 0):
        sel = nbytes > k
        byte = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def _leb128_decode(data: bytes) -> np.ndarray:
    """Inverse of :func:`_leb128_encode`: ``(R,)`` int64. Raises :class:`BadRequest` if cut short."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = np.flatnonzero(buf < 0x80)
    if last.size == 0 or last[-1] != buf.size - 1:
        raise BadRequest("compact RLE counts end in the middle of a number")
    starts = np.concatenate(([0], last[:-1] + 1))
    if int(np.max(last - starts)) >= 9:
        raise BadRequest("compact RLE counts hold a number over 63 bits")
    pos = np.arange(buf.size) - np.repeat(starts, last - starts + 1)
    parts = (buf & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.add.reduceat(parts, starts).astype(np.int64)


def encode_compact_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a mask as a compact JSON-safe run-length code, for masks crossing Redis.

    ``mask``: ``(H, W)`` bool, or integer 0/1 or 0/255, pixel frame. Returns
    ``{"size": [H, W], "counts": str}`` where ``counts`` is built as follows:

    1. flatten the mask row-major (C order) and take the lengths of alternating runs, starting
       with a run of off pixels (length 0 when the first pixel is on); the lengths sum to H*W;
    2. write each length as unsigned LEB128 (7 bits per byte, low bits first, high bit set on
       every byte but a number's last);
    3. compress the bytes with zlib (level 6) and write them as standard base64 (ASCII).

    A single object on a 4000x3000 image takes a few kilobytes.
    """
    m = as_bool_mask(mask)
    height, width = m.shape
    raw = _leb128_encode(_runs(np.ascontiguousarray(m).ravel()))
    counts = base64.b64encode(zlib.compress(raw, 6)).decode("ascii")
    return {"size": [int(height), int(width)], "counts": counts}


def decode_compact_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode :func:`encode_compact_rle` output back to an ``(H, W)`` bool mask (pixel frame).

    Raises :class:`BadRequest` when ``rle`` is not such a dict, the counts are not valid
    base64/zlib/LEB128, or the runs do not cover exactly H*W pixels; :class:`PayloadTooLarge`
    when H*W is over :data:`MAX_DECODED_PIXELS`.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise BadRequest(f"a compact RLE mask must be an object with 'size' and 'counts'; got {rle!r:.200}")
    size, counts = rle["size"], rle["counts"]
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise BadRequest(
            f"compact RLE 'size' must be [height, width] of positive integers; got {size!r:.100}"
        )
    height, width = int(size[0]), int(size[1])
    total = height * width
    if total > MAX_DECODED_PIXELS:
        raise PayloadTooLarge(f"compact RLE mask of {height}x{width} is over {MAX_DECODED_PIXELS} pixels")
    if not isinstance(counts, str):
        raise BadRequest(f"compact RLE 'counts' must be a string; got {type(counts).__name__}")
    try:
        packed = base64.b64decode(counts.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        # Each run takes at most 5 bytes below 2**35 pixels, so a longer stream is a bomb or garbage.
        raw = inflater.decompress(packed, 5 * (total + 1) + 16)
    except (UnicodeEncodeError, binascii.Error, zlib.error) as exc:
        raise BadRequest(f"compact RLE 'counts' is not valid base64 zlib data: {exc}") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise BadRequest("compact RLE 'counts' is truncated or longer than the mask allows")
    lengths = _leb128_decode(raw)
    if lengths.size == 0 or int(lengths.sum()) != total or (lengths.size > 1 and lengths[1:].min() == 0):
        raise BadRequest(f"compact RLE runs do not cover the {height}x{width} mask exactly")
    # Runs alternate off/on, starting with off.
    on = np.arange(lengths.size) % 2 == 1
    return np.repeat(on, lengths).reshape(height, width)


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The tight box around a mask's on pixels, or None for an empty mask.

    ``mask``: ``(H, W)`` bool or integer, pixel frame. Returns ``(x_min, y_min, x_max, y_max)``
    in continuous pixel coordinates, max exclusive: a mask whose only pixel is ``(3, 5)`` gives
    ``(3.0, 5.0, 4.0, 6.0)``.
    """
    m = as_bool_mask(mask)
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(m[:, cols[0] : cols[-1] + 1].any(axis=1))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def box_to_percent(box: tuple[float, float, float, float], width: int, height: int) -> dict[str, float]:
    """A pixel box ``(x_min, y_min, x_max, y_max)`` to Label Studio RectangleLabels geometry.

    ``width``, ``height``: the image's original size in pixels. Returns ``{"x", "y", "width",
    "height"}`` in percent of that size (top-left corner and extent).
    """
    h, w = check_image_size(height, width)
    if len(box) != 4 or not all(np.isfinite(v) for v in box):
        raise BadRequest(f"a box needs 4 finite numbers (x_min, y_min, x_max, y_max); got {box!r:.100}")
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    if x_max < x_min or y_max < y_min:
        raise BadRequest(f"a box needs x_min <= x_max and y_min <= y_max; got {box!r:.100}")
    return {
        "x": x_min / w * 100.0,
        "y": y_min / h * 100.0,
        "width": (x_max - x_min) / w * 100.0,
        "height": (y_max - y_min) / h * 100.0,
    }


def clean_mask(mask: np.ndarray, *, min_island_px: int = 0, max_hole_px: int = 0) -> np.ndarray:
    """Drop small islands and fill small holes, so speckled masks do not bloat brush payloads.

    ``mask``: ``(H, W)`` bool or integer, pixel frame. Islands are 8-connected groups of on
    pixels with fewer than ``min_island_px`` pixels; holes are 4-connected groups of off pixels
    that do not touch the image border, with at most ``max_hole_px`` pixels (the two
    connectivities are each other's complement, so every pixel belongs to exactly one island or
    hole). Holes are filled after islands are dropped. Returns a new ``(H, W)`` bool array.
    """
    m = as_bool_mask(mask)
    if min_island_px < 0 or max_hole_px < 0:
        raise BadRequest("min_island_px and max_hole_px must be >= 0")
    out = m.copy()
    if min_island_px > 0 and out.any():
        count, labels, stats, _ = cv2.connectedComponentsWithStats(out.view(np.uint8), connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < min_island_px
        small[0] = False  # label 0 is the background
        if small[1:].any():
            out[small[labels]] = False
    if max_hole_px > 0 and not out.all():
        background = np.pad(~out, 1, constant_values=True).view(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
        # The padding ring joins every border-touching hole into the one outer component.
        outer = labels[0, 0]
        fill = (stats[:, cv2.CC_STAT_AREA] <= max_hole_px) & (np.arange(count) != outer)
        fill[0] = False  # label 0 is the (padded) foreground
        if fill.any():
            out |= fill[labels[1:-1, 1:-1]]
    return out


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a mask, JSON-safe: ``{"size": [H, W], "counts": str}``.

    ``mask``: ``(H, W)`` bool or integer, pixel frame. The counts are pycocotools' column-major
    compressed string, decoded as ASCII, as COCO annotation files store them.
    """
    m = as_bool_mask(mask)
    rle = coco_mask.encode(np.asfortranarray(m, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _coco_counts(raw: bytes) -> list[int]:
    """Run lengths of a COCO compressed counts string (5 bits per character, 0x20 = more follow,
    sign-extended, each count after the second stored as a difference from the one two back)."""
    counts: list[int] = []
    p = 0
    while p < len(raw):
        value, shift, more = 0, 0, True
        while more:
            if p == len(raw):
                raise BadRequest("COCO RLE 'counts' ends in the middle of a number")
            c = raw[p] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_coco_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode COCO RLE (compressed ``counts`` string, or an uncompressed list) to ``(H, W)`` bool."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise BadRequest(f"a COCO RLE must be an object with 'size' and 'counts'; got {rle!r:.200}")
    size, counts = rle["size"], rle["counts"]
    if not isinstance(size, list | tuple) or len(size) != 2:
        raise BadRequest(f"COCO RLE 'size' must be [height, width]; got {size!r:.100}")
    h, w = check_image_size(size[0], size[1])
    if isinstance(counts, list):
        if (
            not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            or sum(counts) != h * w
        ):
            raise BadRequest(f"uncompressed COCO RLE counts must be non-negative ints summing to {h * w}")
        compressed = coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str | bytes):
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        if raw and (min(raw) < 48 or max(raw) > 111):
            raise BadRequest("COCO RLE 'counts' must use the characters '0' to 'o'")
        runs = _coco_counts(raw)
        if min(runs, default=0) < 0 or sum(runs) != h * w:
            raise BadRequest(f"COCO RLE counts do not cover the {h}x{w} mask exactly")
        compressed = {"size": [h, w], "counts": raw}
    else:
        raise BadRequest(f"COCO RLE 'counts' must be a string or a list; got {type(counts).__name__}")
    decoded = coco_mask.decode(compressed)
    if decoded.shape != (h, w):
        raise BadRequest(f"COCO RLE decodes to shape {decoded.shape}, not {h}x{w}")
    return decoded.astype(bool)
