"""Input checks shared by the mask converters (public through :mod:`xsam_backend.masks`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xsam_backend.errors import BadRequest, PayloadTooLarge

# A decoded mask is allocated from numbers in the payload; refuse sizes no image here can have.
MAX_DECODED_PIXELS = 400_000_000


def check_mask_array(mask: Any, *, name: str = "mask") -> np.ndarray:
    """Check that ``mask`` is a non-empty ``(H, W)`` bool or integer array and return it unchanged.

    Raises :class:`BadRequest` for anything else: not an array, not 2-D, an empty side, floats.
    """
    if not isinstance(mask, np.ndarray):
        raise BadRequest(f"{name} must be a numpy array; got {type(mask).__name__}")
    if mask.ndim != 2:
        raise BadRequest(f"{name} must be 2-D (height, width); got shape {mask.shape}")
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        raise BadRequest(f"{name} must have at least one pixel; got shape {mask.shape}")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise BadRequest(f"{name} must be bool or integer (0/1 or 0/255); got dtype {mask.dtype}")
    return mask


def as_bool_mask(mask: Any, *, name: str = "mask") -> np.ndarray:
    """Check a mask and return it as an ``(H, W)`` bool array (the same array when already bool).

    ``mask``: ``(H, W)`` array of dtype ``bool`` or any integer dtype; 0/1 and 0/255 are the
    expected encodings, and any non-zero pixel counts as on. Raises :class:`BadRequest` for
    anything else (see :func:`check_mask_array`).
    """
    m = check_mask_array(mask, name=name)
    return m if m.dtype == np.bool_ else m != 0


def check_image_size(height: Any, width: Any) -> tuple[int, int]:
    """Check a decoder's ``(height, width)`` in pixels: positive ints, at most the pixel limit."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise BadRequest(f"mask {name} must be a positive integer; got {value!r:.50}")
    h, w = int(height), int(width)
    if h * w > MAX_DECODED_PIXELS:
        raise PayloadTooLarge(f"a {h}x{w} mask is over the limit of {MAX_DECODED_PIXELS} pixels")
    return h, w
