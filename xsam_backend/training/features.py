"""What fine-tuning reuses per image: the outputs of the frozen parts, computed once.

With the LLM, SigLIP, SAM and the visual/seg projectors frozen, two things depend only on the
image and the prompt (the genseg template with the project's class names, in a fixed order):

* the SAM states the connector reads (``seg_select_layers``), each ``(1, S/16, S/16, C)``
  channels-last (release: layers 12/18/24 at 64²×1024);
* the Phi-3 last hidden state of the whole prompt, ``(1, L, D_llm)`` (image tokens spliced in),
  with the ``<p>…</p>`` (``cond_ids``) and ``<SEG>`` (``seg_ids``) positions, ``(L,)`` int64.

Both come from the inference pipeline itself (its trace), so training sees exactly what serving
computes. With a LoRA adapter on the LLM (:mod:`.lora`) the hidden state changes while training,
so the LLM's input embeddings ``(1, L, D_llm)`` (image tokens spliced in; SigLIP and the
projectors stay frozen) and the answer's next-token labels ``(L,)`` are kept too, and the LLM
reruns on them. The target masks go to the padded SAM frame: resized like the image to
``scaled_size``, padded with 0 to ``S × S``, stored at ``S/4`` (what the loss samples from).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xsam_backend.xsam.pipeline import XSamPipeline, XSamRequest

TARGET_STRIDE = 4


@dataclass
class FrozenFeatures:
    """One image's frozen-part outputs for one class list (see the module docstring).

    ``image_size``/``scaled_size``: ``(H, W)`` of the original image and of the resized image
    in the padded SAM frame. ``llm_inputs`` ``(1, L, D_llm)`` and ``llm_labels`` ``(L,)`` int64
    (answer token ids, −100 elsewhere): only when extracted for LLM adapters.
    """

    sam_layers: list[torch.Tensor]
    llm_hidden: torch.Tensor
    cond_ids: torch.Tensor
    seg_ids: torch.Tensor
    image_size: tuple[int, int]
    scaled_size: tuple[int, int]
    llm_inputs: torch.Tensor | None = None
    llm_labels: torch.Tensor | None = None


def extract_features(
    pipeline: XSamPipeline, image: np.ndarray, classes: Sequence[str], llm_inputs: bool = False
) -> FrozenFeatures:
    """Run the frozen parts on ``image`` ``(H, W, 3)`` uint8 RGB for a genseg prompt of ``classes``;
    with ``llm_inputs`` also keep what rerunning an adapted LLM needs.

    The tensors are ordinary (not inference-mode) copies on the CPU, so that a project's images
    do not have to fit in GPU memory together (release: ≈ 35 MB per image in bf16); the trainer
    moves one image's features to the device per step.
    """
    if not classes:
        raise ValueError("fine-tuning needs at least one class name")
    image_trace: dict[str, torch.Tensor] = {}
    state = pipeline.prepare_image(image, trace=image_trace)
    prompt_trace: dict[str, torch.Tensor] = {}
    request = XSamRequest(task="genseg", categories=tuple(classes), segmentation=("instance",))
    pipeline.run(state, request, trace=prompt_trace)
    if "llm.last_hidden_state" not in prompt_trace:
        raise RuntimeError("the genseg prompt produced no hidden states; is the model config complete?")
    states = image_trace["sam.hidden_states"]
    features = FrozenFeatures(
        sam_layers=[_copy(states[i]) for i in pipeline.config.seg_select_layers],
        llm_hidden=_copy(prompt_trace["llm.last_hidden_state"]),
        cond_ids=_copy(prompt_trace["index_embeds.cond.ids"][0]),
        seg_ids=_copy(prompt_trace["index_embeds.seg.ids"][0]),
        image_size=state.image_size,
        scaled_size=state.scaled_size,
    )
    if llm_inputs:
        features.llm_inputs = _copy(prompt_trace["spliced.inputs_embeds"])
        features.llm_labels = _copy(prompt_trace["spliced.labels"][0])
    return features


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    # A copy made outside inference mode: inference tensors cannot be saved for backward.
    return tensor.detach().to("cpu", copy=True)


def padded_targets(masks: np.ndarray, scaled_size: tuple[int, int], side: int) -> torch.Tensor:
    """Instance masks ``(N, H, W)`` bool (original frame) → ``(N, side/4, side/4)`` float32 in {0, 1}
    in the padded SAM frame of side ``side``."""
    size = side // TARGET_STRIDE
    if masks.shape[0] == 0:
        return torch.zeros(0, size, size)
    h = max(1, round(scaled_size[0] / TARGET_STRIDE))
    w = max(1, round(scaled_size[1] / TARGET_STRIDE))
    resized = F.interpolate(
        torch.from_numpy(masks).float()[:, None],
        size=(h, w),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    out = torch.zeros(masks.shape[0], size, size)
    out[:, :h, :w] = (resized[:, 0] >= 0.5).float()
    return out
