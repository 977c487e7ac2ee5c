"""Checkpoint loading, both key namings, conversion, and the full-size key/shape manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from repo_paths import REPO_ROOT, SHARED
from safetensors.torch import load_file, save_file

from xsam_backend.xsam.checkpoint import CheckpointError, build_meta_model, load_model, read_state_dict
from xsam_backend.xsam.config import XSamConfig
from xsam_backend.xsam.convert import convert_weights

PARITY_DIR = Path(os.environ.get("XSAM_PARITY_DIR", SHARED / "xsam_parity"))
MANIFEST = SHARED / "xsam_full_size" / "manifest.json"
RELEASE_CONFIG = REPO_ROOT / "model_weights" / "xsam-s3-phi3-mini-siglip2-sam-large.config.json"
needs_bundle = pytest.mark.skipif(
    not (PARITY_DIR / "model").is_dir(), reason=f"no parity bundle at {PARITY_DIR}"
)


@pytest.fixture(scope="module")
def config() -> XSamConfig:
    return XSamConfig.from_file(PARITY_DIR / "model")


@pytest.fixture(scope="module")
def release_state() -> dict[str, torch.Tensor]:
    return load_file(str(PARITY_DIR / "model" / "model.safetensors"))


@pytest.mark.skipif(not MANIFEST.is_file(), reason="no full-size manifest")
def test_full_size_model_on_meta_device_matches_the_release_manifest() -> None:
    model = build_meta_model(XSamConfig.from_file(RELEASE_CONFIG))
    state = model.state_dict()
    # Nothing allocated, except the 3x256 level_embed that stock Mask2FormerPixelDecoder creates
    # with the legacy torch.Tensor constructor, which ignores the device context.
    allocated = {k for k, t in state.items() if not t.is_meta}
    assert allocated <= {"segmentor.pixel_decoder.level_embed"}
    ours = {k: tuple(v.shape) for k, v in state.items()}
    manifest = json.loads(MANIFEST.read_text())
    theirs = {e["key"]: tuple(e["shape"]) for e in manifest["keys"]}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    fingerprint = hashlib.sha256("\n".join(f"{k}\t{ours[k]}" for k in sorted(ours)).encode()).hexdigest()
    assert fingerprint == manifest["fingerprints"]["sorted_sha256"]
    assert len(ours) == 1356


@needs_bundle
def test_both_namings_load_to_the_same_tensors(release_state: dict[str, torch.Tensor]) -> None:
    main = read_state_dict(PARITY_DIR / "model" / "model_main_branch_names.safetensors")
    assert set(main) == set(release_state)
    assert all(torch.equal(main[k], release_state[k]) for k in release_state)


@needs_bundle
def test_pytorch_bin_loads_weights_only(
    tmp_path: Path, config: XSamConfig, release_state: dict[str, torch.Tensor]
) -> None:
    torch.save(release_state, tmp_path / "pytorch_model.bin")
    model = load_model(config, tmp_path)
    assert torch.equal(model.bg_embeds.weight, release_state["bg_embeds.weight"])
    assert model.segmentor.logit_scale.dtype == torch.float32
    assert not any(t.is_meta for t in model.state_dict().values())


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1), "payload": Path("x")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(tmp_path / "pytorch_model.bin")


@needs_bundle
def test_missing_and_unexpected_keys_are_named(
    tmp_path: Path, config: XSamConfig, release_state: dict[str, torch.Tensor]
) -> None:
    broken = {k: v for k, v in release_state.items() if k != "bg_embeds.weight"}
    broken["segmentor.extra.weight"] = torch.zeros(2)
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing key\(s\): bg_embeds\.weight") as info:
        load_model(config, tmp_path)
    assert "unexpected key(s): segmentor.extra.weight" in str(info.value)


@needs_bundle
def test_shape_mismatch_is_named(
    tmp_path: Path, config: XSamConfig, release_state: dict[str, torch.Tensor]
) -> None:
    broken = dict(release_state)
    broken["bg_embeds.weight"] = torch.zeros(2, 3)
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"bg_embeds\.weight: checkpoint \(2, 3\)"):
        load_model(config, tmp_path)


@needs_bundle
def test_convert_bundle_writes_a_servable_folder(
    tmp_path: Path, release_state: dict[str, torch.Tensor]
) -> None:
    out = convert_weights(PARITY_DIR, tmp_path / "tiny")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "checksums.json", "tokenizer.json"} <= names
    sums = json.loads((out / "checksums.json").read_text())["sha256"]
    assert sums["model.safetensors"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    converted = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(converted[k], release_state[k]) for k in release_state)


@needs_bundle
def test_convert_adds_x_sam_tokens_to_a_base_tokenizer(tmp_path: Path) -> None:
    out = convert_weights(
        PARITY_DIR / "model" / "model.safetensors",
        tmp_path / "tiny",
        config=PARITY_DIR / "model" / "config.json",
        tokenizer=PARITY_DIR / "tokenizer_base",
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids(["<SEG>", "<p>", "</p>"]) == [611, 612, 613]


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        convert_weights(tmp_path / "nope", tmp_path / "out")
