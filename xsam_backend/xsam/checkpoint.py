"""Load X-SAM weights: the official ``pytorch_model.bin`` or our ``model.safetensors``.

Both key namings of the official code are accepted and mapped to the release (``AAAI26_Archive``)
naming that :class:`~xsam_backend.xsam.modeling.XSamModel` uses:

* ``vision_encoder.*`` → ``visual_encoder.*`` (``main`` branch);
* ``segmentor.class_predictor.logit_scale`` → ``segmentor.logit_scale`` (``main`` branch).

The model is built on the meta device (no random initialisation, no memory) and the checkpoint's
tensors are assigned in place, so a memory-mapped safetensors file is used without a copy when
device and dtype already match. A missing or unexpected key, or a shape that differs, is a
:class:`CheckpointError` naming the keys.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from xsam_backend.xsam.config import XSamConfig
from xsam_backend.xsam.modeling import XSamModel

MAIN_BRANCH_RENAMES: tuple[tuple[str, str], ...] = (
    ("vision_encoder.", "visual_encoder."),
    ("segmentor.class_predictor.logit_scale", "segmentor.logit_scale"),
)
RELEASE_FILE_NAMES = ("pytorch_model.bin", "model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model built from its config (names the offending keys)."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file on CPU, with release key names.

    ``*.safetensors`` is memory-mapped; anything else is read with
    ``torch.load(weights_only=True, mmap=True)``, which refuses pickled code. Raises
    :class:`CheckpointError` for a file that is neither.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
            raise CheckpointError(f"{path} is not a loadable weights-only torch checkpoint: {exc}") from None
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return release_names(state)


def release_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``main``-branch keys to release keys; raises when both namings hold the same key."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for old_prefix, new_prefix in MAIN_BRANCH_RENAMES:
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix) :]
                break
        if new in out:
            raise CheckpointError(f"checkpoint holds {new!r} under both namings")
        out[new] = value
    return out


def find_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a file, else the first of ``model.safetensors`` /
    ``pytorch_model.bin`` found in it (searching one level of sub-folders too)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
        found = sorted(path.glob(f"*/{name}"))
        if found:
            return found[0]
    raise CheckpointError(f"no model.safetensors or pytorch_model.bin in {path}")


def build_meta_model(config: XSamConfig, attn_implementation: str = "sdpa") -> XSamModel:
    """The model on the meta device: right keys and shapes, no memory, no initialisation."""
    with torch.device("meta"):
        return XSamModel(config, attn_implementation=attn_implementation)


def check_keys(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_first(wrong)}")
    if problems:
        raise CheckpointError("checkpoint does not match the model config: " + "; ".join(problems))


def load_model(
    config: XSamConfig,
    weights: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> XSamModel:
    """Build the model and load ``weights`` (a file or a folder, see :func:`find_checkpoint`).

    The model is put on ``device`` in ``dtype``, except the Mask2Former pixel decoder, decoder and
    ``logit_scale``, which stay fp32 (20 M parameters; covers the official fp32 upcasts of the
    deformable attention). Returns the model in eval mode.
    """
    state = read_state_dict(find_checkpoint(weights))
    model = build_meta_model(config, attn_implementation)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_keys(expected, state)
    model.load_state_dict(state, strict=True, assign=True)
    materialise_buffers(model, torch.device(device))
    model.to(device=device, dtype=dtype)
    model.segmentor.pixel_decoder.float()
    model.segmentor.decoder.float()
    model.segmentor.logit_scale.data = model.segmentor.logit_scale.data.float()
    return model.eval()


def materialise_buffers(model: XSamModel, device: torch.device) -> None:
    """Re-create the non-persistent buffers left on the meta device (not in any checkpoint)."""
    model.llm.model.rotary_emb = Phi3RotaryEmbedding(config=model.llm.config, device=device)
    embeddings = model.visual_encoder.vision_model.embeddings
    embeddings.register_buffer(
        "position_ids",
        torch.arange(embeddings.num_positions, device=device).expand((1, -1)),
        persistent=False,
    )
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left uninitialised after loading: {_first(left)}")


def _first(items: Iterable[str], n: int = 12) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f", … (+{len(items) - n} more)" if len(items) > n else "")
