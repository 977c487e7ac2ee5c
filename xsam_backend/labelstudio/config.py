"""Label config → what the backend reads (prompt controls) and writes (output controls).

Conventions (also in ``label_config/README.md``):

* one ``<Image>`` object; every control used by the backend points at it;
* **output controls** receive masks: ``BrushLabels`` (brush RLE), ``PolygonLabels`` (polygons),
  ``RectangleLabels`` without ``smart="true"`` (tight boxes);
* **prompt controls**: ``KeyPointLabels smart="true"`` (± clicks), ``RectangleLabels
  smart="true"`` (a box), ``BrushLabels`` named ``scribble*`` (a scribble; other brush regions
  in a context are scribbles too), ``TextArea`` (a phrase: ``referring`` by default, a name
  containing ``reason`` for reasoning questions, ``caption`` for grounded captions);
* a prompt control whose name starts with ``similar`` asks for "find all similar" (visual
  grounded segmentation) instead of one object;
* a smart region's label names the output label; it must exist in an output control;
* ``<Label value="Vehicle" predicted_values="car,truck"/>`` lets the model look for "car" and
  "truck" and write "Vehicle" (automatic pre-labelling).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from label_studio_sdk.label_interface import LabelInterface

from xsam_backend.errors import LabelConfigError

OutputKind = Literal["brush", "polygon", "rectangle"]
PromptKind = Literal["keypoint", "rectangle", "brush", "text"]
PromptRole = Literal["interactive", "similar", "referring", "reasoning", "caption"]

_OUTPUT_TYPES: dict[OutputKind, str] = {"brush": "brushlabels", "polygon": "polygonlabels", "rectangle": "rectanglelabels"}
_OUTPUT_PRIORITY: dict[OutputKind, int] = {"brush": 0, "polygon": 1, "rectangle": 2}


@dataclass(frozen=True)
class OutputControl:
    """A control the backend writes regions into."""

    name: str
    kind: OutputKind
    to_name: str
    labels: tuple[str, ...]

    @property
    def result_type(self) -> str:
        """The region ``type`` Label Studio expects (``brushlabels``, ...)."""
        return _OUTPUT_TYPES[self.kind]


@dataclass(frozen=True)
class PromptControl:
    """A control whose regions (sent in the interactive context) are prompts."""

    name: str
    kind: PromptKind
    role: PromptRole
    to_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelSpec:
    """What a label config means to the backend.

    ``image_key``: the task data key of the image (``"image"`` for ``value="$image"``).
    ``class_names``: ``(model class name, output label)`` pairs for automatic pre-labelling, in the
    config's order (``predicted_values`` expanded).
    """

    image_name: str
    image_key: str
    outputs: tuple[OutputControl, ...]
    prompts: tuple[PromptControl, ...]
    class_names: tuple[tuple[str, str], ...]
    config: str

    def prompt_control(self, name: str) -> PromptControl | None:
        return next((p for p in self.prompts if p.name == name), None)

    def output_for_label(self, label: str) -> OutputControl | None:
        """The output control that writes ``label``: brush before polygon before rectangle."""
        candidates = [o for o in self.outputs if label in o.labels]
        return min(candidates, key=lambda o: _OUTPUT_PRIORITY[o.kind]) if candidates else None

    def output_of_kind(self, kind: OutputKind, label: str) -> OutputControl | None:
        return next((o for o in self.outputs if o.kind == kind and label in o.labels), None)

    @property
    def default_label(self) -> str:
        """The label given to text-prompted masks: the first label of the first output control."""
        return self.outputs[0].labels[0]

    @property
    def interface(self) -> LabelInterface:
        """The SDK's view of the same config (validation of predictions)."""
        return _interface(self.config)


def _flag(value: object) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def _role(name: str, kind: PromptKind) -> PromptRole:
    lowered = name.lower()
    if lowered.startswith("similar"):
        return "similar"
    if kind != "text":
        return "interactive"
    if "caption" in lowered or "gcg" in lowered:
        return "caption"
    if "reason" in lowered:
        return "reasoning"
    return "referring"


def _parse(config: str) -> LabelSpec:
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the label config is empty; expected Label Studio XML with an <Image> tag")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises a mix of lxml, ValueError and its own errors
        raise LabelConfigError(f"the label config is not valid Label Studio XML: {exc}") from None

    images = [o for o in interface.objects if o.tag == "Image"]
    if not images:
        found = sorted({o.tag for o in interface.objects}) or ["none"]
        raise LabelConfigError(f"the label config needs an <Image> object; found objects: {', '.join(found)}")
    if len(images) > 1:
        raise LabelConfigError(
            f"the label config has {len(images)} <Image> objects ({', '.join(i.name for i in images)}); "
            "the backend segments one image per task"
        )
    image = images[0]
    value = str(image.value or "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f'<Image name="{image.name}"> needs value="$<data key>"; got value="{value}"')

    outputs: list[OutputControl] = []
    prompts: list[PromptControl] = []
    for control in interface.controls:
        if image.name not in control.to_name:
            continue
        labels = tuple(control.labels or ())
        smart = _flag(control.attr.get("smart"))
        tag = control.tag
        if tag == "KeyPointLabels":
            if smart:
                prompts.append(PromptControl(control.name, "keypoint", _role(control.name, "keypoint"), image.name, labels))
        elif tag == "RectangleLabels":
            if smart:
                prompts.append(PromptControl(control.name, "rectangle", _role(control.name, "rectangle"), image.name, labels))
            else:
                outputs.append(OutputControl(control.name, "rectangle", image.name, labels))
        elif tag == "BrushLabels":
            if control.name.lower().startswith(("scribble", "similar")):
                prompts.append(PromptControl(control.name, "brush", _role(control.name, "brush"), image.name, labels))
            else:
                outputs.append(OutputControl(control.name, "brush", image.name, labels))
                prompts.append(PromptControl(control.name, "brush", "interactive", image.name, labels))
        elif tag == "PolygonLabels":
            outputs.append(OutputControl(control.name, "polygon", image.name, labels))
        elif tag == "TextArea":
            prompts.append(PromptControl(control.name, "text", _role(control.name, "text"), image.name, ()))

    if not outputs:
        raise LabelConfigError(
            f'the label config has no control the backend can write masks into for <Image name="{image.name}">: '
            "expected a BrushLabels, PolygonLabels or (non-smart) RectangleLabels with toName pointing at it"
        )
    empty = [o.name for o in outputs if not o.labels]
    if empty:
        raise LabelConfigError(f"output controls without <Label> children: {', '.join(empty)}")
    output_labels = {label for o in outputs for label in o.labels}
    for prompt in prompts:
        missing = [label for label in prompt.labels if label not in output_labels]
        if missing:
            raise LabelConfigError(
                f"prompt control '{prompt.name}' has labels {missing} that no output control has; "
                f"output labels are {sorted(output_labels)}"
            )

    # A label's model class names: its predicted_values (from any control), else the label itself.
    predicted: dict[str, list[str]] = {}
    for output in outputs:
        control = interface.get_control(output.name)
        for label in output.labels:
            tag_attrs = control.labels_attrs.get(label)
            raw = str(tag_attrs.attr.get("predicted_values", "")) if tag_attrs is not None else ""
            names = predicted.setdefault(label, [])
            names.extend(n.strip() for n in raw.split(",") if n.strip() and n.strip() not in names)
    class_names: list[tuple[str, str]] = []
    seen: set[str] = set()
    for label, names in predicted.items():
        for name in names or [label]:
            if name not in seen:
                seen.add(name)
                class_names.append((name, label))

    return LabelSpec(
        image_name=image.name,
        image_key=value[1:],
        outputs=tuple(outputs),
        prompts=tuple(prompts),
        class_names=tuple(class_names),
        config=config,
    )


class _SpecCache:
    """A small LRU of parsed configs: Label Studio resends the config with every request."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, LabelSpec | LabelConfigError] = OrderedDict()
        self._interfaces: OrderedDict[str, LabelInterface] = OrderedDict()
        self._lock = threading.Lock()

    def spec(self, config: str) -> LabelSpec:
        key = hashlib.sha256(config.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                cached = self._items[key]
                if isinstance(cached, LabelConfigError):
                    raise LabelConfigError(cached.message)
                return cached
        try:
            parsed: LabelSpec | LabelConfigError = _parse(config)
        except LabelConfigError as exc:
            parsed = exc
        with self._lock:
            self._items[key] = parsed
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        if isinstance(parsed, LabelConfigError):
            raise LabelConfigError(parsed.message)
        return parsed

    def interface(self, config: str) -> LabelInterface:
        key = hashlib.sha256(config.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            if key in self._interfaces:
                self._interfaces.move_to_end(key)
                return self._interfaces[key]
        interface = LabelInterface(config)
        with self._lock:
            self._interfaces[key] = interface
            while len(self._interfaces) > self._capacity:
                self._interfaces.popitem(last=False)
        return interface


_CACHE = _SpecCache()


def _interface(config: str) -> LabelInterface:
    return _CACHE.interface(config)


def parse_label_config(config: str) -> LabelSpec:
    """Parse a Label Studio label config (XML) into a :class:`LabelSpec`.

    Raises :class:`LabelConfigError` with the reason when the backend cannot serve the config.
    Results are cached by the config's hash (Label Studio resends it with every request).
    """
    if not isinstance(config, str):
        raise LabelConfigError(f"the label config must be a string of XML; got {type(config).__name__}")
    return _CACHE.spec(config)
