"""Fine-tuning the tiny random-weight X-SAM on CPU: the loss falls and the masks get better."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_scenes import CLASSES, scene

from xsam_backend.training.evaluation import ImageTruth, evaluate
from xsam_backend.training.features import extract_features, padded_targets
from xsam_backend.training.loss import LossWeights
from xsam_backend.training.trainer import (
    TrainConfig,
    apply_delta,
    is_trainable,
    make_sample,
    predict_instances,
    train,
    trainable_state,
)
from xsam_backend.xsam.pipeline import XSamPipeline


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir: Path) -> XSamPipeline:
    torch.manual_seed(0)
    return XSamPipeline.from_dir(tiny_model_dir)


def test_features_match_the_inference_pipeline(pipeline: XSamPipeline) -> None:
    image, _, _ = scene(0)
    features = extract_features(pipeline, image, CLASSES)
    assert features.image_size == (96, 128) and features.scaled_size == (96, 128)
    assert [tuple(t.shape) for t in features.sam_layers] == [(1, 8, 8, 64)] * 3
    assert int((features.seg_ids >= 0).sum()) == 1 and sorted(
        {int(i) for i in features.cond_ids if i >= 0}
    ) == [0, 1]
    assert features.llm_hidden.shape[:2] == (1, features.cond_ids.shape[0])
    # the trainable forward on cached features reproduces the pipeline's own answer
    from xsam_backend.training.trainer import forward
    from xsam_backend.xsam.pipeline import XSamRequest

    reference = pipeline(image, XSamRequest(task="genseg", categories=CLASSES, segmentation=("instance",)))
    with torch.no_grad():
        out = forward(pipeline.model, features)
    assert reference.class_logits is not None
    torch.testing.assert_close(out.class_logits.float(), reference.class_logits, atol=1e-4, rtol=1e-4)


def test_targets_go_to_the_padded_frame() -> None:
    _, masks, _ = scene(0)
    targets = padded_targets(masks, (96, 128), 128)
    assert targets.shape == (2, 32, 32)
    assert targets[:, 24:, :].sum() == 0  # below the 96-row image, in the padding
    assert abs(float(targets[0].sum()) * 16 - masks[0].sum()) < 0.2 * masks[0].sum()


def test_training_lowers_the_loss_and_raises_iou(tiny_model_dir: Path) -> None:
    pipeline = XSamPipeline.from_dir(tiny_model_dir)
    model = pipeline.model
    scenes = [scene(seed) for seed in range(3)]
    features = [extract_features(pipeline, image, CLASSES) for image, _, _ in scenes]
    truths = [ImageTruth(masks, tuple(CLASSES[c] for c in classes)) for _, masks, classes in scenes]
    samples = [make_sample(f, masks, classes, 128) for f, (_, masks, classes) in zip(features, scenes)]
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not is_trainable(n)}
    before = evaluate([predict_instances(model, f, CLASSES) for f in features], truths)

    config = TrainConfig(steps=45, learning_rate=2e-3, seed=0, loss=LossWeights(num_points=1024))
    seen: list[tuple[int, int]] = []
    report = train(model, samples, config, lambda step, steps, loss: seen.append((step, steps)))
    after = evaluate([predict_instances(model, f, CLASSES) for f in features], truths)

    assert seen[0] == (1, 45) and seen[-1] == (45, 45)
    assert report.mean(first=False) < 0.5 * report.mean(first=True)
    assert after.miou > before.miou + 0.3, (before, after)
    assert after.ap > before.ap
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not is_trainable(n))
    assert not any(p.requires_grad for p in model.parameters())

    # the delta alone turns a fresh base model into the trained one
    delta = trainable_state(model)
    assert delta and all(is_trainable(name) for name in delta)
    assert (
        "llm_projector.model.0.weight" in delta
        and "segmentor.logit_scale" in delta
        and "bg_embeds.weight" in delta
    )
    fresh = XSamPipeline.from_dir(tiny_model_dir)
    apply_delta(fresh.model, delta)
    replayed = evaluate([predict_instances(fresh.model, f, CLASSES) for f in features], truths)
    assert replayed.miou == pytest.approx(after.miou, abs=1e-6)
    with pytest.raises(KeyError, match="not a fine-tuned parameter"):
        apply_delta(fresh.model, {"llm.lm_head.weight": torch.zeros(1)})


def test_bf16_frozen_parts_as_on_cuda(tiny_model_dir: Path) -> None:
    """On CUDA the model is bf16: the trainable modules train in fp32 and the delta goes back."""
    pipeline = XSamPipeline.from_dir(tiny_model_dir, dtype=torch.bfloat16)
    scenes = [scene(seed) for seed in range(2)]
    features = [extract_features(pipeline, image, CLASSES) for image, _, _ in scenes]
    assert features[0].sam_layers[0].dtype == torch.bfloat16
    samples = [make_sample(f, masks, classes, 128) for f, (_, masks, classes) in zip(features, scenes)]
    report = train(
        pipeline.model, samples, TrainConfig(steps=6, learning_rate=1e-3, loss=LossWeights(num_points=512))
    )
    assert all(torch.isfinite(torch.tensor(report.losses)))
    delta = trainable_state(pipeline.model)
    assert {t.dtype for t in delta.values()} == {torch.float32}
    serving = XSamPipeline.from_dir(tiny_model_dir, dtype=torch.bfloat16)
    apply_delta(serving.model, delta)
    assert next(serving.model.seg_connector.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(
        serving.model.llm_projector.model[0].weight.float(),
        delta["llm_projector.model.0.weight"],
        atol=1e-2,
        rtol=1e-2,
    )
