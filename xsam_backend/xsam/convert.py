"""Convert X-SAM weights into the folder the backend serves from.

``convert_weights(src, dst)`` writes into ``dst``:

* ``config.json``: the model config (layout of :mod:`xsam_backend.xsam.config`);
* ``model.safetensors``: every tensor with release key names, dtype unchanged (memory-mapped at
  load time);
* the tokenizer files, with X-SAM's ``<SEG>``, ``<p>``, ``</p>`` added when the source tokenizer
  lacks them (as the official model does), checked against the config's ids;
* ``checksums.json``: ``{"sha256": {file name: hex digest}}`` of the files above; the engine's
  model version is derived from it.

``src`` is one of

* a parity bundle directory (its ``model/config.json``, ``model/model.safetensors`` and
  ``tokenizer/``), so a tiny model can be served end to end;
* the official release: a ``pytorch_model.bin`` or a folder holding one (searched one level
  deep). Its config is the shipped full-size config
  (``model_weights/xsam-s3-phi3-mini-siglip2-sam-large.config.json``) unless ``config`` is given;
  the tokenizer is taken from ``tokenizer`` or from a folder of ``src`` that holds one.

Every key is checked against the model the config describes before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from safetensors.torch import save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from xsam_backend.xsam.checkpoint import (
    CheckpointError,
    build_meta_model,
    check_keys,
    find_checkpoint,
    read_state_dict,
)
from xsam_backend.xsam.config import XSamConfig

RELEASE_CONFIG = (
    Path(__file__).resolve().parents[2] / "model_weights" / "xsam-s3-phi3-mini-siglip2-sam-large.config.json"
)
X_SAM_TOKENS = ("<SEG>", "<p>", "</p>")


def convert_weights(src: Path, dst: Path, config: Path | None = None, tokenizer: Path | None = None) -> Path:
    """Convert ``src`` (see the module docstring) into ``dst``; returns ``dst``.

    Raises :class:`~xsam_backend.xsam.checkpoint.CheckpointError` when the weights do not match the
    config (naming the keys) or no tokenizer can be found, and ``FileNotFoundError`` for a
    missing ``src``.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"nothing to convert at {src}")
    if (src / "model" / "config.json").is_file():
        config_path = config or src / "model" / "config.json"
        weights = find_checkpoint(src / "model")
        tokenizer_dir = tokenizer or src / "tokenizer"
    else:
        config_path = config or RELEASE_CONFIG
        weights = find_checkpoint(src)
        tokenizer_dir = tokenizer or _find_tokenizer(src if src.is_dir() else src.parent)

    model_config = XSamConfig.from_file(config_path)
    state = read_state_dict(weights)
    expected = {k: v.shape for k, v in build_meta_model(model_config).state_dict().items()}
    check_keys(expected, state)
    tok = _xsam_tokenizer(tokenizer_dir, model_config)

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_path, dst / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "model.safetensors"))
    written = [Path(p).name for p in tok.save_pretrained(str(dst))] + ["config.json", "model.safetensors"]
    files = sorted({name for name in written if (dst / name).is_file()})
    digests = {name: _sha256(dst / name) for name in files}
    (dst / "checksums.json").write_text(json.dumps({"sha256": digests}, indent=2) + "\n")
    return dst


def _find_tokenizer(folder: Path) -> Path:
    for candidate in [folder, *sorted(p.parent for p in folder.rglob("tokenizer_config.json"))]:
        if (candidate / "tokenizer_config.json").is_file():
            return candidate
    raise CheckpointError(
        f"no tokenizer next to the weights in {folder}; pass the Phi-3 tokenizer folder explicitly"
    )


def _xsam_tokenizer(folder: Path, config: XSamConfig) -> PreTrainedTokenizerBase:
    """The tokenizer in ``folder`` with X-SAM's tokens, their ids checked against ``config``."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    missing = [t for t in X_SAM_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    ids = config.token_ids
    want = {"<SEG>": ids.seg, "<p>": ids.p_start, "</p>": ids.p_end}
    got = {t: tok.convert_tokens_to_ids(t) for t in X_SAM_TOKENS}
    if got != want:
        raise CheckpointError(f"tokenizer in {folder} gives ids {got} but the model expects {want}")
    rows = int(config.llm["vocab_size"])
    if len(tok) != rows:
        raise CheckpointError(
            f"tokenizer in {folder} has {len(tok)} entries but the embedding has {rows} rows"
        )
    return tok


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
