"""The X-SAM engine serves each project's promoted version by swapping the trained parameters in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from training_scenes import CLASSES, scene

from xsam_backend.engines.xsam_engine import XSamEngine
from xsam_backend.prompt import Prompt, Task
from xsam_backend.settings import Settings
from xsam_backend.training.lora import LoraSpec, is_lora_parameter, use_lora
from xsam_backend.training.scores import ScoreCalibration
from xsam_backend.training.trainer import trainable_state
from xsam_backend.training.versions import ProjectVersions
from xsam_backend.xsam.pipeline import XSamPipeline

PROMPT = Prompt(task=Task.GENERIC, classes=CLASSES, mode="instance")


@pytest.fixture
def engine(tiny_model_dir: Path, tmp_path: Path) -> XSamEngine:
    return XSamEngine.from_dir(tiny_model_dir, Settings(device="cpu", weights_root=tmp_path))


def publish(
    engine: XSamEngine,
    projects_dir: Path,
    project: str,
    delta: dict[str, torch.Tensor],
    calibration: ScoreCalibration,
    lora: LoraSpec | None = None,
) -> str:
    versions = ProjectVersions(projects_dir, project)
    name = versions.next_name()
    meta = {
        "model_version": f"{engine.model_version}+p{project}.{name}",
        "base_model_version": engine.model_version,
        "score_calibration": calibration.to_json(),
        "promoted": True,
        "lora": None if lora is None else lora.to_json(),
    }
    versions.write(name, delta, meta)
    versions.set_serving(name)
    return name


def test_projects_get_their_version_and_others_the_base(engine: XSamEngine, tmp_path: Path) -> None:
    image = scene(0)[0]
    base = engine.predict(image, PROMPT)
    base_logits = engine.last_output.class_logits.clone()  # type: ignore[union-attr]
    assert base.model_version == engine.model_version

    delta = trainable_state(engine.pipeline.model)
    delta["bg_embeds.weight"] = delta["bg_embeds.weight"] + 3.0
    delta["segmentor.logit_scale"] = delta["segmentor.logit_scale"] - 1.0
    publish(engine, tmp_path / "projects", "4", delta, ScoreCalibration())

    tuned = engine.predict(image, PROMPT, project="4")
    tuned_logits = engine.last_output.class_logits.clone()  # type: ignore[union-attr]
    assert tuned.model_version == f"{engine.model_version}+p4.v0001"
    assert not torch.allclose(tuned_logits, base_logits)

    other = engine.predict(image, PROMPT, project="5")  # untrained project: the base, restored exactly
    assert other.model_version == engine.model_version
    torch.testing.assert_close(engine.last_output.class_logits, base_logits, atol=0, rtol=0)  # type: ignore[union-attr]
    again = engine.predict(image, PROMPT, project="4")
    torch.testing.assert_close(engine.last_output.class_logits, tuned_logits, atol=0, rtol=0)  # type: ignore[union-attr]
    assert again.model_version == tuned.model_version

    # rollback to the base: the next prediction of the project is the base model's
    ProjectVersions(tmp_path / "projects", "4").set_serving(None)
    assert engine.predict(image, PROMPT, project="4").model_version == engine.model_version


def test_the_version_calibration_maps_the_scores(engine: XSamEngine, tmp_path: Path) -> None:
    image = scene(1)[0]
    base = engine.predict(image, PROMPT)
    assert base.segments
    calibration = ScoreCalibration(a=0.5, b=-1.0, samples=40)
    publish(engine, tmp_path / "projects", "7", trainable_state(engine.pipeline.model), calibration)
    tuned = engine.predict(image, PROMPT, project="7")
    assert [np.array_equal(a.mask, b.mask) for a, b in zip(base.segments, tuned.segments)] == [True] * len(
        base.segments
    )
    assert [s.score for s in tuned.segments] == pytest.approx(
        [calibration.apply(s.score) for s in base.segments]
    )


def adapter_delta(model_dir: Path, spec: LoraSpec, seed: int) -> dict[str, torch.Tensor]:
    """A version delta with a non-trivial LLM adapter, made on a separate copy of the model."""
    other = XSamPipeline.from_dir(model_dir)
    use_lora(other.model, spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in other.model.named_parameters():
            if is_lora_parameter(name) and ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return trainable_state(other.model)


def test_versions_with_llm_adapters_swap_without_touching_the_base(
    engine: XSamEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    image = scene(2)[0]
    engine.predict(image, PROMPT)
    base_logits = engine.last_output.class_logits.clone()  # type: ignore[union-attr]
    projects = tmp_path / "projects"
    publish(
        engine,
        projects,
        "4",
        adapter_delta(tiny_model_dir, LoraSpec(4, 8), 0),
        ScoreCalibration(),
        LoraSpec(4, 8),
    )
    publish(
        engine,
        projects,
        "6",
        adapter_delta(tiny_model_dir, LoraSpec(2, 2), 1),
        ScoreCalibration(),
        LoraSpec(2, 2),
    )

    first = engine.predict(image, PROMPT, project="4")
    tuned4 = engine.last_output.class_logits.clone()  # type: ignore[union-attr]
    assert first.model_version.endswith("+p4.v0001") and not torch.allclose(tuned4, base_logits)
    engine.predict(image, PROMPT, project="6")  # another rank: the adapter is rebuilt
    tuned6 = engine.last_output.class_logits.clone()  # type: ignore[union-attr]
    assert not torch.allclose(tuned6, tuned4) and not torch.allclose(tuned6, base_logits)
    engine.predict(image, PROMPT, project="5")  # no version: the base, bitwise
    torch.testing.assert_close(engine.last_output.class_logits, base_logits, atol=0, rtol=0)  # type: ignore[union-attr]
    engine.predict(image, PROMPT, project="4")
    torch.testing.assert_close(engine.last_output.class_logits, tuned4, atol=0, rtol=0)  # type: ignore[union-attr]
    engine.predict(image, PROMPT)
    torch.testing.assert_close(engine.last_output.class_logits, base_logits, atol=0, rtol=0)  # type: ignore[union-attr]


def test_a_broken_version_leaves_the_base_model_intact(engine: XSamEngine, tmp_path: Path) -> None:
    image = scene(3)[0]
    engine.predict(image, PROMPT)
    base_logits = engine.last_output.class_logits.clone()  # type: ignore[union-attr]
    # an adapter-less delta published as if it had one: the adapter's tensors are missing, but
    # also a key the model does not have
    delta = trainable_state(engine.pipeline.model)
    delta["llm.model.layers.0.self_attn.qkv_proj.lora_A.project.weight"] = torch.zeros(99, 1)
    publish(engine, tmp_path / "projects", "8", delta, ScoreCalibration(), LoraSpec(4, 8))
    with pytest.raises(ValueError, match="lora_A"):
        engine.predict(image, PROMPT, project="8")
    engine.predict(image, PROMPT, project="9")
    torch.testing.assert_close(engine.last_output.class_logits, base_logits, atol=0, rtol=0)  # type: ignore[union-attr]
