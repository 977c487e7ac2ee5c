"""Compact transport RLE, boxes, cleanup, COCO RLE and shared input checks."""

from __future__ import annotations

import base64
import json
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from xsam_backend.errors import BadRequest, PayloadTooLarge
from xsam_backend.masks import (
    as_bool_mask,
    box_to_percent,
    clean_mask,
    decode_coco_rle,
    decode_compact_rle,
    encode_coco_rle,
    encode_compact_rle,
    mask_to_box,
)

any_mask = arrays(np.bool_, st.tuples(st.integers(1, 25), st.integers(1, 25)))


@settings(max_examples=200, deadline=None)
@given(any_mask)
def test_compact_rle_round_trips_through_json(mask: np.ndarray) -> None:
    rle = encode_compact_rle(mask)
    assert set(rle) == {"size", "counts"} and rle["size"] == list(mask.shape)
    decoded = decode_compact_rle(json.loads(json.dumps(rle)))
    assert decoded.dtype == np.bool_
    np.testing.assert_array_equal(decoded, mask)


def test_compact_rle_of_a_large_single_object_is_small() -> None:
    mask = np.zeros((3000, 4000), np.uint8)
    cv2.ellipse(mask, (2000, 1500), (1500, 1100), 20.0, 0, 360, 255, -1)
    cv2.circle(mask, (900, 700), 300, 0, -1)
    rle = encode_compact_rle(mask)
    assert len(json.dumps(rle)) < 50_000
    np.testing.assert_array_equal(decode_compact_rle(rle), mask == 255)


def test_compact_rle_format_is_the_documented_one() -> None:
    mask = np.array([[1, 1, 0], [0, 0, 1]], bool)
    # Runs (off first): 0 off, 2 on, 3 off, 1 on -> LEB128 bytes 0, 2, 3, 1.
    raw = zlib.decompress(base64.b64decode(encode_compact_rle(mask)["counts"]))
    assert raw == bytes([0, 2, 3, 1])
    long_run = zlib.decompress(base64.b64decode(encode_compact_rle(np.zeros((10, 30), bool))["counts"]))
    assert long_run == bytes([0x80 | (300 & 0x7F), 300 >> 7])


def test_compact_rle_non_contiguous_and_odd_shapes() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((40, 60)) < 0.4
    for mask in (base[::3, ::2], base.T, base[:1, :], base[:, :1], (base * 255).astype(np.uint8)):
        np.testing.assert_array_equal(decode_compact_rle(encode_compact_rle(mask)), mask != 0)


def _counts(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw)).decode()


@pytest.mark.parametrize(
    "rle, message",
    [
        ("nope", "object with 'size' and 'counts'"),
        ({"size": [2, 2]}, "object with 'size' and 'counts'"),
        ({"size": [2], "counts": ""}, "size"),
        ({"size": [2, -1], "counts": ""}, "size"),
        ({"size": [2, True], "counts": ""}, "size"),
        ({"size": [2, 2], "counts": 5}, "string"),
        ({"size": [2, 2], "counts": "***"}, "base64"),
        ({"size": [2, 2], "counts": base64.b64encode(b"not zlib").decode()}, "zlib"),
        ({"size": [2, 2], "counts": _counts(bytes([0, 3]))}, "cover"),
        ({"size": [2, 2], "counts": _counts(bytes([0, 2, 0, 2]))}, "cover"),
        ({"size": [2, 2], "counts": _counts(bytes([0, 0x84]))}, "middle"),
        ({"size": [2, 2], "counts": _counts(bytes(4000))}, "longer"),
    ],
)
def test_compact_rle_rejects_malformed_input(rle: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_compact_rle(rle)  # type: ignore[arg-type]


def test_compact_rle_refuses_absurd_sizes() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_compact_rle({"size": [100_000, 100_000], "counts": _counts(b"\x00")})


# --- boxes ----------------------------------------------------------------------------------


def test_box_is_tight_with_exclusive_max() -> None:
    mask = np.zeros((10, 20), bool)
    mask[3, 5] = True
    assert mask_to_box(mask) == (5.0, 3.0, 6.0, 4.0)
    mask[7, 15] = True
    assert mask_to_box(mask) == (5.0, 3.0, 16.0, 8.0)
    assert mask_to_box(np.zeros((4, 4), np.uint8)) is None
    assert mask_to_box(np.ones((1, 9), np.uint8)) == (0.0, 0.0, 9.0, 1.0)


def test_box_to_percent() -> None:
    assert box_to_percent((64.0, 48.0, 320.0, 480.0), 640, 480) == {
        "x": 10.0,
        "y": 10.0,
        "width": 40.0,
        "height": 90.0,
    }
    with pytest.raises(BadRequest):
        box_to_percent((5.0, 0.0, 1.0, 1.0), 10, 10)
    with pytest.raises(BadRequest):
        box_to_percent((0.0, 0.0, 1.0), 10, 10)  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        box_to_percent((0.0, 0.0, 1.0, 1.0), 0, 10)


# --- cleanup ----------------------------------------------------------------------------------


def test_clean_drops_small_islands_and_fills_small_holes() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:30, 5:30] = True
    mask[10:12, 10:12] = False  # hole of 4
    mask[20:26, 20:26] = False  # hole of 36
    mask[35, 35] = True  # island of 1
    mask[33:36, 0:3] = True  # island of 9, at the border
    out = clean_mask(mask, min_island_px=5, max_hole_px=10)
    assert not out[35, 35] and out[34, 1]
    assert out[10:12, 10:12].all() and not out[20:26, 20:26].any()
    assert out.dtype == np.bool_ and mask[35, 35]  # input untouched
    np.testing.assert_array_equal(clean_mask(mask), mask)


def test_clean_keeps_background_touching_the_border() -> None:
    mask = np.ones((10, 10), bool)
    mask[0:3, 0:3] = False  # touches the border: not a hole
    mask[5, 5] = False
    out = clean_mask(mask, max_hole_px=100)
    assert not out[0:3, 0:3].any() and out[5, 5]


def test_clean_hole_connectivity_is_four() -> None:
    mask = np.ones((7, 7), bool)
    mask[2, 2] = mask[3, 3] = False  # diagonal neighbours: two holes of 1 pixel
    mask[4:6, 4:6] = False
    out = clean_mask(mask, max_hole_px=1)
    assert out[2, 2] and out[3, 3] and not out[4:6, 4:6].any()


# --- COCO ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(any_mask)
def test_coco_rle_round_trip_and_matches_pycocotools(mask: np.ndarray) -> None:
    rle = encode_coco_rle(mask)
    assert isinstance(rle["counts"], str)
    json.dumps(rle)
    np.testing.assert_array_equal(decode_coco_rle(rle), mask)
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == reference["counts"].decode()
    assert int(coco_mask.area(reference)) == int(mask.sum())


def test_coco_rle_uncompressed_counts() -> None:
    mask = np.array([[1, 0, 0], [1, 1, 0]], bool)  # column-major: 1,1 | 0,1 | 0,0
    np.testing.assert_array_equal(decode_coco_rle({"size": [2, 3], "counts": [0, 2, 1, 1, 2]}), mask)


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [5, 6], "counts": "0"},
        {"size": [5, 6], "counts": "PPPP"},
        {"size": [5, 6], "counts": "zzz"},
        {"size": [5, 6], "counts": [1, 2]},
        {"size": [5, 6], "counts": 3},
        {"size": [5], "counts": "0"},
        [1, 2],
    ],
)
def test_coco_rle_rejects_malformed_input(rle: object) -> None:
    with pytest.raises(BadRequest):
        decode_coco_rle(rle)  # type: ignore[arg-type]


# --- shared checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((3, 3), np.float32), "dtype float32"),
        (np.zeros((3, 3, 3), np.uint8), "2-D"),
        (np.zeros((0, 3), bool), "at least one pixel"),
        ([[1, 0]], "numpy array"),
    ],
)
def test_bad_masks_are_rejected_everywhere(mask: object, message: str) -> None:
    for convert in (as_bool_mask, encode_compact_rle, mask_to_box, clean_mask, encode_coco_rle):
        with pytest.raises(BadRequest, match=message):
            convert(mask)  # type: ignore[operator]


def test_integer_masks_count_non_zero_as_on() -> None:
    mask = np.array([[0, 1, 255]], np.uint8)
    np.testing.assert_array_equal(as_bool_mask(mask), [[False, True, True]])
    same = np.zeros((2, 2), bool)
    assert as_bool_mask(same) is same
