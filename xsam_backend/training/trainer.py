"""The light fine-tuning loop: frozen features per image, trainable decoder side, Mask2Former loss.

Trained (:data:`TRAINABLE_PREFIXES`, ≈ 32 M parameters at release size): the connector, the
Mask2Former pixel decoder and masked-attention decoder, ``llm_projector``, ``logit_scale`` and
``bg_embeds``. Everything else is frozen and run once per image (:mod:`.features`). Trainable
modules are kept in fp32 (the frozen ones stay in the serving dtype), AdamW with linear warm-up
then cosine decay, gradient clipping, one image per step.

With a LoRA adapter attached to the LLM (:func:`~xsam_backend.training.lora.use_lora`), its
``lora_A``/``lora_B`` tensors train too: the LLM reruns on the cached input embeddings every step
(with activation checkpointing), and the loss adds X-SAM's ``L_llm``, the next-token cross-entropy
of the fixed answer, so that the adapted LLM keeps answering as the base one does.

A version stores exactly the tensors of :func:`trainable_state`; :func:`apply_delta` puts them
back into any model built from the same config.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from xsam_backend.training.evaluation import ImagePrediction
from xsam_backend.training.features import FrozenFeatures, padded_targets
from xsam_backend.training.lora import answer_loss, attached_spec, is_lora_parameter
from xsam_backend.training.loss import LossTerms, LossWeights, deep_supervision_loss
from xsam_backend.xsam import processing_post as post
from xsam_backend.xsam.modeling import DecoderOutput, XSamModel, index_mean, upsample_mask_logits

log = logging.getLogger(__name__)

TRAINABLE_PREFIXES: tuple[str, ...] = (
    "seg_connector.",
    "segmentor.pixel_decoder.",
    "segmentor.decoder.",
    "segmentor.logit_scale",
    "llm_projector.",
    "bg_embeds.",
)
Progress = Callable[[int, int, float], None]


def is_trainable(name: str) -> bool:
    """Whether the parameter ``name`` (release naming) can be fine-tuned: the decoder side, and
    the LLM adapter's tensors."""
    return name.startswith(TRAINABLE_PREFIXES) or is_lora_parameter(name)


def tuned_parameters(model: XSamModel) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The parameters a version of ``model`` in its current state holds: the decoder side, plus
    the adapter's when one is attached and enabled."""
    adapter = attached_spec(model) is not None
    for name, param in model.named_parameters():
        if name.startswith(TRAINABLE_PREFIXES) or (adapter and is_lora_parameter(name)):
            yield name, param


def trainable_state(model: XSamModel) -> dict[str, torch.Tensor]:
    """The fine-tuned parameters by release name, detached fp32 copies on CPU."""
    return {name: p.detach().float().cpu().clone() for name, p in tuned_parameters(model)}


def apply_delta(model: XSamModel, delta: Mapping[str, torch.Tensor]) -> None:
    """Copy ``delta`` (release names → tensors) into ``model`` in place, each in the parameter's
    own dtype and device. Raises ``KeyError``/``ValueError`` naming a key that is not a trainable
    parameter of the model, or a shape that differs, before anything is changed."""
    params = dict(model.named_parameters())
    for name, value in delta.items():
        if name not in params or not is_trainable(name):
            raise KeyError(f"{name!r} is not a fine-tuned parameter of this model")
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(f"{name}: delta {tuple(value.shape)} vs model {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, value in delta.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the light recipe of the model notes)."""

    steps: int = 300
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.03
    grad_clip: float = 1.0
    seed: int = 0
    loss: LossWeights = field(default_factory=LossWeights)


@dataclass
class TrainSample:
    """One training image: its frozen features, instance classes ``(N,)`` int64 (indices into the
    prompt's class list) and target masks ``(N, S/4, S/4)`` float in the padded SAM frame."""

    features: FrozenFeatures
    classes: torch.Tensor
    masks: torch.Tensor


def make_sample(
    features: FrozenFeatures, masks: np.ndarray, classes: Sequence[int], side: int
) -> TrainSample:
    """A :class:`TrainSample` from original-frame masks ``(N, H, W)`` bool and class indices."""
    return TrainSample(
        features=features,
        classes=torch.as_tensor(list(classes), dtype=torch.int64),
        masks=padded_targets(masks, features.scaled_size, side),
    )


@dataclass(frozen=True)
class TrainReport:
    """Per-step total losses, and the wall time of the loop."""

    losses: tuple[float, ...]
    seconds: float

    def mean(self, first: bool, window: int = 10) -> float:
        """Mean loss over the first (or last) ``window`` steps."""
        part = self.losses[:window] if first else self.losses[-window:]
        return float(np.mean(part)) if part else math.nan


def prepare_for_training(model: XSamModel) -> list[torch.nn.Parameter]:
    """Freeze everything but :func:`tuned_parameters`, cast those to fp32, and return them."""
    for module in (model.seg_connector, model.llm_projector, model.bg_embeds):
        module.float()
    model.segmentor.pixel_decoder.float()
    model.segmentor.decoder.float()
    model.segmentor.logit_scale.data = model.segmentor.logit_scale.data.float()
    tuned = dict(tuned_parameters(model))
    for name, param in model.named_parameters():
        if name in tuned and is_lora_parameter(name):
            param.data = param.data.float()
        param.requires_grad_(name in tuned)
    return list(tuned.values())


def llm_hidden(model: XSamModel, features: FrozenFeatures) -> torch.Tensor:
    """The LLM's last hidden state ``(1, L, D_llm)`` for ``features``' prompt: the cached one, or,
    with an adapter attached, the LLM rerun on the cached input embeddings (gradients flow into
    the adapter)."""
    if attached_spec(model) is None:
        return features.llm_hidden
    if features.llm_inputs is None:
        raise ValueError("an adapted LLM reruns on its input embeddings: extract with llm_inputs=True")
    first = next(model.llm.parameters())  # the token embeddings: the LLM's serving dtype
    return model.run_llm(features.llm_inputs.to(first.device, first.dtype))


def forward(
    model: XSamModel, features: FrozenFeatures, auxiliary: bool = False, hidden: torch.Tensor | None = None
) -> DecoderOutput:
    """The trainable part of the network on cached frozen features (gradients flow); the features
    are moved to the model's device here. ``hidden``: the LLM state if already computed
    (:func:`llm_hidden` otherwise).

    Returns class logits ``(1, Q, C + 1)`` and mask logits ``(1, Q, S/8, S/8)`` (padded frame),
    with ``auxiliary`` also the decoder's intermediate predictions.
    """
    dtype = model.segmentor.decoder.queries_features.weight.dtype
    connector = next(model.seg_connector.parameters())
    device = connector.device
    maps = model.seg_connector([layer.to(device, connector.dtype) for layer in features.sam_layers])
    pixels = model.segmentor.decode_pixels([m.to(dtype) for m in maps])
    projector_dtype = next(model.llm_projector.parameters()).dtype
    hidden = llm_hidden(model, features) if hidden is None else hidden
    embeds = model.project(hidden.to(device, projector_dtype))[0]
    conds = index_mean(embeds, features.cond_ids.to(device))
    segs = index_mean(embeds, features.seg_ids.to(device))
    if segs.shape[0] != 1 or conds.shape[0] == 0:
        raise ValueError(
            f"a genseg prompt needs one <SEG> and at least one class; got {segs.shape[0]} and {conds.shape[0]}"
        )
    cond_embeds = model.with_background(conds)
    return model.segmentor.decode_queries(
        pixels, segs.reshape(1, 1, -1).to(dtype), cond_embeds.to(dtype), auxiliary=auxiliary
    )


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: XSamModel,
    samples: Sequence[TrainSample],
    config: TrainConfig,
    progress: Progress | None = None,
) -> TrainReport:
    """Fine-tune ``model`` in place for ``config.steps`` steps, one image per step (a seeded
    shuffle each epoch). ``progress(step, steps, loss)`` is called after every step."""
    if not samples:
        raise ValueError("nothing to train on: no training image has an instance")
    params = prepare_for_training(model)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, round(config.warmup_fraction * config.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config.steps, warmup))
    generator = torch.Generator().manual_seed(config.seed)
    adapter = attached_spec(model) is not None
    if adapter:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    order: list[int] = []
    try:
        for step in range(config.steps):
            if not order:
                order = torch.randperm(len(samples), generator=generator).tolist()
            sample = samples[order.pop()]
            terms = sample_loss(model, sample, config.loss, generator)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(terms.total.detach()))
            if progress is not None:
                progress(step + 1, config.steps, losses[-1])
    finally:
        model.eval()
        if adapter:
            model.llm.gradient_checkpointing_disable()
        for param in params:
            param.requires_grad_(False)
    return TrainReport(losses=tuple(losses), seconds=time.perf_counter() - started)


def sample_loss(
    model: XSamModel, sample: TrainSample, weights: LossWeights, generator: torch.Generator | None = None
) -> LossTerms:
    """The Mask2Former loss of one sample: the final prediction and, with ``weights.auxiliary``,
    every intermediate one (deep supervision); with an LLM adapter, plus ``L_llm``."""
    hidden = llm_hidden(model, sample.features)
    out = forward(model, sample.features, auxiliary=weights.auxiliary, hidden=hidden)
    device = out.mask_logits.device
    predictions = [(c[0], m[0]) for c, m in (*out.auxiliary, (out.class_logits, out.mask_logits))]
    terms = deep_supervision_loss(
        predictions, sample.classes.to(device), sample.masks.to(device), weights, generator
    )
    if attached_spec(model) is None:
        return terms
    labels = sample.features.llm_labels
    if labels is None:
        raise ValueError("an adapted LLM trains on its answer: extract with llm_inputs=True")
    llm = answer_loss(model, hidden, labels)
    return replace(terms, total=terms.total + weights.llm_weight * llm, llm=float(llm.detach()))


@torch.no_grad()
def predict_instances(model: XSamModel, features: FrozenFeatures, classes: Sequence[str]) -> ImagePrediction:
    """Instance predictions of the current weights, every query kept (score threshold 0), in the
    original frame: what the evaluation compares with the ground truth."""
    model.eval()
    out = forward(model, features)
    side = int(model.config.sam_image_size)
    result = post.instance_postprocess(
        out.class_logits[0].float().cpu(),
        upsample_mask_logits(out.mask_logits, side)[0].cpu(),
        features.scaled_size,
        features.image_size,
        post.PostprocessThresholds(instance_score=0.0),
    )
    labels = tuple(classes[int(c)] for c in result.classes)
    return ImagePrediction(masks=result.masks.numpy(), labels=labels, scores=result.scores.float().numpy())
