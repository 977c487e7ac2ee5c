"""The weight-free engine: one object from points, a box or a scribble, with OpenCV only.

It serves when no X-SAM weights are installed, so that interactive labelling works out of the box.
It answers :attr:`Task.INTERACTIVE` prompts with one mask (see :mod:`.fallback_grabcut` for how,
and what the score means) and refuses every task that needs the model with
:class:`~xsam_backend.errors.NeedsWeights`.

Prompt geometry is checked here, in the image's pixel frame (x right, y down, origin at the
top-left corner of the top-left pixel): a click at ``x`` lands in pixel column ``floor(x)``, and a
click on the image's right or bottom edge (``x == W``) in the last column or row. Clicks outside the
image are errors; a box reaching outside the image is clipped to it.
"""

from __future__ import annotations

import math

import numpy as np

from xsam_backend.engines.factory import FALLBACK_VERSION
from xsam_backend.engines.fallback_grabcut import ObjectSeeds, segment_object
from xsam_backend.errors import MediaError, NeedsWeights, PromptError
from xsam_backend.masks import decode_compact_rle
from xsam_backend.prompt import Prompt, Task
from xsam_backend.segment import EngineResult, Segment

_NEEDS_MODEL: dict[Task, str] = {
    Task.SIMILAR: '"find all similar" (visual grounded segmentation)',
    Task.GENERIC: "automatic pre-labelling (generic segmentation)",
    Task.REFERRING: "segmenting an object named by a phrase (referring segmentation)",
    Task.REASONING: "segmenting the answer to a question (reasoning segmentation)",
    Task.CAPTION: "grounded captions (grounded conversation generation)",
}


class FallbackEngine:
    """Interactive segmentation without a model: GrabCut seeded from the annotator's prompt.

    Stateless and cheap to build; safe to call from several threads at once.
    """

    @property
    def name(self) -> str:
        """``"fallback"``."""
        return "fallback"

    @property
    def model_version(self) -> str:
        """:data:`xsam_backend.engines.factory.FALLBACK_VERSION`."""
        return FALLBACK_VERSION

    def supports(self, task: Task) -> bool:
        """Only :attr:`Task.INTERACTIVE` (points, a box, scribbles)."""
        return task is Task.INTERACTIVE

    def predict(self, image: np.ndarray, prompt: Prompt, project: str | None = None) -> EngineResult:
        """Segment the one object ``prompt`` points at.

        ``image``: ``(H, W, 3)`` uint8 RGB, the frame of the prompt's pixel coordinates. Returns one
        :class:`Segment` (``(H, W)`` bool mask, ``prompt.label``, score in ``[0, 1]``), or none with
        a note when a box holds nothing that stands out from its surroundings. The mask holds
        every positive click and stroke and no negative click, and stays inside the box.

        Raises :class:`NeedsWeights` for every task but :attr:`Task.INTERACTIVE`,
        :class:`PromptError` for clicks outside the image, a box wholly outside it, more than one
        box, a click both positive and negative or outside the box, or a scribble of another size
        or with no pixel set, and :class:`MediaError` for an image of the wrong shape or dtype.
        """
        if not self.supports(prompt.task):
            raise NeedsWeights(
                f"{_NEEDS_MODEL[prompt.task]} needs the X-SAM model: put converted X-SAM weights in "
                "model_weights/ (see model_weights/README.md). Without them the backend runs the "
                "weight-free fallback engine, which segments one object from positive/negative points, "
                "a box or a scribble."
            )
        _check_image(image)
        mask, score = segment_object(image, seeds_from_prompt(prompt, (image.shape[0], image.shape[1])))
        if not mask.any():
            return EngineResult(
                segments=(),
                model_version=self.model_version,
                engine=self.name,
                note="the fallback engine found nothing in the box that stands out from its surroundings",
            )
        segment = Segment(mask=mask, label=prompt.label, score=score)
        return EngineResult(segments=(segment,), model_version=self.model_version, engine=self.name)


def seeds_from_prompt(prompt: Prompt, shape: tuple[int, int]) -> ObjectSeeds:
    """Turn an interactive prompt (pixel coordinates) into pixel seeds for an ``(H, W)`` image.

    Every point region's clicks are positive clicks of the one object; ``prompt.negative_points``
    are negative; scribbles are unioned; at most one box, clipped to the image. Strokes are
    clipped to the box, and lose the pixels of negative clicks. Raises :class:`PromptError` as
    :meth:`FallbackEngine.predict` documents.
    """
    height, width = shape
    positive: list[tuple[int, int]] = []
    boxes: list[tuple[int, int, int, int]] = []
    strokes: np.ndarray | None = None
    for region in prompt.regions:
        if region.kind == "point":
            positive.extend(_pixel_of(x, y, shape) for x, y in region.points)
        elif region.kind == "box":
            boxes.append(_clip_box(region.coords, shape))
        else:
            if region.mask is None:
                raise PromptError("a scribble region needs a mask")
            stroke = decode_compact_rle(region.mask)
            if stroke.shape != (height, width):
                raise PromptError(
                    f"the scribble mask is {stroke.shape[1]}x{stroke.shape[0]} pixels (width x height) but "
                    f"the image is {width}x{height}"
                )
            strokes = stroke if strokes is None else strokes | stroke
    negative = [_pixel_of(x, y, shape) for x, y in prompt.negative_points]
    if len(boxes) > 1:
        raise PromptError(
            f"the fallback engine segments one object from at most one box; got {len(boxes)} boxes"
        )
    box = boxes[0] if boxes else None
    _check_consistent(positive, negative, box)
    if box is not None and strokes is not None:
        x0, y0, x1, y1 = box
        inside = np.zeros_like(strokes)
        inside[y0:y1, x0:x1] = True
        strokes = strokes & inside
    if strokes is not None:
        for col, row in negative:
            strokes[row, col] = False
        if not strokes.any():
            raise PromptError("the scribble has no pixel set (inside the box and away from negative clicks)")
    return ObjectSeeds(
        positive=np.array(positive, dtype=np.int64).reshape(-1, 2),
        negative=np.array(negative, dtype=np.int64).reshape(-1, 2),
        strokes=strokes,
        box=box,
    )


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        described = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise MediaError(f"the image must be an (H, W, 3) uint8 RGB array; got a {described}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise MediaError(f"the image is empty ({image.shape[1]}x{image.shape[0]} pixels)")


def _pixel_of(x: float, y: float, shape: tuple[int, int]) -> tuple[int, int]:
    """The ``(col, row)`` pixel a click at ``(x, y)`` (pixels) lands in; edges count as inside."""
    height, width = shape
    if not (0.0 <= x <= width and 0.0 <= y <= height):
        raise PromptError(
            f"point ({x:g}, {y:g}) lies outside the {width}x{height} image (width x height); "
            f"x must be in [0, {width}] and y in [0, {height}] pixels"
        )
    return min(int(math.floor(x)), width - 1), min(int(math.floor(y)), height - 1)


def _clip_box(coords: tuple[float, ...], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x_min, y_min, x_max, y_max)`` pixels -> half-open pixel bounds, clipped, at least 1x1."""
    height, width = shape
    x_min, x_max = sorted((coords[0], coords[2]))
    y_min, y_max = sorted((coords[1], coords[3]))
    if x_max < 0 or y_max < 0 or x_min > width or y_min > height:
        raise PromptError(
            f"box ({x_min:g}, {y_min:g}, {x_max:g}, {y_max:g}) lies wholly outside the {width}x{height} image "
            "(width x height)"
        )
    x0 = min(max(int(math.floor(x_min)), 0), width - 1)
    y0 = min(max(int(math.floor(y_min)), 0), height - 1)
    x1 = min(max(int(math.ceil(x_max)), x0 + 1), width)
    y1 = min(max(int(math.ceil(y_max)), y0 + 1), height)
    return x0, y0, x1, y1


def _check_consistent(
    positive: list[tuple[int, int]], negative: list[tuple[int, int]], box: tuple[int, int, int, int] | None
) -> None:
    both = set(positive) & set(negative)
    if both:
        col, row = min(both)
        raise PromptError(f"pixel ({col}, {row}) holds both a positive and a negative click")
    if box is not None:
        x0, y0, x1, y1 = box
        for col, row in positive:
            if not (x0 <= col < x1 and y0 <= row < y1):
                raise PromptError(
                    f"positive click at pixel ({col}, {row}) lies outside the box [{x0}, {x1}) x [{y0}, {y1})"
                )
