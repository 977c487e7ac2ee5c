"""Engine result → Label Studio prediction JSON (brush RLE, polygons, boxes), validated.

Each segment is written into the output control that holds its label (brush before polygon before
rectangle when several do): ``BrushLabels`` get Label Studio's brush RLE (alpha 255),
``PolygonLabels`` one region per part (percent points; parts whose holes the polygon policy cannot
drop honestly go to a brush control with the same label when the config has one), and
``RectangleLabels`` the tight box in percent. Coordinates are percent of the original image
(after EXIF orientation), whose size is the masks' ``(H, W)``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np

from xsam_backend.errors import BackendError, BadRequest
from xsam_backend.labelstudio.config import LabelSpec, OutputControl
from xsam_backend.masks import (
    HolePolicy,
    box_to_percent,
    brush_rle_num_values,
    encode_brush_rle,
    mask_to_box,
    mask_to_polygons,
    polygon_to_percent,
)
from xsam_backend.prompt import Prompt
from xsam_backend.segment import EngineResult, Segment

log = logging.getLogger(__name__)


def _region_id() -> str:
    return uuid.uuid4().hex[:10]


def _base(control: OutputControl, height: int, width: int, score: float) -> dict[str, Any]:
    return {
        "id": _region_id(),
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "score": round(float(score), 4),
        "readonly": False,
    }


def _brush(control: OutputControl, mask: np.ndarray, label: str, score: float) -> dict[str, Any]:
    height, width = mask.shape
    region = _base(control, height, width, score)
    region["value"] = {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]}
    return region


def _rectangle(control: OutputControl, mask: np.ndarray, label: str, score: float) -> dict[str, Any] | None:
    height, width = mask.shape
    box = mask_to_box(mask)
    if box is None:
        return None
    region = _base(control, height, width, score)
    region["value"] = {**box_to_percent(box, width, height), "rotation": 0, "rectanglelabels": [label]}
    return region


def _polygons(
    spec: LabelSpec, control: OutputControl, mask: np.ndarray, label: str, score: float, tolerance_px: float, min_area_px: int
) -> list[dict[str, Any]]:
    """One polygon region per part. A part with holes too large to fill honestly goes to a brush
    control with the same label when the config has one; without one, its outer ring is kept."""
    height, width = mask.shape
    brush = spec.output_of_kind("brush", label)
    policy = HolePolicy(large_hole="brush" if brush is not None else "fill")
    polygon_set = mask_to_polygons(mask, tolerance_px=tolerance_px, min_area_px=min_area_px, hole_policy=policy)
    regions = []
    for points in polygon_set.polygons:
        region = _base(control, height, width, score)
        region["value"] = {"points": polygon_to_percent(points, width, height), "closed": True, "polygonlabels": [label]}
        regions.append(region)
    if brush is not None:
        regions.extend(_brush(brush, part, label, score) for part in polygon_set.fallback_masks)
    return regions


def render_segment(
    spec: LabelSpec, segment: Segment, label: str, *, tolerance_px: float = 1.0, min_area_px: int = 16
) -> list[dict[str, Any]]:
    """Regions for one segment, in the output control that holds ``label`` (none if no control does)."""
    control = spec.output_for_label(label)
    if control is None or not segment.mask.any():
        return []
    if control.kind == "brush":
        return [_brush(control, segment.mask, label, segment.score)]
    if control.kind == "rectangle":
        region = _rectangle(control, segment.mask, label, segment.score)
        return [region] if region else []
    return _polygons(spec, control, segment.mask, label, segment.score, tolerance_px, min_area_px)


def render_prediction(
    spec: LabelSpec,
    result: EngineResult,
    prompt: Prompt,
    *,
    tolerance_px: float = 1.0,
    min_area_px: int = 16,
) -> dict[str, Any]:
    """One Label Studio prediction ``{"result": [...], "score", "model_version"}`` for a task.

    Segment labels are model class names for automatic pre-labelling (mapped to output labels
    through ``predicted_values``), else the prompt's label, else the config's first label. The
    prediction's ``score`` is the mean of its regions' scores (0 for an empty result). Raises
    :class:`BackendError` if the result does not validate against the label config.
    """
    label_of_class = dict(spec.class_names)
    regions: list[dict[str, Any]] = []
    scores: list[float] = []
    for segment in result.segments:
        name = segment.label or prompt.label or spec.default_label
        label = label_of_class.get(name, name)
        rendered = render_segment(spec, segment, label, tolerance_px=tolerance_px, min_area_px=min_area_px)
        if segment.phrase:
            for region in rendered:
                region["meta"] = {"text": [segment.phrase]}
        if rendered:
            scores.append(float(segment.score))
        elif segment.mask.any():
            log.warning("no output control holds label %r; segment dropped", label)
        regions.extend(rendered)
    caption_control = next((p for p in spec.prompts if p.role == "caption"), None)
    if result.caption and caption_control is not None:
        regions.append(
            {
                "id": _region_id(),
                "from_name": caption_control.name,
                "to_name": caption_control.to_name,
                "type": "textarea",
                "value": {"text": [result.caption]},
            }
        )
    prediction = {
        "result": regions,
        "score": round(sum(scores) / len(scores), 4) if scores else 0.0,
        "model_version": result.model_version,
    }
    _validate(spec, prediction)
    return prediction


def _validate(spec: LabelSpec, prediction: dict[str, Any]) -> None:
    """The SDK's ``validate_prediction`` plus what it does not check: each brush RLE's header.

    The SDK walks every RLE byte in Python; it sees a one-byte stand-in instead, and the RLE is
    checked here (its value count must be ``W * H * 4``, the RGBA buffer Label Studio decodes).
    """
    light = {**prediction, "result": []}
    for region in prediction["result"]:
        value = region["value"]
        if "rle" in value:
            expected = 4 * region["original_width"] * region["original_height"]
            try:
                found = brush_rle_num_values(value["rle"])
            except BadRequest as exc:
                raise BackendError(f"brush region {region['id']}: malformed RLE header: {exc.message}") from None
            if found != expected:
                raise BackendError(f"brush region {region['id']}: RLE header says {found} values, not {expected}")
            region = {**region, "value": {**value, "rle": [0]}}
        light["result"].append(region)
    errors = spec.interface.validate_prediction(light, return_errors=True)
    if errors:
        raise BackendError(f"the rendered prediction does not match the label config: {errors[:3]}")
