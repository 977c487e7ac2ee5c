"""Label Studio results (brush, polygon, rectangle regions) to instances in the pixel frame.

Every region of a result list carries ``original_width`` / ``original_height``: the size of the
image as the labelling view showed it, after EXIF orientation. That is the frame of the masks
here: ``(H, W)`` bool, row ``y`` from the top, and continuous vertex coordinates with the origin
at the top-left corner of the top-left pixel (see :mod:`xsam_backend.masks`).

* ``brushlabels`` with ``format: "rle"``: the brush RLE decoded exactly;
* ``polygonlabels``: ``points`` in percent, converted to pixels and rasterised by pixel centres;
* ``rectanglelabels``: ``x``, ``y``, ``width``, ``height`` in percent, turned by ``rotation``
  degrees clockwise about the top-left corner (Label Studio's convention), as a 4-vertex polygon.

Other result types (choices, key points, text) are not instances and are ignored; regions that
cannot be used are reported with a reason rather than dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xsam_backend.errors import BadRequest, PayloadTooLarge
from xsam_backend.labelstudio.config import LabelSpec, OutputKind
from xsam_backend.masks import decode_brush_rle, percent_to_polygon, rasterize_polygon

_KIND_OF_TYPE: dict[str, OutputKind] = {
    "brushlabels": "brush",
    "polygonlabels": "polygon",
    "rectanglelabels": "rectangle",
}


@dataclass(frozen=True)
class Instance:
    """One labelled object of an image.

    ``mask``: ``(H, W)`` bool, pixel frame. ``polygon``: ``(N, 2)`` float64 ``(x, y)`` continuous
    pixel coordinates for polygon and rectangle regions (as drawn, possibly reaching outside the
    image), ``None`` for brushes. ``region_id``: the region's ``id`` in the result.
    """

    label: str
    kind: OutputKind
    mask: np.ndarray
    polygon: np.ndarray | None
    region_id: str

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


@dataclass(frozen=True)
class ParsedResult:
    """The instances of one result list, the regions left out and why, and the image size.

    ``size``: ``(height, width)`` shared by every region, ``None`` when no region states one.
    ``skipped``: ``(region id, reason)`` pairs.
    """

    instances: list[Instance] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    size: tuple[int, int] | None = None


def categories_of(spec: LabelSpec) -> tuple[str, ...]:
    """The dataset's categories: the labels of the config's output controls, in the config's order
    (a label shared by several controls appears once, where it first appears)."""
    seen: dict[str, None] = {}
    for output in spec.outputs:
        for label in output.labels:
            seen.setdefault(label, None)
    return tuple(seen)


def rectangle_corners(value: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """A rectangle region's corners: ``(4, 2)`` float64 pixel ``(x, y)``, clockwise from the
    top-left corner, rotated by ``value["rotation"]`` degrees clockwise about that corner.

    ``value``: ``{"x", "y", "width", "height"}`` in percent of ``width`` x ``height`` pixels.
    """
    try:
        x = float(value["x"]) * width / 100.0
        y = float(value["y"]) * height / 100.0
        w = float(value["width"]) * width / 100.0
        h = float(value["height"]) * height / 100.0
        angle = math.radians(float(value.get("rotation") or 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(
            f"a rectangle needs numeric x, y, width and height; got {dict(value)!r:.200}"
        ) from exc
    if not all(math.isfinite(v) for v in (x, y, w, h, angle)) or w <= 0 or h <= 0:
        raise BadRequest(f"a rectangle needs a finite position and a positive size; got {dict(value)!r:.200}")
    offsets = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    # y points down, so this standard rotation matrix turns clockwise on screen.
    cos, sin = math.cos(angle), math.sin(angle)
    rotated = offsets @ np.array([[cos, sin], [-sin, cos]])
    return rotated + np.array([x, y])


def _size_of(region: Mapping[str, Any]) -> tuple[int, int] | None:
    h, w = region.get("original_height"), region.get("original_width")
    if isinstance(h, int | float) and isinstance(w, int | float) and h >= 1 and w >= 1:
        return int(round(h)), int(round(w))
    return None


def _instance(region: Mapping[str, Any], kind: OutputKind, label: str, height: int, width: int) -> Instance:
    value = region["value"]
    region_id = str(region.get("id", ""))
    if kind == "brush":
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise BadRequest(f"brush value has format {value.get('format')!r}; only 'rle' is readable")
        return Instance(label, kind, decode_brush_rle(value["rle"], height, width), None, region_id)
    if kind == "polygon":
        points = percent_to_polygon(value.get("points"), width, height)
    else:
        points = rectangle_corners(value, width, height)
    return Instance(label, kind, rasterize_polygon(points, height, width), points, region_id)


def parse_result(result: Sequence[Mapping[str, Any]], categories: Sequence[str]) -> ParsedResult:
    """Turn a result list (an annotation's or a prediction's) into instances.

    ``categories``: the labels a dataset knows (:func:`categories_of`); regions with another
    label, several labels, an unreadable value, or an image size different from the other
    regions' are skipped with a reason. Results of non-region types are ignored.
    """
    known = set(categories)
    parsed = ParsedResult()
    size: tuple[int, int] | None = None
    for region in result:
        if not isinstance(region, Mapping):
            continue
        kind = _KIND_OF_TYPE.get(str(region.get("type", "")))
        if kind is None:
            continue
        region_id = str(region.get("id", ""))
        value = region.get("value")
        labels = value.get(str(region.get("type"))) if isinstance(value, Mapping) else None
        region_size = _size_of(region)
        reason = None
        if not isinstance(labels, list) or len(labels) != 1:
            reason = f"needs exactly one label; has {labels!r:.100}"
        elif labels[0] not in known:
            reason = f"label {labels[0]!r} is not an output label of the label config"
        elif region_size is None:
            reason = "no original_width / original_height"
        elif size is not None and region_size != size:
            reason = f"image size {region_size[1]}x{region_size[0]} differs from {size[1]}x{size[0]}"
        if reason is not None:
            parsed.skipped.append((region_id, reason))
            continue
        assert region_size is not None and isinstance(labels, list)
        try:
            instance = _instance(region, kind, str(labels[0]), *region_size)
        except (BadRequest, PayloadTooLarge) as exc:
            parsed.skipped.append((region_id, exc.message))
            continue
        size = region_size
        parsed.instances.append(instance)
    return ParsedResult(parsed.instances, parsed.skipped, size)
