"""LLM adapters (LoRA) on the tiny random-weight X-SAM: neutral when fresh, trained, swapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_scenes import CLASSES, scene

from xsam_backend.settings import Settings, SettingsError
from xsam_backend.training.evaluation import ImageTruth, evaluate
from xsam_backend.training.features import extract_features
from xsam_backend.training.lora import (
    LoraSpec,
    answer_loss,
    attached_spec,
    is_lora_parameter,
    use_lora,
)
from xsam_backend.training.loss import LossWeights
from xsam_backend.training.trainer import (
    TrainConfig,
    apply_delta,
    forward,
    llm_hidden,
    make_sample,
    predict_instances,
    sample_loss,
    train,
    trainable_state,
)
from xsam_backend.xsam.pipeline import XSamPipeline, XSamRequest

SPEC = LoraSpec(rank=4, alpha=8, dropout=0.0)
REQUEST = XSamRequest(task="genseg", categories=CLASSES, segmentation=("instance",))


def lora_tensors(pipeline: XSamPipeline) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pipeline.model.named_parameters() if is_lora_parameter(n)}


def test_spec_checks_and_round_trips() -> None:
    assert LoraSpec.from_settings(0, 32, 0.05) is None
    spec = LoraSpec.from_settings(16, 32, 0.05)
    assert spec is not None and LoraSpec.from_json(spec.to_json()) == spec
    assert LoraSpec.from_json(None) is None
    assert spec.same_shape(LoraSpec(16, 32, 0.0)) and not spec.same_shape(LoraSpec(8, 32, 0.05))
    for bad in ({"rank": 0, "alpha": 8}, {"rank": 4, "alpha": 0}, {"rank": 4, "alpha": 8, "dropout": 1.0}):
        with pytest.raises(ValueError):
            LoraSpec(**bad)  # type: ignore[arg-type]
    settings = Settings.from_env(
        {"TRAIN_LORA_RANK": "8", "TRAIN_LORA_ALPHA": "16", "TRAIN_LORA_DROPOUT": "0.1"}
    )
    assert (settings.train_lora_rank, settings.train_lora_alpha, settings.train_lora_dropout) == (8, 16, 0.1)
    assert Settings.from_env({}).train_lora_rank == 0
    for env in ({"TRAIN_LORA_RANK": "-1"}, {"TRAIN_LORA_ALPHA": "0"}, {"TRAIN_LORA_DROPOUT": "1.5"}):
        with pytest.raises(SettingsError, match="TRAIN_LORA"):
            Settings.from_env(env)


def test_a_fresh_adapter_changes_nothing_and_a_disabled_one_is_the_base(tiny_model_dir: Path) -> None:
    pipeline = XSamPipeline.from_dir(tiny_model_dir)
    image = scene(0)[0]
    base = pipeline(image, REQUEST).class_logits
    features = extract_features(pipeline, image, CLASSES, llm_inputs=True)
    assert features.llm_inputs is not None and features.llm_labels is not None
    labels = features.llm_labels
    assert labels.shape == (features.llm_inputs.shape[1],)
    answer = labels[labels != -100]
    assert 0 < answer.numel() < 20  # the fixed answer, "Sure, it is <SEG>." and the end token
    assert int(labels[features.seg_ids >= 0][0]) == pipeline.config.token_ids.seg
    with torch.no_grad():
        cached = forward(pipeline.model, features)

    use_lora(pipeline.model, SPEC)
    assert attached_spec(pipeline.model) == SPEC
    names = list(lora_tensors(pipeline))
    layers = pipeline.model.llm.config.num_hidden_layers
    assert len(names) == 2 * 4 * layers  # A and B on qkv, o, gate_up and down of every layer
    with torch.no_grad():
        torch.testing.assert_close(
            llm_hidden(pipeline.model, features), features.llm_hidden, atol=1e-4, rtol=1e-4
        )
        rerun = forward(pipeline.model, features)
    torch.testing.assert_close(rerun.class_logits, cached.class_logits, atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        for name, param in pipeline.model.named_parameters():
            if is_lora_parameter(name) and ".lora_B." in name:
                param.normal_(std=0.5)
    adapted = pipeline(image, REQUEST).class_logits
    assert adapted is not None and base is not None and not torch.allclose(adapted, base)
    use_lora(pipeline.model, None)
    assert attached_spec(pipeline.model) is None
    assert torch.equal(pipeline(image, REQUEST).class_logits, base)  # type: ignore[arg-type]
    assert "llm.model.layers.0.self_attn.qkv_proj.lora_A.project.weight" not in trainable_state(
        pipeline.model
    )

    # another shape replaces the adapter with a fresh one; the same shape keeps its weights
    use_lora(pipeline.model, SPEC)
    assert any(bool(t.any()) for n, t in lora_tensors(pipeline).items() if ".lora_B." in n)
    use_lora(pipeline.model, LoraSpec(rank=2, alpha=4))
    fresh = lora_tensors(pipeline)
    assert {t.shape[0] for n, t in fresh.items() if ".lora_A." in n} == {2}
    assert not any(bool(t.any()) for n, t in fresh.items() if ".lora_B." in n)
    assert torch.allclose(pipeline(image, REQUEST).class_logits, base, atol=1e-4)  # type: ignore[arg-type]


def test_training_an_adapter_lowers_both_losses_and_the_delta_replays(tiny_model_dir: Path) -> None:
    pipeline = XSamPipeline.from_dir(tiny_model_dir)
    model = pipeline.model
    scenes = [scene(seed) for seed in range(3)]
    features = [extract_features(pipeline, image, CLASSES, llm_inputs=True) for image, _, _ in scenes]
    samples = [make_sample(f, masks, classes, 128) for f, (_, masks, classes) in zip(features, scenes)]
    truths = [ImageTruth(masks, tuple(CLASSES[c] for c in classes)) for _, masks, classes in scenes]
    use_lora(model, SPEC)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("llm.")}
    weights = LossWeights(num_points=1024)
    with torch.no_grad():
        answer_before = [
            float(answer_loss(model, llm_hidden(model, f), f.llm_labels))  # type: ignore[arg-type]
            for f in features
        ]
    before = evaluate([predict_instances(model, f, CLASSES) for f in features], truths)

    report = train(model, samples, TrainConfig(steps=30, learning_rate=2e-3, loss=weights))
    with torch.no_grad():
        answer_after = [
            float(answer_loss(model, llm_hidden(model, f), f.llm_labels))  # type: ignore[arg-type]
            for f in features
        ]
        terms = sample_loss(model, samples[0], weights, torch.Generator().manual_seed(0))
    after = evaluate([predict_instances(model, f, CLASSES) for f in features], truths)

    assert report.mean(first=False) < 0.5 * report.mean(first=True)
    assert after.miou > before.miou + 0.3, (before, after)
    assert sum(answer_after) < sum(answer_before)
    assert terms.llm > 0 and terms.layers == len(model.segmentor.decoder.decoder.layers) + 1
    for name, param in model.named_parameters():
        if is_lora_parameter(name):
            assert param.dtype == torch.float32 and not param.requires_grad
            if ".lora_B." in name:
                assert bool(param.any()), name  # the adapter learnt
        elif name in frozen:
            assert torch.equal(param, frozen[name]), name  # the LLM itself did not move
    assert not model.llm.model.gradient_checkpointing

    delta = trainable_state(model)
    assert sum(is_lora_parameter(n) for n in delta) == len(lora_tensors(pipeline))
    fresh = XSamPipeline.from_dir(tiny_model_dir)
    with pytest.raises(KeyError, match="not a fine-tuned parameter"):
        apply_delta(fresh.model, delta)  # no adapter attached: the delta does not fit
    use_lora(fresh.model, SPEC)
    apply_delta(fresh.model, delta)
    replayed = evaluate([predict_instances(fresh.model, f, CLASSES) for f in features], truths)
    assert replayed.miou == pytest.approx(after.miou, abs=1e-6)


def test_an_adapter_trains_in_fp32_beside_a_bf16_llm(tiny_model_dir: Path) -> None:
    """On CUDA the frozen LLM is bf16: the adapter trains in fp32 and serves in bf16."""
    pipeline = XSamPipeline.from_dir(tiny_model_dir, dtype=torch.bfloat16)
    scenes = [scene(seed) for seed in range(2)]
    features = [extract_features(pipeline, image, CLASSES, llm_inputs=True) for image, _, _ in scenes]
    samples = [make_sample(f, masks, classes, 128) for f, (_, masks, classes) in zip(features, scenes)]
    use_lora(pipeline.model, SPEC)
    report = train(pipeline.model, samples, TrainConfig(steps=4, loss=LossWeights(num_points=512)))
    assert all(torch.isfinite(torch.tensor(report.losses)))
    delta = trainable_state(pipeline.model)
    assert {t.dtype for n, t in delta.items() if is_lora_parameter(n)} == {torch.float32}
    serving = XSamPipeline.from_dir(tiny_model_dir, dtype=torch.bfloat16)
    use_lora(serving.model, SPEC)
    apply_delta(serving.model, delta)
    assert {p.dtype for n, p in serving.model.named_parameters() if is_lora_parameter(n)} == {torch.bfloat16}
    assert serving(scenes[0][0], REQUEST).class_logits is not None
