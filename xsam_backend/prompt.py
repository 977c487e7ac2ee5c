"""What the annotator asked for, in the image's pixel frame: the contract between web and worker.

A :class:`Prompt` is built by the Label Studio edge (``labelstudio/context.py``) from a task and
its smart regions, crosses Redis as JSON (:meth:`Prompt.to_json` / :meth:`Prompt.from_json`) and
is consumed by an engine. All coordinates are **pixels of the original image after EXIF
orientation** (the frame Label Studio's percentages refer to), x to the right, y down, origin at
the top-left corner of the top-left pixel. Masks inside a prompt are compact RLE dicts
(``xsam_backend.masks.encode_compact_rle``) of shape ``(height, width)``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from xsam_backend.errors import PromptError


class Task(enum.StrEnum):
    """The X-SAM task a prompt asks for."""

    INTERACTIVE = "interactive"  # points / box / scribble -> one mask with the prompt's label
    SIMILAR = "similar"  # visual grounded: every instance similar to the given regions
    GENERIC = "generic"  # automatic: one region per instance/class of ``classes``
    REFERRING = "referring"  # a phrase -> one mask
    REASONING = "reasoning"  # a question -> one mask
    CAPTION = "caption"  # grounded conversation: caption text + a mask per phrase


RegionKind = Literal["point", "box", "scribble"]
SegmentationMode = Literal["panoptic", "instance", "semantic"]


@dataclass(frozen=True)
class VisualRegion:
    """One visual prompt region, in pixels of the original image.

    * ``point``: ``coords = (x0, y0, x1, y1, ...)``, one or more positive clicks that together
      describe one object;
    * ``box``: ``coords = (x_min, y_min, x_max, y_max)``;
    * ``scribble``: ``coords = ()`` and ``mask`` a compact RLE dict of the stroke, ``(H, W)``.
    """

    kind: RegionKind
    coords: tuple[float, ...] = ()
    mask: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind == "point" and (len(self.coords) < 2 or len(self.coords) % 2):
            raise PromptError(f"a point region needs x, y pairs; got {len(self.coords)} numbers")
        if self.kind == "box" and len(self.coords) != 4:
            raise PromptError(f"a box region needs 4 numbers (x_min, y_min, x_max, y_max); got {len(self.coords)}")
        if self.kind == "scribble" and self.mask is None:
            raise PromptError("a scribble region needs a mask")
        if not all(math.isfinite(c) for c in self.coords):
            raise PromptError(f"region coordinates must be finite numbers; got {self.coords}")

    @property
    def points(self) -> list[tuple[float, float]]:
        """``coords`` as ``[(x, y), ...]`` pairs (pixels)."""
        return [(self.coords[i], self.coords[i + 1]) for i in range(0, len(self.coords), 2)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "coords": list(self.coords)}
        if self.mask is not None:
            out["mask"] = dict(self.mask)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VisualRegion:
        kind = data.get("kind")
        if kind not in ("point", "box", "scribble"):
            raise PromptError(f"region kind must be point, box or scribble; got {kind!r}")
        coords = data.get("coords", [])
        if not isinstance(coords, list) or not all(isinstance(c, int | float) for c in coords):
            raise PromptError(f"region coords must be a list of numbers; got {coords!r}")
        mask = data.get("mask")
        if mask is not None and not isinstance(mask, Mapping):
            raise PromptError(f"region mask must be a compact RLE object; got {type(mask).__name__}")
        return cls(kind=kind, coords=tuple(float(c) for c in coords), mask=mask)


@dataclass(frozen=True)
class Prompt:
    """A request to segment one image.

    ``image_size`` is ``(height, width)`` of the original image after EXIF orientation, as Label
    Studio reports it (``original_height``, ``original_width``), or ``None`` when the task had no
    region to tell it (automatic pre-labelling).

    ``label`` is the output label for single-object tasks; ``classes`` the class names for
    :attr:`Task.GENERIC`; ``text`` the phrase, question or caption request;
    ``negative_points`` the clicks that must stay outside the mask (``[(x, y), ...]``, pixels).
    """

    task: Task
    regions: tuple[VisualRegion, ...] = ()
    negative_points: tuple[tuple[float, float], ...] = ()
    text: str | None = None
    classes: tuple[str, ...] = ()
    label: str | None = None
    image_size: tuple[int, int] | None = None
    mode: SegmentationMode = "panoptic"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task in (Task.INTERACTIVE, Task.SIMILAR) and not self.regions:
            raise PromptError(f"a {self.task.value} prompt needs at least one point, box or scribble")
        if self.task in (Task.REFERRING, Task.REASONING, Task.CAPTION) and not (self.text or "").strip():
            raise PromptError(f"a {self.task.value} prompt needs text")
        if self.task is Task.GENERIC and not self.classes:
            raise PromptError("a generic prompt needs at least one class name")

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (what crosses Redis)."""
        return {
            "task": self.task.value,
            "regions": [r.to_json() for r in self.regions],
            "negative_points": [list(p) for p in self.negative_points],
            "text": self.text,
            "classes": list(self.classes),
            "label": self.label,
            "image_size": list(self.image_size) if self.image_size else None,
            "mode": self.mode,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prompt:
        """Inverse of :meth:`to_json`; raises :class:`PromptError` naming the bad field."""
        if not isinstance(data, Mapping):
            raise PromptError(f"a prompt must be a JSON object; got {type(data).__name__}")
        try:
            task = Task(str(data.get("task")))
        except ValueError:
            raise PromptError(
                f"prompt task must be one of {[t.value for t in Task]}; got {data.get('task')!r}"
            ) from None
        size = data.get("image_size")
        mode = data.get("mode", "panoptic")
        if mode not in ("panoptic", "instance", "semantic"):
            raise PromptError(f"mode must be panoptic, instance or semantic; got {mode!r}")
        return cls(
            task=task,
            regions=tuple(VisualRegion.from_json(r) for r in data.get("regions") or []),
            negative_points=tuple((float(p[0]), float(p[1])) for p in data.get("negative_points") or []),
            text=data.get("text"),
            classes=tuple(str(c) for c in data.get("classes") or []),
            label=data.get("label"),
            image_size=(int(size[0]), int(size[1])) if size else None,
            mode=mode,
            extra=dict(data.get("extra") or {}),
        )
