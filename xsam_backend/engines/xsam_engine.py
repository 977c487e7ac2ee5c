"""The X-SAM engine: Label Studio prompts to X-SAM tasks, with per-image caching.

Task mapping (``xsam_backend.prompt.Task`` → X-SAM):

* ``INTERACTIVE`` → ``intseg``: the prompt's regions (clicks, box, scribble) are rasterised with
  the official radii and united into **one** prompt mask (Label Studio resends every smart point
  of the label, so the positive points accumulate into one prompt);
* ``SIMILAR`` → ``vgdseg``: one ``<region>`` per prompt region; every instance above the score
  threshold is returned with the prompt's label;
* ``GENERIC`` → ``genseg`` (open vocabulary when the names are new: the same call) with
  ``prompt.classes`` and ``prompt.mode`` (panoptic, instance or semantic);
* ``REFERRING`` → ``refseg``; ``REASONING`` → ``reaseg`` (long-question template);
* ``CAPTION`` → ``gcgseg`` by greedy generation: the caption and one mask per grounded phrase.

Negative points. X-SAM has no notion of a negative click. With negative points the engine
scores the queries as the official instance post-processing does and returns the best-scoring
candidate mask that covers every positive point and contains no negative point; failing that,
the best-scoring one that contains no negative point; failing that, the official choice (the
mask whose box best matches the prompt's box), with a note. Without negative points the result
is the official ``intseg`` choice. Queries are visited in decreasing class probability (an upper
bound of the score) and the search stops once no remaining one can beat the best covering mask,
so most masks are never resized to the image and memory stays bounded.

Scores: interactive, similar, generic instance and panoptic segments carry the official scores;
referring segments the phrase probability of their query (one segment per ``<SEG>``); a semantic
segment the mean, over its pixels, of the pixel's class probability (the queries' class
distributions weighted by their mask probabilities, see ``processing_post.semantic_segments``).

Caching. Per image (keyed by the pixels' SHA-256 and the model version) the engine keeps the
encoder outputs, the pixel-decoder maps, the Mask2Former decoder's image-only state (every
layer's cross-attention keys and values) and the LLM key/value cache of the prompt prefix
``[BOS] <|user|> <image>``; a further prompt on the same image runs only the prompt suffix, the
decoder's query side and the post-processing. Entries are evicted least-recently-used to stay within
``Settings.feature_cache_bytes``.

Precision: fp32 on CPU; bf16 on CUDA with the official fp32 upcasts (the Mask2Former decoder
stays fp32). Attention is PyTorch sdpa; flash-attention is never required.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from xsam_backend.engines.factory import xsam_model_version
from xsam_backend.errors import PromptError
from xsam_backend.masks import decode_compact_rle
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.segment import EngineResult, Segment
from xsam_backend.settings import Settings
from xsam_backend.training.lora import LoraSpec, use_lora
from xsam_backend.training.scores import ScoreCalibration
from xsam_backend.training.serving import ServingChoice, ServingVersions
from xsam_backend.training.trainer import apply_delta, trainable_state
from xsam_backend.training.versions import VersionInfo, load_delta
from xsam_backend.xsam import processing_post as post
from xsam_backend.xsam.pipeline import ImageState, XSamOutput, XSamPipeline, XSamRequest
from xsam_backend.xsam.processing_pre import region_prompt_mask
from xsam_backend.xsam.prompting import XSamTask

log = logging.getLogger(__name__)

_TASKS: dict[Task, XSamTask] = {
    Task.INTERACTIVE: "intseg",
    Task.SIMILAR: "vgdseg",
    Task.GENERIC: "genseg",
    Task.REFERRING: "refseg",
    Task.REASONING: "reaseg",
    Task.CAPTION: "gcgseg",
}


class ImageCache:
    """LRU of :class:`ImageState` bounded in bytes. Keys: ``(image digest, model version)``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], ImageState] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> ImageState | None:
        state = self._entries.get(key)
        if state is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return state

    def put(self, key: tuple[str, str], state: ImageState) -> None:
        """Insert or refresh ``key`` (its size may have grown), then evict down to the budget."""
        self._entries[key] = state
        self._entries.move_to_end(key)
        while self._entries and self.nbytes() > self.max_bytes:
            self._entries.popitem(last=False)

    def nbytes(self) -> int:
        return sum(state.nbytes() for state in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of the image's shape and pixels: the cache key of its content."""
    digest = hashlib.sha256(repr((image.shape, str(image.dtype))).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class XSamEngine:
    """Implements :class:`xsam_backend.engines.base.Engine` with the X-SAM pipeline.

    One call at a time: :meth:`predict` holds a lock (the model and the caches are shared).
    """

    def __init__(self, pipeline: XSamPipeline, model_version: str, cache_bytes: int = 2_000_000_000) -> None:
        self.pipeline = pipeline
        self._model_version = model_version
        self.cache = ImageCache(cache_bytes)
        self._lock = threading.Lock()
        self.last_output: XSamOutput | None = None
        # Per-project trained versions (off until serve_project_versions is called).
        self._projects: ServingVersions | None = None
        self._base_delta: dict[str, torch.Tensor] | None = None
        self._active: VersionInfo | None = None

    @classmethod
    def from_dir(cls, model_dir: Path, settings: Settings) -> XSamEngine:
        """Load the converted model in ``model_dir`` on the device ``settings.device`` selects
        (``auto``: CUDA when available); bf16 on CUDA, fp32 on CPU."""
        use_cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
        device, dtype = ("cuda", torch.bfloat16) if use_cuda else ("cpu", torch.float32)
        pipeline = XSamPipeline.from_dir(Path(model_dir), device=device, dtype=dtype)
        version = xsam_model_version(Path(model_dir))
        log.info(
            "X-SAM %s loaded from %s on %s (%s)",
            version,
            model_dir,
            device,
            str(dtype).removeprefix("torch."),
        )
        engine = cls(pipeline, version, cache_bytes=settings.feature_cache_bytes)
        engine.serve_project_versions(settings.projects_dir)
        return engine

    @property
    def name(self) -> str:
        return "xsam"

    @property
    def model_version(self) -> str:
        return self._model_version

    def supports(self, task: Task) -> bool:
        return task in _TASKS

    def predict(self, image: np.ndarray, prompt: Prompt, project: str | None = None) -> EngineResult:
        """Segment ``image`` ``(H, W, 3)`` uint8 RGB for ``prompt`` (pixel coordinates of it).

        ``project``: the Label Studio project asking; its promoted trained version answers (see
        :meth:`serve_project_versions`), and the result carries that version's model version.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise PromptError(f"expected an (H, W, 3) uint8 RGB image; got {image.dtype} {image.shape}")
        size = (int(image.shape[0]), int(image.shape[1]))
        if prompt.image_size is not None and tuple(prompt.image_size) != size:
            raise PromptError(
                f"the prompt refers to a {prompt.image_size} image but the image is {size} (H, W)"
            )
        request = self._request(prompt, size)
        with self._lock:
            choice = self._use_project(project)
            key = (image_digest(image), choice.model_version)
            state = self.cache.get(key)
            if state is None:
                state = self.pipeline.prepare_image(image)
            output = self.pipeline.run(state, request)
            self.cache.put(key, state)
            self.last_output = output
        result = self._result(output, prompt, request)
        return result if choice.version is None else _as_project_result(result, choice)

    # ---- per-project trained versions ---------------------------------------------------------

    def serve_project_versions(self, projects_dir: Path) -> None:
        """Answer a project's predictions with its promoted trained version under ``projects_dir``.

        The trained parameters (the decoder side, see :mod:`xsam_backend.training.trainer`, and a
        version's LLM adapter, see :mod:`xsam_backend.training.lora`) are copied into the loaded
        model when a prediction for another version arrives; the base model is never reloaded,
        and cached image features and prompt prefixes are kept per version.
        """
        self._projects = ServingVersions(projects_dir, self._model_version)

    def _use_project(self, project: str | None) -> ServingChoice:
        """Make the model hold ``project``'s serving parameters (call under the lock)."""
        choice = (
            self._projects.choice(project)
            if self._projects is not None
            else ServingChoice(None, self._model_version, ScoreCalibration())
        )
        wanted = None if choice.version is None else choice.version.path
        active = None if self._active is None else self._active.path
        if wanted != active:
            model = self.pipeline.model
            if self._base_delta is None:
                self._base_delta = trainable_state(model)
            try:
                if choice.version is None:
                    use_lora(model, None)
                    apply_delta(model, self._base_delta)
                else:
                    use_lora(model, LoraSpec.from_json(choice.version.meta.get("lora")))
                    apply_delta(model, load_delta(choice.version))
            except Exception:
                # never leave a half-swapped model behind: back to the base parameters
                use_lora(model, None)
                apply_delta(model, self._base_delta)
                self._active = None
                raise
            self._active = choice.version
            log.info("model now holds %s", choice.model_version)
        return choice

    # ---- prompt → request -------------------------------------------------------------------

    def _request(self, prompt: Prompt, size: tuple[int, int]) -> XSamRequest:
        task = _TASKS[prompt.task]
        if prompt.task is Task.INTERACTIVE:
            masks = np.stack([np.any([self._region_mask(r, size) for r in prompt.regions], axis=0)])
            return XSamRequest(task=task, prompt_masks=masks)
        if prompt.task is Task.SIMILAR:
            return XSamRequest(
                task=task, prompt_masks=np.stack([self._region_mask(r, size) for r in prompt.regions])
            )
        if prompt.task is Task.GENERIC:
            return XSamRequest(task=task, categories=tuple(prompt.classes), segmentation=(prompt.mode,))
        if prompt.task in (Task.REFERRING, Task.REASONING):
            return XSamRequest(task=task, expressions=((prompt.text or "").strip(),))
        return XSamRequest(task=task)

    @staticmethod
    def _region_mask(region: VisualRegion, size: tuple[int, int]) -> np.ndarray:
        stroke = (
            decode_compact_rle(region.mask) if region.kind == "scribble" and region.mask is not None else None
        )
        mask = region_prompt_mask(region, size, stroke)
        if not mask.any():
            raise PromptError(f"the {region.kind} prompt covers no pixel of the {size[1]}x{size[0]} image")
        return mask

    # ---- output → segments ------------------------------------------------------------------

    def _result(self, output: XSamOutput, prompt: Prompt, request: XSamRequest) -> EngineResult:
        segments: list[Segment] = []
        note = None
        caption = output.caption
        if not output.has_masks:
            note = "X-SAM produced no mask for this prompt (its answer held no single <SEG> token)"
        elif prompt.task is Task.INTERACTIVE:
            segment, note = self._interactive(output, prompt)
            segments.append(segment)
        elif prompt.task is Task.SIMILAR:
            vgd = output.results["vgdseg"]
            for mask, score in zip(vgd.masks, vgd.scores):
                if mask.any():
                    segments.append(Segment(_np(mask), prompt.label, float(score)))
        elif prompt.task is Task.GENERIC:
            segments = _generic_segments(output, prompt)
        elif prompt.task in (Task.REFERRING, Task.REASONING):
            for ref in output.results["refseg_all"]:
                segments.append(Segment(_np(ref.mask), prompt.label, float(ref.score)))
        else:
            gcg = output.results["gcgseg"]
            for phrase, mask, score in zip(output.phrases, gcg.masks, gcg.scores):
                segments.append(Segment(_np(mask), prompt.label, float(score), phrase=phrase))
        segments.sort(key=lambda s: -s.score)
        return EngineResult(tuple(segments), self._model_version, self.name, caption=caption, note=note)

    def _interactive(self, output: XSamOutput, prompt: Prompt) -> tuple[Segment, str | None]:
        chosen = output.results["intseg"]
        official = Segment(_np(chosen.mask), prompt.label, float(chosen.score))
        if not prompt.negative_points:
            return official, None
        assert output.class_logits is not None and output.mask_logits is not None
        ranked = post.instances_by_class_probability(
            output.class_logits[0],
            output.mask_logits[0],
            output.scaled_size,
            output.image_size,
            pad_size=output.pad_size,
        )
        positives = [pt for r in prompt.regions if r.kind == "point" for pt in r.points]
        pick = best_with_negatives(ranked, positives, list(prompt.negative_points))
        if pick is None:
            return official, "no candidate mask excludes the negative points; returned X-SAM's own choice"
        return Segment(_np(pick.mask), prompt.label, pick.score), None


def _inside(mask: np.ndarray | torch.Tensor, pt: tuple[float, float]) -> bool:
    """Whether pixel point ``(x, y)`` (clamped to the image) is on ``mask`` ``(H, W)`` bool."""
    h, w = mask.shape
    x, y = min(max(int(pt[0]), 0), w - 1), min(max(int(pt[1]), 0), h - 1)
    return bool(mask[y, x])


def best_with_negatives(
    ranked: Iterable[post.RankedInstance],
    positives: list[tuple[float, float]],
    negatives: list[tuple[float, float]],
) -> post.RankedInstance | None:
    """:func:`choose_with_negatives` over instances met in decreasing class probability.

    ``ranked`` as :func:`~xsam_backend.xsam.processing_post.instances_by_class_probability`
    yields them; points ``(x, y)`` in pixels. The answer is the one :func:`choose_with_negatives`
    gives on the whole pool (the best score, the lowest rank on ties), found without scoring the
    instances whose class probability is below the best covering score. ``None`` when every
    instance contains a negative point.
    """
    covering: post.RankedInstance | None = None
    clean: post.RankedInstance | None = None

    def better(a: post.RankedInstance, b: post.RankedInstance | None) -> bool:
        return b is None or a.score > b.score or (a.score == b.score and a.rank < b.rank)

    for inst in ranked:
        if covering is not None and inst.class_prob < covering.score:
            break
        mask = inst.mask
        if not mask.any() or any(_inside(mask, p) for p in negatives):
            continue
        if better(inst, clean):
            clean = inst
        if all(_inside(mask, p) for p in positives) and better(inst, covering):
            covering = inst
    return covering if covering is not None else clean


def choose_with_negatives(
    masks: np.ndarray,
    scores: np.ndarray,
    positives: list[tuple[float, float]],
    negatives: list[tuple[float, float]],
) -> int | None:
    """Index of the candidate to return under the negative-point rule (module docstring).

    ``masks``: ``(K, H, W)`` bool, ``scores``: ``(K,)``; points ``(x, y)`` in pixels. ``None`` when
    every candidate contains a negative point.
    """
    clean = [
        k for k in range(len(masks)) if masks[k].any() and not any(_inside(masks[k], p) for p in negatives)
    ]
    covering = [k for k in clean if all(_inside(masks[k], p) for p in positives)]
    for group in (covering, clean):
        if group:
            return max(group, key=lambda k: float(scores[k]))
    return None


def _generic_segments(output: XSamOutput, prompt: Prompt) -> list[Segment]:
    classes = list(prompt.classes)
    segments: list[Segment] = []
    if "panoptic" in output.results:
        pan = output.results["panoptic"]
        seen: set[int] = set()
        for seg in pan.segments:
            if seg.id in seen:
                continue
            seen.add(seg.id)
            mask = _np(pan.segmentation == seg.id)
            if mask.any():
                scores = [s.score for s in pan.segments if s.id == seg.id]
                segments.append(Segment(mask, classes[seg.category_id], float(max(scores))))
    if "instance" in output.results:
        ins = output.results["instance"]
        for mask, score, cls in zip(ins.masks, ins.scores, ins.classes):
            if mask.any():
                segments.append(Segment(_np(mask), classes[int(cls)], float(score)))
    if "semantic" in output.results:
        sem = output.results["semantic"]
        for k in sorted(int(v) for v in torch.unique(sem.segmentation)):
            segments.append(Segment(_np(sem.segmentation == k), classes[k], float(sem.scores[k])))
    return segments


def _as_project_result(result: EngineResult, choice: ServingChoice) -> EngineResult:
    """``result`` tagged with the project's model version, scores through its calibration."""
    segments = tuple(
        Segment(s.mask, s.label, choice.calibration.apply(s.score), s.phrase) for s in result.segments
    )
    return replace(result, segments=segments, model_version=choice.model_version)


def _np(mask: torch.Tensor) -> np.ndarray:
    return mask.detach().cpu().numpy().astype(bool)
