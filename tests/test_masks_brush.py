"""Brush RLE: byte identity with label-studio-sdk, decoding any rle-pack stream, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from xsam_backend.errors import BadRequest, PayloadTooLarge
from xsam_backend.masks import (
    brush_rle_num_values,
    decode_brush_rle,
    decode_brush_rle_values,
    encode_brush_rle,
    encode_brush_rle_alpha,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    """(H, W) uint8 0/255 masks: noise, blocks, rows of long runs, empty and full."""
    h = draw(st.integers(1, 40))
    w = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["noise", "blocks", "empty", "full"]))
    if kind == "empty":
        return np.zeros((h, w), np.uint8)
    if kind == "full":
        return np.full((h, w), 255, np.uint8)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return np.where(rng.random((h, w)) < draw(st.floats(0, 1)), 255, 0).astype(np.uint8)
    m = np.zeros((h, w), np.uint8)
    for _ in range(draw(st.integers(1, 5))):
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = 255
    return m


@FAST
@given(masks())
def test_encode_is_byte_identical_to_sdk_and_decodes_back(mask: np.ndarray) -> None:
    expected = mask2rle(mask)
    assert encode_brush_rle(mask) == expected
    assert encode_brush_rle(mask == 255) == expected  # bool
    assert encode_brush_rle((mask // 255).astype(np.int32)) == expected  # 0/1 ints
    decoded = decode_brush_rle(expected, *mask.shape)
    assert decoded.dtype == np.bool_ and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask == 255)


@FAST
@given(
    arrays(
        np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.sampled_from([0, 1, 7, 255])
    )
)
def test_alpha_encoder_keeps_values_like_sdk(alpha: np.ndarray) -> None:
    rle = encode_brush_rle_alpha(alpha)
    assert rle == mask2rle(alpha)
    np.testing.assert_array_equal(decode_brush_rle_values(rle), decode_rle(rle))
    np.testing.assert_array_equal(decode_brush_rle(rle, *alpha.shape), alpha != 0)


@FAST
@given(arrays(np.uint8, st.integers(1, 300), elements=st.integers(0, 255)))
def test_value_runs_of_length_one_use_literals_like_sdk(values: np.ndarray) -> None:
    """A 1 x N alpha is N*4 values; the general stream encoder is exercised through it."""
    alpha = values.reshape(1, -1)
    assert encode_brush_rle_alpha(alpha) == mask2rle(alpha)


@pytest.mark.parametrize(
    "shape, on",
    [
        ((1, 16384), slice(None)),  # exactly 65536 values: one full class-3 chunk
        ((1, 16385), slice(None)),  # one chunk and a remainder of 4
        ((2, 40000), slice(0, 32768)),  # runs of 2 chunks exactly, then a long off run
        ((3, 30001), slice(5, 30000)),
    ],
)
def test_runs_longer_than_a_chunk_split_like_sdk(shape: tuple[int, int], on: slice) -> None:
    mask = np.zeros(shape, np.uint8)
    mask[:, on] = 255
    expected = mask2rle(mask)
    assert encode_brush_rle(mask) == expected
    np.testing.assert_array_equal(decode_brush_rle(expected, *shape), mask == 255)


def test_mixed_one_and_255_merge_into_one_run() -> None:
    mask = np.array([[0, 1, 255, 255, 1, 0, 9]], np.uint8)
    assert encode_brush_rle(mask) == mask2rle(np.where(mask != 0, 255, 0).astype(np.uint8))


def test_non_contiguous_and_fortran_masks() -> None:
    rng = np.random.default_rng(3)
    base = np.where(rng.random((30, 50)) < 0.3, 255, 0).astype(np.uint8)
    for view in (base[::2, ::3], base.T, np.asfortranarray(base), base[:, 7:31]):
        assert encode_brush_rle(view) == mask2rle(np.ascontiguousarray(view))


def test_on_pixels_are_written_opaque() -> None:
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    values = decode_rle(encode_brush_rle(mask)).reshape(4, 5, 4)
    assert set(np.unique(values[..., 3])) == {0, 255}
    np.testing.assert_array_equal(values[..., 3] == 255, mask)


def test_num_values_header() -> None:
    rle = encode_brush_rle(np.ones((7, 9), bool))
    assert brush_rle_num_values(rle) == 7 * 9 * 4
    assert brush_rle_num_values(bytes(rle)) == 7 * 9 * 4


# --- streams other encoders may write -------------------------------------------------------


def _write_rle_pack(
    values: np.ndarray, rng: np.random.Generator, widths: tuple[int, ...] = (3, 4, 8, 16)
) -> list[int]:
    """A general rle-pack writer: random choice of literal blocks (of any length) and runs."""
    out = [f"{values.size:032b}", f"{8 - 1:05b}", "".join(f"{w - 1:04b}" for w in widths)]
    i = 0
    while i < values.size:
        run = 1
        while i + run < values.size and values[i + run] == values[i] and run < 1 << widths[3]:
            run += 1
        if run > 1 and rng.random() < 0.8:
            length, literal = run, False
        else:
            length, literal = int(rng.integers(1, min(values.size - i, 40) + 1)), True
        k = next(j for j, w in enumerate(widths) if length <= 1 << w)
        out.append(("0" if literal else "1") + f"{k:02b}" + format(length - 1, f"0{widths[k]}b"))
        if literal:
            out.extend(f"{int(v):08b}" for v in values[i : i + length])
        else:
            out.append(f"{int(values[i]):08b}")
        i += length
    bits = "".join(out)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[j : j + 8], 2) for j in range(0, len(bits), 8)]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(3, 4, 8, 16), (2, 5, 9, 12)]))
def test_decodes_literal_blocks_and_other_widths(seed: int, widths: tuple[int, ...]) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    alpha = np.where(rng.random((h, w)) < rng.random(), 255, 0).astype(np.uint8)
    alpha[rng.random((h, w)) < 0.1] = 17
    stream = np.repeat(alpha.ravel(), 4)
    rle = _write_rle_pack(stream, rng, widths)
    np.testing.assert_array_equal(decode_rle(rle), stream)  # the writer is valid rle-pack
    np.testing.assert_array_equal(decode_brush_rle_values(rle), stream)
    np.testing.assert_array_equal(decode_brush_rle(rle, h, w), alpha != 0)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 3), np.float32),
        np.zeros((3, 3, 1), np.uint8),
        np.zeros((0, 4), np.uint8),
        np.zeros(5, bool),
        [[0, 1], [1, 0]],
    ],
)
def test_encode_rejects_bad_masks(mask: object) -> None:
    with pytest.raises(BadRequest):
        encode_brush_rle(mask)  # type: ignore[arg-type]


def test_alpha_encoder_needs_uint8() -> None:
    with pytest.raises(BadRequest, match="uint8"):
        encode_brush_rle_alpha(np.zeros((2, 2), np.int64))


def test_decode_rejects_wrong_size_and_broken_streams() -> None:
    mask = np.zeros((6, 8), bool)
    mask[2:4, 1:7] = True
    rle = encode_brush_rle(mask)
    with pytest.raises(BadRequest, match="holds 192 values; a 4x13 mask needs 208"):
        decode_brush_rle(rle, 4, 13)
    with pytest.raises(BadRequest, match="ends"):
        decode_brush_rle(rle[:-2], 6, 8)
    with pytest.raises(BadRequest, match="header"):
        decode_brush_rle(rle[:5], 6, 8)
    with pytest.raises(BadRequest, match="0..255"):
        decode_brush_rle([*rle[:-1], 256], 6, 8)
    with pytest.raises(BadRequest):
        decode_brush_rle("abc", 6, 8)  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        decode_brush_rle([*rle[:-1], 1.5], 6, 8)  # type: ignore[list-item]
    with pytest.raises(BadRequest):
        decode_brush_rle(rle, 0, 8)
    with pytest.raises(PayloadTooLarge):
        decode_brush_rle(rle, 100_000, 100_000)


def test_decode_rejects_runs_past_the_header_count() -> None:
    rle = encode_brush_rle(np.ones((2, 2), bool))  # 16 values in one run
    shorter = list(rle)
    shorter[3] = 12  # the header now claims 12 values
    with pytest.raises(BadRequest, match="header says 12"):
        decode_brush_rle_values(shorter)
