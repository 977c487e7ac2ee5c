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
from xsam_backend.training.scores import ScoreCalibration
from xsam_backend.training.trainer import trainable_state
from xsam_backend.training.versions import ProjectVersions

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
) -> str:
    versions = ProjectVersions(projects_dir, project)
    name = versions.next_name()
    meta = {
        "model_version": f"{engine.model_version}+p{project}.{name}",
        "base_model_version": engine.model_version,
        "score_calibration": calibration.to_json(),
        "promoted": True,
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
