"""Optional low-rank adapters on the Phi-3 LLM (``TRAIN_LORA_RANK > 0``), with peft.

The light recipe freezes the LLM; a project whose class names are far from anything the model has
seen can also adapt the LLM's attention and MLP projections (``qkv_proj``, ``o_proj``,
``gate_up_proj``, ``down_proj``, the targets of the model notes) with LoRA:
``W x + (alpha / rank) · B A x``, ``A`` ``(rank, in)``, ``B`` ``(out, rank)``, ``B`` zero at the
start so that a fresh adapter changes nothing.

One adapter slot, named :data:`ADAPTER`, lives in the model. Its parameters are ordinary
parameters of :class:`~xsam_backend.xsam.modeling.XSamModel`
(``llm.model.layers.<i>.self_attn.qkv_proj.lora_A.project.weight`` …), so a version's delta holds
them beside the decoder-side tensors and :func:`~xsam_backend.training.trainer.apply_delta` loads
them. :func:`use_lora` puts the slot in the state a version needs: attached with that version's
:class:`LoraSpec` and enabled, or disabled (the base LLM answers bitwise, as if no adapter were
there). Serving and training both go through it, so a worker switches between projects with and
without adapters without reloading anything.

With adapters the LLM is no longer a frozen part: training runs it on every step (its input
embeddings are still computed once per image) and the prompt caches of serving are per version.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from xsam_backend.xsam.modeling import XSamModel

ADAPTER = "project"
PHI3_TARGETS: tuple[str, ...] = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    """The shape of an adapter: ``rank`` ≥ 1, scale ``alpha / rank``, dropout on the adapter's
    input while training, and the LLM module names it wraps."""

    rank: int
    alpha: int
    dropout: float = 0.0
    targets: tuple[str, ...] = PHI3_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"a LoRA rank is at least 1; got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive; got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1); got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target module")

    @classmethod
    def from_settings(cls, rank: int, alpha: int, dropout: float) -> LoraSpec | None:
        """The spec of the ``TRAIN_LORA_*`` settings; ``None`` when ``rank`` is 0 (no adapter)."""
        return None if rank == 0 else cls(rank=rank, alpha=alpha, dropout=dropout)

    def to_json(self) -> dict[str, Any]:
        """The version-metadata form (``meta["lora"]``)."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> LoraSpec | None:
        """Inverse of :meth:`to_json`; ``None`` for a version without adapters."""
        if not data:
            return None
        return cls(
            rank=int(data["rank"]),
            alpha=int(data["alpha"]),
            dropout=float(data.get("dropout", 0.0)),
            targets=tuple(str(t) for t in data.get("targets", PHI3_TARGETS)),
        )

    def same_shape(self, other: LoraSpec) -> bool:
        """Whether an adapter of ``other`` holds the same tensors with the same scale as one of
        this spec (dropout aside)."""
        return (self.rank, self.alpha, self.targets) == (other.rank, other.alpha, other.targets)


def is_lora_parameter(name: str) -> bool:
    """Whether ``name`` is a parameter of the adapter slot (``llm.….lora_A|B.project.weight``)."""
    return name.startswith("llm.") and (f".lora_A.{ADAPTER}." in name or f".lora_B.{ADAPTER}." in name)


def _tuner_layers(model: XSamModel) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.llm.modules() if isinstance(module, BaseTunerLayer)]


@dataclass
class _Slot:
    spec: LoraSpec
    enabled: bool


# The adapter slot of each model that has one (the model itself stays a plain XSamModel).
_SLOTS: weakref.WeakKeyDictionary[XSamModel, _Slot] = weakref.WeakKeyDictionary()


def attached_spec(model: XSamModel) -> LoraSpec | None:
    """The spec of the adapter in ``model`` when it is attached and enabled, else ``None``."""
    slot = _SLOTS.get(model)
    return slot.spec if slot is not None and slot.enabled else None


def use_lora(model: XSamModel, spec: LoraSpec | None) -> None:
    """Put the adapter slot of ``model`` in the state ``spec`` asks for.

    ``None``: adapters disabled (the base LLM answers bitwise). A spec: the slot attached with that
    shape, in the dtype and on the device of the LLM weights it wraps, and enabled; an adapter of
    another shape is replaced by a fresh one (``B`` = 0), one of the same shape keeps its weights
    (load a version's with ``apply_delta`` afterwards). Adapter parameters never require gradients
    here; the trainer turns them on.
    """
    slot = _SLOTS.get(model)
    current = slot.spec if slot is not None else None
    if spec is None:
        if slot is not None:
            for layer in _tuner_layers(model):
                layer.enable_adapters(False)
            slot.enabled = False
        return
    if current is not None and not current.same_shape(spec):
        for layer in _tuner_layers(model):
            layer.delete_adapter(ADAPTER)
        if hasattr(model.llm, "peft_config"):
            del model.llm.peft_config  # the next injection records its own
        current = None
    if current is None:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=list(spec.targets),
            bias="none",
        )
        inject_adapter_in_model(config, model.llm, adapter_name=ADAPTER)
        if not _tuner_layers(model):
            raise ValueError(f"no LLM module is named like {list(spec.targets)}: cannot attach LoRA")
    for layer in _tuner_layers(model):
        layer.enable_adapters(True)
        layer.set_adapter(ADAPTER)
        # the dropout on the adapter's input (active in training mode only) follows ``spec``
        layer.lora_dropout[ADAPTER] = torch.nn.Dropout(spec.dropout) if spec.dropout else torch.nn.Identity()
    for name, param in model.named_parameters():
        if is_lora_parameter(name):
            param.requires_grad_(False)
    _SLOTS[model] = _Slot(spec, enabled=True)


def answer_loss(model: XSamModel, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """X-SAM's ``L_llm``: mean next-token cross-entropy of the answer tokens.

    ``hidden``: the LLM's last hidden state ``(1, L, D_llm)``; ``labels``: ``(L,)`` int64, the
    answer's ids, −100 elsewhere (position ``t`` predicts ``labels[t + 1]``). The frozen LM head
    runs only on the positions that predict an answer token. Returns a scalar (0 without any).
    """
    targets = labels.to(hidden.device)[1:]
    positions = (targets != -100).nonzero().flatten()
    if positions.numel() == 0:
        return hidden.new_zeros((), dtype=torch.float32)
    logits = model.llm.lm_head(hidden[0, positions]).float()
    return torch.nn.functional.cross_entropy(logits, targets[positions])
