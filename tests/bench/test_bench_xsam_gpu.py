"""The GPU benchmark's CPU-side parts: random materialisation, the no-CUDA exit, a dry run."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
import torch
from repo_paths import REPO_ROOT, SHARED

from xsam_backend.xsam.config import XSamConfig

PARITY_MODEL = SHARED / "xsam_parity" / "model"
pytestmark = pytest.mark.skipif(not PARITY_MODEL.is_dir(), reason=f"no parity bundle at {PARITY_MODEL}")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_xsam_gpu", REPO_ROOT / "bench" / "bench_xsam_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_random_model_is_materialised_with_the_engine_precision(bench: ModuleType) -> None:
    model = bench.random_model(XSamConfig.from_file(PARITY_MODEL), torch.device("cpu"), torch.bfloat16)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert not any(t.is_meta for t in tensors.values())
    assert all(torch.isfinite(t.float()).all() for t in tensors.values() if t.is_floating_point())
    assert model.llm.lm_head.weight.dtype == torch.bfloat16
    assert next(model.segmentor.decoder.parameters()).dtype == torch.float32
    assert model.segmentor.logit_scale.dtype == torch.float32
    assert float(model.llm.lm_head.weight.detach().float().std()) == pytest.approx(0.02, rel=0.2)


def test_without_cuda_it_exits_with_a_clear_message(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench.parse_setup([])


def test_dry_run_prints_every_row(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--dry-run", "--config", str(PARITY_MODEL), "--tokenizer", str(SHARED / "xsam_parity" / "tokenizer")])
    table = capsys.readouterr().out
    for row in ("SAM encoder", "cached click (engine)", "speed-up", "prelabel", "intseg post-processing"):
        assert row in table
