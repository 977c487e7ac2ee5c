"""Label Studio brush RLE, vectorised (public through :mod:`xsam_backend.masks`).

The format is ``thi-ng/rle-pack`` applied to an RGBA buffer: every mask pixel, row-major, repeated
four times (R, G, B, alpha), so a ``(H, W)`` mask is a stream of ``H*W*4`` 8-bit values. The bit
stream, most significant bit first::

    32 bits  number of values (H*W*4)
     5 bits  word size - 1 (7)
    4x4 bits run-length field widths - 1 (2, 3, 7, 15 -> widths 3, 4, 8, 16)
    tokens   1 bit x (1 = run, 0 = literal block), 2 bits width class k, widths[k] bits count - 1,
             then one value (run) or count values (literal block)

``label_studio_sdk.converter.brush.encode_rle`` writes a run of length 1 as a one-value literal,
runs of 2..8 / 9..16 / 17..256 in classes 0 / 1 / 2, and longer runs in class 3, split into
chunks of 65536 followed by the remainder; it then pads with ``8 - bits % 8`` zero bits (1 to 8,
a whole zero byte when already aligned). The encoder here emits exactly those bytes, computing
all tokens at once from the run boundaries instead of concatenating bit strings.

The decoder reads any rle-pack stream (literal blocks of any length, other field widths, word
sizes up to 16), as Label Studio's editor may write, and finds token starts by walking a table
of "next token" offsets computed for every bit position at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xsam_backend.errors import BadRequest, PayloadTooLarge
from xsam_backend.masks_validation import check_image_size, check_mask_array

_RUN_WIDTHS = np.array([3, 4, 8, 16], dtype=np.int64)
_HEADER_BITS = 32 + 5 + 16
_CHUNK = 1 << 16
# Values 1..16 bits wide fit the 64-bit windows the decoder reads fields from, with room to spare.
_MAX_WORD_BITS = 16
# Bit offsets must stay well inside int32 for the decoder's tables.
_MAX_STREAM_BITS = 2**31 - 2**22


def change_points(flat: np.ndarray) -> np.ndarray:
    """Indices ``i`` (ascending, int64) where ``flat[i] != flat[i - 1]``, for a 1-D uint8 array.

    Compares eight bytes at a time and looks inside only the words that differ, which reads the
    mask once instead of building and scanning a bool array as long as the mask.
    """
    a, b = flat[:-1], flat[1:]
    whole = (a.size // 8) * 8
    wa, wb = a[:whole].view(np.uint64), b[:whole].view(np.uint64)
    words = np.flatnonzero(wa != wb)
    diff = wa[words] ^ wb[words]
    # Byte j of a little-endian word holds bits 8j..8j+7.
    lanes = (diff[:, None] >> (np.arange(8, dtype=np.uint64) * np.uint64(8))) & np.uint64(0xFF)
    if np.little_endian:
        row, lane = np.nonzero(lanes)
    else:  # pragma: no cover - big-endian hosts count bytes from the other end
        row, lane = np.nonzero(lanes[:, ::-1])
    inside = words[row] * 8 + lane
    tail = whole + np.flatnonzero(a[whole:] != b[whole:])
    return np.concatenate((inside, tail)) + 1


def _value_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal values in a 1-D uint8 array: ``(lengths (R,) int64, values (R,) uint8)``."""
    flat = np.ascontiguousarray(flat)
    starts = np.concatenate(([0], change_points(flat)))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    return lengths, flat[starts]


def _tokens(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The SDK encoder's tokens for value runs: ``(codes (T,) uint64, bit lengths (T,) int64)``.

    ``lengths``: ``(R,)`` int64 >= 1, run lengths in values; ``values``: ``(R,)`` ints in 0..255.
    Each code is right-aligned: ``x | k | count - 1 | value`` on ``1 + 2 + widths[k] + 8`` bits.
    """
    values = values.astype(np.uint64)
    pieces = np.where(lengths > 256, (lengths - 1) // _CHUNK, 0) + 1
    if pieces.max(initial=1) > 1:
        run_of_token = np.repeat(np.arange(lengths.size), pieces)
        first = np.cumsum(pieces) - pieces
        is_chunk = np.arange(run_of_token.size) - first[run_of_token] < pieces[run_of_token] - 1
        counts = np.where(is_chunk, _CHUNK, lengths[run_of_token] - (pieces[run_of_token] - 1) * _CHUNK)
        run_lengths, values = lengths[run_of_token], values[run_of_token]
    else:
        counts = run_lengths = lengths
    k = np.where(run_lengths > 256, 3, np.where(counts > 16, 2, np.where(counts > 8, 1, 0)))
    width = _RUN_WIDTHS[k]
    is_run = (run_lengths > 1).astype(np.uint64)
    wide = width.astype(np.uint64)
    codes = (
        (is_run << (wide + np.uint64(10)))
        | (k.astype(np.uint64) << (wide + np.uint64(8)))
        | ((counts - 1).astype(np.uint64) << np.uint64(8))
        | values
    )
    return codes, width + 11


def _pack(codes: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """Concatenate right-aligned bit fields of 14 to 32 bits, MSB first, with the SDK's padding.

    ``codes``: ``(T,)`` uint64; ``nbits``: ``(T,)`` int64. Returns ``(total // 8 + 1,)`` uint8.
    """
    offsets = np.cumsum(nbits) - nbits
    total = int(offsets[-1] + nbits[-1])
    size = total // 8 + 1
    first_byte = offsets >> 3
    # Each field sits in a 40-bit window starting at its first byte. Fields are longer than a
    # byte, so no two start in the same byte and each lane's indices are unique.
    window = codes << (40 - nbits - (offsets & 7)).astype(np.uint64)
    out = np.zeros(size + 5, dtype=np.uint8)
    for lane in range(5):
        out[first_byte + lane] |= (window >> np.uint64(32 - 8 * lane)).astype(np.uint8)
    return out[:size]


def _encode_value_runs(lengths: np.ndarray, values: np.ndarray, num: int) -> list[int]:
    """Bytes of the SDK's ``encode_rle`` for a stream of ``num`` values given as runs."""
    header_codes = np.array([num >> 16, num & 0xFFFF, (7 << 16) | (2 << 12) | (3 << 8) | (7 << 4) | 15])
    codes, nbits = _tokens(lengths, values)
    all_codes = np.concatenate((header_codes.astype(np.uint64), codes))
    all_nbits = np.concatenate((np.array([16, 16, 21]), nbits))
    return _pack(all_codes, all_nbits).tolist()


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Encode a mask as Label Studio brush RLE (the ``"rle"`` field of a brushlabels result).

    ``mask``: ``(H, W)`` bool, or integer 0/1 or 0/255 (any non-zero pixel is on), pixel frame,
    any memory layout. On pixels are written with alpha 255 (an alpha of 1 would be invisible).
    Returns bytes as ints in 0..255, identical to
    ``label_studio_sdk.converter.brush.mask2rle(np.where(mask, 255, 0).astype(np.uint8))``.
    """
    m = check_mask_array(mask)
    # The run finder reads bytes; wider integer masks are reduced to on/off first.
    flat = m if m.dtype.itemsize == 1 else (m != 0)
    lengths, values = _value_runs(np.ravel(flat).view(np.uint8))
    on = values != 0
    if lengths.size > 1 and np.any(on[1:] == on[:-1]):
        # Runs of different non-zero values (1 next to 255) are one run once all become 255.
        keep = np.concatenate(([True], on[1:] != on[:-1]))
        ends = np.cumsum(lengths)[np.concatenate((keep[1:], [True]))]
        lengths, on = np.diff(np.concatenate(([0], ends))), on[keep]
    return _encode_value_runs(lengths * 4, np.where(on, 255, 0), m.size * 4)


def encode_brush_rle_alpha(alpha: np.ndarray) -> list[int]:
    """Encode an alpha channel as brush RLE, keeping its values (0 transparent, 255 opaque).

    ``alpha``: ``(H, W)`` uint8, pixel frame. Returns bytes as ints in 0..255, identical to
    ``label_studio_sdk.converter.brush.mask2rle(alpha)``.
    """
    a = check_mask_array(alpha, name="alpha")
    if a.dtype != np.uint8:
        raise BadRequest(f"alpha must be uint8; got dtype {a.dtype}")
    lengths, values = _value_runs(np.ravel(a))
    return _encode_value_runs(lengths * 4, values, a.size * 4)


def _as_rle_bytes(rle: Any) -> np.ndarray:
    """Check brush RLE (ints in 0..255, bytes, or a 1-D integer array) and return ``(N,)`` uint8."""
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1 or (rle.size and not np.issubdtype(rle.dtype, np.integer)):
            raise BadRequest(f"brush RLE must be a flat integer array; got {rle.dtype} of shape {rle.shape}")
        if rle.size and (rle.min() < 0 or rle.max() > 255):
            raise BadRequest("brush RLE values must be bytes in 0..255")
        return rle.astype(np.uint8)
    if isinstance(rle, str) or not isinstance(rle, Sequence | bytes | bytearray | memoryview):
        raise BadRequest(f"brush RLE must be a list of byte values; got {type(rle).__name__}")
    try:
        # bytes() checks every item is an integer in 0..255, in C.
        return np.frombuffer(bytes(rle), dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"brush RLE must be a list of integers in 0..255: {exc}") from exc


def brush_rle_num_values(rle: Sequence[int] | bytes | np.ndarray) -> int:
    """The 32-bit header of brush RLE: how many values it encodes (``H*W*4`` for a mask)."""
    return _num_values(_as_rle_bytes(rle))


def _num_values(buf: np.ndarray) -> int:
    if buf.size < 7:
        raise BadRequest(f"brush RLE needs a 7-byte header; got {buf.size} bytes")
    return int.from_bytes(buf[:4].tobytes(), "big")


def _windows(buf: np.ndarray) -> np.ndarray:
    """``(N,)`` uint64: for each byte offset, the 8 bytes starting there, big-endian (zero padded)."""
    padded = np.concatenate((buf, np.zeros(8, dtype=np.uint8))).astype(np.uint64)
    win = np.zeros(buf.size + 1, dtype=np.uint64)
    for i in range(8):
        win = (win << np.uint64(8)) | padded[i : i + buf.size + 1]
    return win


def _read(win: np.ndarray, pos: np.ndarray, width: np.ndarray | int) -> np.ndarray:
    """Unsigned fields of ``width`` (1..57) bits at bit offsets ``pos`` (int64); returns int64."""
    shifted = win[pos >> 3] << (pos & 7).astype(np.uint64)
    return (shifted >> (64 - np.asarray(width)).astype(np.uint64)).astype(np.int64)


def decode_brush_runs(rle: Sequence[int] | bytes | np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Parse any rle-pack stream into value runs.

    Returns ``(num, lengths (R,) int64, values (R,) int64)`` with ``lengths.sum() == num``.
    Raises :class:`BadRequest` when the stream is cut short or its runs overshoot ``num``.
    """
    return _parse(_as_rle_bytes(rle))


def _token_lengths(buf: np.ndarray, word: int, widths: np.ndarray, *, literal_counts: bool) -> np.ndarray:
    """For every bit offset p, the length in bits of a token starting at p, ``(8N,)``.

    ``buf``: ``(N,)`` uint8. A token's length is set by its first 3 bits (x, k) and, for a
    literal block, by its ``widths[k]``-bit count. With ``literal_counts=False`` every literal
    block is taken to hold one value (all the SDK's encoder writes) and the result is uint8;
    the caller checks that assumption on the tokens it visits. Otherwise the result is int32.
    """
    lengths = (3 + word + widths[np.arange(8) & 3]).astype(np.uint8)
    if not literal_counts:
        bits = np.unpackbits(np.concatenate((buf, np.zeros(1, dtype=np.uint8))))
        head = bits[:-8] << 2
        head |= bits[1:-7] << 1
        head |= bits[2:-6]
        return lengths[head]
    n = buf.size
    padded = np.concatenate((buf, np.zeros(3, dtype=np.uint8))).astype(np.uint32)
    w32 = (padded[:n] << 24) | (padded[1 : n + 1] << 16) | (padded[2 : n + 2] << 8) | padded[3 : n + 3]
    # Element p: the 32 bits starting at bit p (3 head bits + a count of up to 16 bits fit).
    bits_at = np.repeat(w32, 8)
    bits_at <<= np.tile(np.arange(8, dtype=np.uint32), n)
    head32 = bits_at >> np.uint32(29)
    width = widths.astype(np.uint32)[head32 & np.uint32(3)]
    extra = (bits_at << np.uint32(3)) >> (np.uint32(32) - width)
    extra[head32 >= 4] = 0
    return lengths[head32].astype(np.int32) + (extra * np.uint32(word)).astype(np.int32)


def _walk(token_lengths: np.ndarray, total_bits: int) -> np.ndarray:
    """Token starts ``(T,)`` int64 from the end of the header to the end of the stream."""
    # Each start depends on the previous token, so this one loop stays in Python; it runs once
    # per token, about once per run of the mask.
    step = token_lengths.data
    starts: list[int] = []
    visit = starts.append
    p = _HEADER_BITS
    while p < total_bits:
        visit(p)
        p += step[p]
    return np.asarray(starts, dtype=np.int64)


def _parse(buf: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`decode_brush_runs` on checked bytes ``(N,)`` uint8."""
    num = _num_values(buf)
    total_bits = buf.size * 8
    if total_bits > _MAX_STREAM_BITS:
        raise PayloadTooLarge(f"brush RLE of {buf.size} bytes is over {_MAX_STREAM_BITS // 8} bytes")
    win = _windows(buf)
    word = int(_read(win, np.array([32]), 5)[0]) + 1
    widths = _read(win, np.arange(37, 53, 4), 4) + 1
    if word > _MAX_WORD_BITS:
        raise BadRequest(f"brush RLE word size {word} is over {_MAX_WORD_BITS} bits")
    if num == 0:
        return 0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    token_lengths = _token_lengths(buf, word, widths, literal_counts=False)
    at = _walk(token_lengths, total_bits)
    head = _read(win, at, 3)
    is_run = (head >> 2) == 1
    width = widths[head & 3]
    count = _read(win, at + 3, width) + 1
    if np.any(~is_run & (count > 1)):
        # Literal blocks of several values (Label Studio's editor writes them): walk again
        # with their lengths.
        token_lengths = _token_lengths(buf, word, widths, literal_counts=True)
        at = _walk(token_lengths, total_bits)
        head = _read(win, at, 3)
        is_run = (head >> 2) == 1
        width = widths[head & 3]
        count = _read(win, at + 3, width) + 1
    produced = np.cumsum(count)
    last = int(np.searchsorted(produced, num))
    if last == at.size:
        raise BadRequest(f"brush RLE ends after {int(produced[-1]) if at.size else 0} of its {num} values")
    if produced[last] != num:
        raise BadRequest(f"brush RLE runs hold {int(produced[last])} values; its header says {num}")
    if int(at[last]) + int(token_lengths[at[last]]) > total_bits:
        raise BadRequest("brush RLE ends in the middle of its last token")
    at, is_run, width, count = at[: last + 1], is_run[: last + 1], width[: last + 1], count[: last + 1]

    # A run token yields one (value, count) pair; a literal block yields count pairs of length 1.
    items = np.where(is_run, 1, count)
    token_of_item = np.repeat(np.arange(at.size), items)
    index_in_token = np.arange(token_of_item.size) - np.repeat(np.cumsum(items) - items, items)
    value_pos = at[token_of_item] + 3 + width[token_of_item] + word * index_in_token
    values = _read(win, value_pos, word)
    lengths = np.where(is_run[token_of_item], count[token_of_item], 1)
    return num, lengths, values


def decode_brush_rle(rle: Sequence[int] | bytes | np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode Label Studio brush RLE to an ``(H, W)`` bool mask (pixel frame): on where alpha != 0.

    ``rle``: ints in 0..255 (or bytes) as in a brushlabels result; ``height``, ``width``: the
    result's ``original_height`` / ``original_width``. Reads the SDK's and the editor's streams.
    Raises :class:`BadRequest` when the header does not hold ``height*width*4`` values or the
    stream is malformed.
    """
    h, w = check_image_size(height, width)
    buf = _as_rle_bytes(rle)
    declared = _num_values(buf)
    if declared != h * w * 4:
        raise BadRequest(f"brush RLE holds {declared} values; a {h}x{w} mask needs {h * w * 4}")
    _, lengths, values = _parse(buf)
    # Pixel i is on when value 4i+3 (its alpha) is; a run over values [s, e) covers the pixels
    # from s // 4 up to e // 4.
    ends = np.cumsum(lengths)
    pixel_counts = np.diff(np.concatenate(([0], ends // 4)))
    return np.repeat(values != 0, pixel_counts).reshape(h, w)


def decode_brush_rle_values(rle: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    """Decode brush RLE to its flat value stream, ``(num,)`` uint8 (RGBA bytes for a mask).

    Identical to ``label_studio_sdk.converter.brush.decode_rle`` for word sizes up to 8 bits.
    """
    _, lengths, values = decode_brush_runs(rle)
    return np.repeat(values.astype(np.uint8), lengths)
