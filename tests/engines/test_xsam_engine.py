"""The X-SAM engine served from a tiny model converted from the parity bundle."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from repo_paths import SHARED

from xsam_backend.engines.base import Engine
from xsam_backend.engines.xsam_engine import (
    ImageCache,
    XSamEngine,
    best_with_negatives,
    choose_with_negatives,
    image_digest,
)
from xsam_backend.errors import PromptError
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.settings import Settings
from xsam_backend.xsam import processing_post as post
from xsam_backend.xsam.convert import convert_weights
from xsam_backend.xsam.pipeline import XSamPipeline, XSamRequest

PARITY_DIR = Path(os.environ.get("XSAM_PARITY_DIR", SHARED / "xsam_parity"))
pytestmark = pytest.mark.skipif(
    not (PARITY_DIR / "model").is_dir(), reason=f"no parity bundle at {PARITY_DIR}"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_weights(PARITY_DIR, tmp_path_factory.mktemp("tiny") / "xsam-tiny")


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> XSamEngine:
    return XSamEngine.from_dir(model_dir, Settings(device="cpu"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.asarray(Image.open(PARITY_DIR / "cases" / "intseg_box" / "image.png").convert("RGB"))


def click(*points: tuple[float, float], negatives: tuple[tuple[float, float], ...] = ()) -> Prompt:
    coords = tuple(c for p in points for c in p)
    return Prompt(
        task=Task.INTERACTIVE,
        regions=(VisualRegion("point", coords),),
        negative_points=negatives,
        label="Car",
        image_size=(150, 100),
    )


def test_engine_implements_the_protocol(engine: XSamEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name == "xsam"
    assert engine.model_version.startswith("xsam-xsam-tiny-")
    assert all(engine.supports(t) for t in Task)


def test_cached_click_equals_uncached_and_runs_fewer_tokens(model_dir: Path, image: np.ndarray) -> None:
    engine = XSamEngine.from_dir(model_dir, Settings(device="cpu"))
    first = engine.predict(image, click((50.0, 60.0)))
    first_tokens = engine.last_output.tokens_run if engine.last_output else 0
    cached = engine.predict(image, click((50.0, 60.0), (55.0, 70.0)))
    cached_out = engine.last_output
    assert engine.cache.hits == 1 and engine.cache.misses == 1
    assert cached_out is not None and cached_out.tokens_run < first_tokens

    uncached_engine = XSamEngine.from_dir(model_dir, Settings(device="cpu", feature_cache_bytes=0))
    uncached = uncached_engine.predict(image, click((50.0, 60.0), (55.0, 70.0)))
    assert len(uncached_engine.cache) == 0
    ref = uncached_engine.last_output
    assert ref is not None and ref.class_logits is not None and cached_out.class_logits is not None
    torch.testing.assert_close(cached_out.class_logits, ref.class_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_out.mask_logits, ref.mask_logits, atol=1e-5, rtol=1e-5)
    assert np.array_equal(cached.segments[0].mask, uncached.segments[0].mask)
    assert cached.segments[0].score == pytest.approx(uncached.segments[0].score, abs=1e-5)
    assert first.segments[0].mask.shape == (150, 100)
    assert cached.segments[0].label == "Car"


def test_every_task_returns_masks_in_the_original_frame(engine: XSamEngine, image: np.ndarray) -> None:
    prompts = [
        Prompt(task=Task.GENERIC, classes=("car", "road", "sky"), mode="panoptic"),
        Prompt(task=Task.GENERIC, classes=("car", "road"), mode="instance"),
        Prompt(task=Task.GENERIC, classes=("car", "road"), mode="semantic"),
        Prompt(task=Task.REFERRING, text="the red car", label="Car"),
        Prompt(task=Task.REASONING, text="What would someone sit on?", label="Seat"),
        Prompt(task=Task.SIMILAR, regions=(VisualRegion("box", (10, 20, 40, 60)),), label="Car"),
        Prompt(task=Task.INTERACTIVE, regions=(VisualRegion("box", (10, 20, 40, 60)),), label="Car"),
    ]
    for prompt in prompts:
        result = engine.predict(image, prompt)
        assert result.engine == "xsam" and result.model_version == engine.model_version
        assert result.segments, prompt.task
        for segment in result.segments:
            assert segment.mask.shape == (150, 100) and segment.mask.dtype == bool
        if prompt.task is Task.GENERIC:
            assert {s.label for s in result.segments} <= set(prompt.classes)
    assert engine.cache.misses == 1  # one image, one encoder pass


def test_caption_generates_text_within_the_token_limit(model_dir: Path, image: np.ndarray) -> None:
    pipeline = XSamPipeline.from_dir(model_dir)
    pipeline.max_new_tokens = 6
    engine = XSamEngine(pipeline, "tiny")
    result = engine.predict(image, Prompt(task=Task.CAPTION, text="describe"))
    assert engine.last_output is not None and len(engine.last_output.generated_ids) == 6
    assert result.note is not None  # random weights: no single <SEG>, hence no mask


def test_negative_point_rule_prefers_covering_clean_masks() -> None:
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :, :] = True  # covers the negative point
    masks[1, :2, :2] = True  # clean, covers the positive point
    masks[2, 2:, 2:] = True  # clean, misses the positive point, best score
    scores = np.array([0.9, 0.5, 0.8])
    assert choose_with_negatives(masks, scores, [(0.5, 0.5)], [(3.5, 0.5)]) == 1
    assert choose_with_negatives(masks, scores, [(1.5, 3.5)], [(3.5, 0.5)]) == 2
    assert choose_with_negatives(masks[:1], scores[:1], [(0.5, 0.5)], [(3.5, 0.5)]) is None


def test_negative_points_exclude_the_clicked_pixel(engine: XSamEngine, image: np.ndarray) -> None:
    result = engine.predict(image, click((50.0, 60.0), negatives=((20.0, 30.0),)))
    if result.note is None:
        assert not result.segments[0].mask[30, 20]


def test_image_cache_evicts_least_recently_used(engine: XSamEngine, image: np.ndarray) -> None:
    state = engine.pipeline.prepare_image(image)
    size = state.nbytes()
    cache = ImageCache(max_bytes=2 * size)
    for name in ("a", "b", "c"):
        cache.put((name, "v"), state)
    assert len(cache) == 2 and cache.get(("a", "v")) is None and cache.get(("c", "v")) is state
    assert image_digest(image) != image_digest(image[::-1])


def test_bad_prompts_are_prompt_errors(engine: XSamEngine, image: np.ndarray) -> None:
    with pytest.raises(PromptError):
        engine.predict(image, Prompt(task=Task.REFERRING, text="x", image_size=(10, 10)))
    with pytest.raises(PromptError):
        engine.predict(image.astype(np.float32), Prompt(task=Task.REFERRING, text="x"))


def test_bounded_negative_search_equals_the_full_pool_rule() -> None:
    """The early-stopping search picks what the rule picks on every scored mask, ties included."""
    side = 48
    frames = ((side, side), (side, side))
    stopped_early = 0
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        q = 16
        logits = torch.randn(q, 2, generator=gen) * (1 + seed % 3)
        masks = torch.randn(q, side, side, generator=gen) * 3 + torch.randn(q, 1, 1, generator=gen) * 2
        masks[:, : side // 2] += torch.linspace(-4, 4, q).view(q, 1, 1)
        for src, dst in torch.randint(0, q, (3, 2), generator=gen).tolist():
            logits[dst], masks[dst] = logits[src], masks[src]
        points = (torch.rand(3, 2, generator=gen) * side).tolist()
        positives, negatives = [tuple(points[0])], [tuple(p) for p in points[1 : 1 + seed % 3]]
        pool = post.instance_postprocess(
            logits, masks, *frames, post.PostprocessThresholds(instance_score=0.0)
        )
        want = choose_with_negatives(pool.masks.numpy(), pool.scores.numpy(), positives, negatives)
        visited: list[post.RankedInstance] = []
        ranked = _recording(post.instances_by_class_probability(logits, masks, *frames), visited)
        got = best_with_negatives(ranked, positives, negatives)
        assert (got.rank if got is not None else None) == want, seed
        if got is not None:
            assert got.score == float(pool.scores[want]) and torch.equal(got.mask, pool.masks[want])
        stopped_early += len(visited) < q
    assert stopped_early > 0


def _recording(
    ranked: Iterator[post.RankedInstance], seen: list[post.RankedInstance]
) -> Iterator[post.RankedInstance]:
    for instance in ranked:
        seen.append(instance)
        yield instance


def test_prompts_never_write_into_the_cached_prefix(engine: XSamEngine, image: np.ndarray) -> None:
    state = engine.pipeline.prepare_image(image)
    engine.pipeline.run(state, XSamRequest(task="refseg", expressions=("the car",)))
    (prefix,) = state.prefixes.values()
    before = [(layer.keys.clone(), layer.values.clone()) for layer in prefix.cache.layers]
    length = prefix.cache.get_seq_length()
    engine.pipeline.run(state, XSamRequest(task="refseg", expressions=("a much longer phrase, the road",)))
    assert prefix.cache.get_seq_length() == length
    for layer, (keys, values) in zip(prefix.cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_semantic_segments_carry_pixel_class_probabilities(engine: XSamEngine, image: np.ndarray) -> None:
    result = engine.predict(image, Prompt(task=Task.GENERIC, classes=("car", "road", "sky"), mode="semantic"))
    out = engine.last_output
    assert out is not None and result.segments
    sem = out.results["semantic"]
    for segment in result.segments:
        k = ("car", "road", "sky").index(segment.label)
        assert 0.0 < segment.score < 1.0 and segment.score == pytest.approx(float(sem.scores[k]))


def test_referring_with_several_expressions_reads_each_seg(engine: XSamEngine, image: np.ndarray) -> None:
    state = engine.pipeline.prepare_image(image)
    out = engine.pipeline.run(state, XSamRequest(task="refseg", expressions=("the car", "the road")))
    passes = out.results["refseg_all"]
    assert out.has_masks and len(passes) == 2
    assert [p.category_id for p in passes] == [0, 1] and passes[0] is out.results["refseg"]
    assert all(p.mask.shape == (150, 100) for p in passes)


def test_a_cached_click_reuses_the_decoder_state_of_the_image(model_dir: Path, image: np.ndarray) -> None:
    engine = XSamEngine.from_dir(model_dir, Settings(device="cpu"))
    engine.predict(image, click((50.0, 60.0)))
    key = (image_digest(image), engine.model_version)
    state = engine.cache.get(key)
    assert state is not None
    decoder = state.decoder
    keys = [k.clone() for k in decoder.keys]
    engine.predict(image, click((50.0, 60.0), (55.0, 70.0)))
    again = engine.cache.get(key)
    assert again is state and again.decoder is decoder
    assert all(torch.equal(k, before) for k, before in zip(decoder.keys, keys))
    assert decoder.nbytes() > 0
    assert state.nbytes() == state.features.nbytes() + decoder.nbytes() + sum(
        p.nbytes() for p in state.prefixes.values()
    )
    # the state is the one a fresh pass would build from these features
    with torch.no_grad():
        fresh = engine.pipeline.model.prepare_decoder(state.features)
    assert all(torch.equal(a, b) for a, b in zip(fresh.keys, decoder.keys))
    assert all(torch.equal(a, b) for a, b in zip(fresh.values, decoder.values))
