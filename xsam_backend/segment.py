"""What an engine returns: masks with labels and scores, in the image's pixel frame.

Masks are ``bool`` arrays of shape ``(height, width)``: the original image after EXIF orientation.
Across Redis a segment travels as JSON with its mask in compact RLE
(:func:`xsam_backend.masks.encode_compact_rle`); never as a pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xsam_backend.errors import BadRequest
from xsam_backend.masks import decode_compact_rle, encode_compact_rle


@dataclass(frozen=True, eq=False)
class Segment:
    """One predicted object or class region.

    ``mask``: ``(H, W)`` bool, original pixel frame. ``label``: the Label Studio label to give it
    (``None`` lets the renderer use the prompt's label). ``score``: confidence in ``[0, 1]``.
    ``phrase``: for grounded captions, the caption phrase this mask grounds.
    """

    mask: np.ndarray
    label: str | None
    score: float
    phrase: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mask": encode_compact_rle(self.mask),
            "label": self.label,
            "score": float(self.score),
            "phrase": self.phrase,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Segment:
        return cls(
            mask=decode_compact_rle(data["mask"]),
            label=data.get("label"),
            score=float(data.get("score", 0.0)),
            phrase=data.get("phrase"),
        )


@dataclass(frozen=True)
class EngineResult:
    """Everything an engine produced for one (image, prompt).

    ``segments`` are ordered best first. ``caption`` is the generated text of a grounded
    conversation. ``note`` says why the result is empty when it is (logged, shown in ``/predict``
    debugging), e.g. "automatic pre-labelling needs X-SAM weights".
    """

    segments: tuple[Segment, ...]
    model_version: str
    engine: str
    caption: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "segments": [s.to_json() for s in self.segments],
            "model_version": self.model_version,
            "engine": self.engine,
            "caption": self.caption,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineResult:
        if not isinstance(data, Mapping) or "segments" not in data:
            raise BadRequest(f"an engine result must be an object with 'segments'; got {data!r:.200}")
        return cls(
            segments=tuple(Segment.from_json(s) for s in data["segments"]),
            model_version=str(data.get("model_version", "")),
            engine=str(data.get("engine", "")),
            caption=data.get("caption"),
            note=data.get("note"),
        )
