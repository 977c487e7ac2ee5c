"""Label Studio task + interactive context → :class:`~xsam_backend.prompt.Prompt`.

Label Studio sends every smart region of the same type, label and image as the one just drawn
(all ± keypoints of a label, or one rectangle). Coordinates arrive in **percent** (0-100) of
``original_width`` / ``original_height`` (the EXIF-transposed natural size the browser shows);
prompts carry **pixels** of that frame: ``x_px = x_pct * original_width / 100``.

Rules:

* no context, or a context without regions: automatic pre-labelling, :attr:`Task.GENERIC` with the
  config's class names;
* smart keypoints: the positive ones form one region (one object), the negative ones (``is_positive``
  false) must stay outside the mask; a keypoint without ``is_positive`` counts as positive;
* a smart rectangle: a box (a rotated one becomes its axis-aligned bounding box);
* a brush region: a scribble;
* a TextArea region: referring, reasoning or caption text, by the control's role;
* on a ``similar*`` control every region is its own example of the thing to find;
* regions of controls the backend does not read as prompts are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from xsam_backend.errors import PayloadTooLarge, PromptError
from xsam_backend.labelstudio.config import LabelSpec, PromptControl
from xsam_backend.masks import decode_brush_rle, encode_compact_rle
from xsam_backend.prompt import Prompt, Task, VisualRegion

_TEXT_TASKS = {"referring": Task.REFERRING, "reasoning": Task.REASONING, "caption": Task.CAPTION}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PromptError(f"{what} must be a finite number; got {value!r}")
    return float(value)


def _image_size(region: Mapping[str, Any]) -> tuple[int, int]:
    """``(height, width)`` from a region's ``original_height`` / ``original_width``."""
    width, height = region.get("original_width"), region.get("original_height")
    if not isinstance(width, int) or not isinstance(height, int) or isinstance(width, bool) or width <= 0 or height <= 0:
        raise PromptError(
            "a smart region needs positive integer original_width and original_height; "
            f"got original_width={width!r}, original_height={height!r}"
        )
    return height, width


def _label(region: Mapping[str, Any], control: PromptControl) -> str | None:
    value = region.get("value") or {}
    for key in (str(region.get("type", "")), "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return control.labels[0] if control.labels else None


def _point(region: Mapping[str, Any], size: tuple[int, int]) -> tuple[float, float]:
    value = region["value"]
    height, width = size
    x = _number(value.get("x"), "keypoint value.x") * width / 100.0
    y = _number(value.get("y"), "keypoint value.y") * height / 100.0
    return x, y


def _box(region: Mapping[str, Any], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Pixel ``(x_min, y_min, x_max, y_max)``; a rotation (degrees, about the top-left corner) is
    replaced by the axis-aligned bounding box of the rotated rectangle."""
    value = region["value"]
    height, width = size
    x = _number(value.get("x"), "rectangle value.x") * width / 100.0
    y = _number(value.get("y"), "rectangle value.y") * height / 100.0
    w = _number(value.get("width"), "rectangle value.width") * width / 100.0
    h = _number(value.get("height"), "rectangle value.height") * height / 100.0
    if w <= 0 or h <= 0:
        raise PromptError(f"a smart rectangle needs a positive width and height; got {w:.1f}x{h:.1f} px")
    angle = math.radians(_number(value.get("rotation", 0) or 0, "rectangle value.rotation"))
    if angle == 0:
        return x, y, x + w, y + h
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _scribble(region: Mapping[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    value = region["value"]
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        raise PromptError("a brush scribble needs value.format 'rle' and a non-empty value.rle list")
    height, width = size
    mask = decode_brush_rle(rle, height, width)
    if not mask.any():
        raise PromptError("the brush scribble is empty")
    return encode_compact_rle(mask)


def _text(region: Mapping[str, Any]) -> str:
    text = (region.get("value") or {}).get("text")
    if isinstance(text, list):
        text = " ".join(t for t in text if isinstance(t, str))
    if not isinstance(text, str) or not text.strip():
        raise PromptError("a text prompt region needs value.text with a non-empty string")
    return text.strip()


def build_prompt(spec: LabelSpec, context: Mapping[str, Any] | None, *, max_regions: int) -> Prompt:
    """The prompt a ``/predict`` call asks for.

    ``context`` is ``params.context`` of the request (``None`` for automatic predictions).
    Raises :class:`PromptError` for a context without a usable prompt, :class:`PayloadTooLarge`
    past ``max_regions`` smart regions.
    """
    results = (context or {}).get("result") if isinstance(context, Mapping) else None
    if context is not None and not isinstance(context, Mapping):
        raise PromptError(f"params.context must be an object or null; got {type(context).__name__}")
    if not results:
        return Prompt(task=Task.GENERIC, classes=tuple(name for name, _ in spec.class_names), label=None)
    if not isinstance(results, Sequence) or isinstance(results, str):
        raise PromptError(f"params.context.result must be a list of regions; got {type(results).__name__}")
    if len(results) > max_regions:
        raise PayloadTooLarge(f"the context has {len(results)} regions; at most {max_regions} are accepted")

    positives: list[float] = []
    negatives: list[tuple[float, float]] = []
    regions: list[VisualRegion] = []
    texts: list[tuple[PromptControl, str]] = []
    similar = False
    label: str | None = None
    size: tuple[int, int] | None = None
    ignored: list[str] = []
    for index, region in enumerate(results):
        if not isinstance(region, Mapping) or not isinstance(region.get("value"), Mapping):
            raise PromptError(f"context region {index} must be an object with a 'value' object")
        control = spec.prompt_control(str(region.get("from_name")))
        if control is None:
            ignored.append(str(region.get("from_name")))
            continue
        if control.kind == "text":
            texts.append((control, _text(region)))
            continue
        region_size = _image_size(region)
        if size is not None and region_size != size:
            raise PromptError(f"context regions disagree on the image size: {size} vs {region_size} (height, width)")
        size = region_size
        label = label or _label(region, control)
        similar = similar or control.role == "similar"
        if control.kind == "keypoint":
            point = _point(region, size)
            if region.get("is_positive", True) is False:
                negatives.append(point)
            elif control.role == "similar":
                regions.append(VisualRegion("point", point))
            else:
                positives.extend(point)
        elif control.kind == "rectangle":
            regions.append(VisualRegion("box", _box(region, size)))
        else:
            regions.append(VisualRegion("scribble", mask=_scribble(region, size)))
    if positives:
        regions.insert(0, VisualRegion("point", tuple(positives)))

    if texts and not regions:
        control, text = texts[0]
        return Prompt(task=_TEXT_TASKS[control.role], text=text, label=spec.default_label, image_size=size)
    if not regions:
        hint = f" (regions from {sorted(set(ignored))} are not prompt controls)" if ignored else ""
        raise PromptError(
            "the context holds no usable prompt: expected a positive smart keypoint, a smart rectangle, "
            f"a brush scribble or a text region{hint}"
        )
    return Prompt(
        task=Task.SIMILAR if similar else Task.INTERACTIVE,
        regions=tuple(regions),
        negative_points=tuple(negatives),
        label=label,
        image_size=size,
    )
