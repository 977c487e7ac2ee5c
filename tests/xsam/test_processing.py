"""Pre- and post-processing against the official implementation's recorded tensors.

Every case of the parity bundle (``../shared/xsam_parity``; ``XSAM_PARITY_DIR`` overrides it)
holds the official SigLIP/SAM inputs, prompt masks, sampler points, decoder logits and every
task's post-processed output. The stages here are fed the recorded inputs (image, prompt masks,
``class_queries_logits`` and the decoder's low-resolution mask logits) and must reproduce the
recorded outputs: pixel tensors, masks, maps and integer results exactly; float logits and scores
within ``ATOL`` (fp32; the reference is bitwise deterministic and so far every stage matches
bit for bit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from repo_paths import SHARED

from xsam_backend.errors import PromptError
from xsam_backend.xsam import processing
from xsam_backend.xsam.processing import (
    PostprocessThresholds,
    SamPreprocessConfig,
    SiglipPreprocessConfig,
    box_prompt_mask,
    line_pixels,
    point_prompt_mask,
    polyline_prompt_mask,
    postprocess,
    preprocess_prompt_masks,
    preprocess_sam,
    preprocess_siglip,
    sam_scaled_size,
    sample_prompt_points,
    sem_seg_postprocess,
    upsample_mask_logits,
)

safetensors_torch = pytest.importorskip("safetensors.torch")

PARITY_DIR = Path(os.environ.get("XSAM_PARITY_DIR", SHARED / "xsam_parity"))
ATOL = 1e-5
CASES = sorted(p.parent for p in (PARITY_DIR / "cases").glob("*/case.json"))


class Case:
    """One parity case: ``case.json``, ``expected.json``, the tensors and the images."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.case: dict[str, Any] = json.loads((path / "case.json").read_text())
        self.expected: dict[str, Any] = json.loads((path / "expected.json").read_text())
        self.t: dict[str, torch.Tensor] = safetensors_torch.load_file(str(path / "expected.safetensors"))
        self.image = np.asarray(Image.open(path / self.case["image"]).convert("RGB"))

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def scaled_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.t["input.scaled_size"])  # type: ignore[return-value]

    def prompt_masks(self) -> np.ndarray:
        files = [vp["mask_file"] for vp in self.case.get("visual_prompts") or []]
        return np.stack([np.asarray(Image.open(self.path / f)) > 0 for f in files])


@pytest.fixture(scope="module")
def configs() -> tuple[SiglipPreprocessConfig, SamPreprocessConfig]:
    processors = json.loads((PARITY_DIR / "model" / "config.json").read_text())["image_processors"]
    sig, sam = processors["siglip"], processors["sam"]
    return (
        SiglipPreprocessConfig(
            size=sig["size"]["height"],
            resample=sig["resample"],
            mean=tuple(sig["image_mean"]),
            std=tuple(sig["image_std"]),
            fill=tuple(sig["expand_to_square_fill"]),
        ),
        SamPreprocessConfig(
            longest_edge=sam["size"]["longest_edge"],
            pad_size=sam["pad_size"]["height"],
            resample=sam["resample"],
            mean=tuple(sam["image_mean"]),
            std=tuple(sam["image_std"]),
        ),
    )


def _case_params(predicate: Any = None) -> list[Any]:
    return [
        pytest.param(p, id=p.name)
        for p in CASES
        if predicate is None or predicate(json.loads((p / "case.json").read_text()))
    ]


def _has_vprompts(case: dict[str, Any]) -> bool:
    return bool(case.get("visual_prompts"))


@pytest.mark.parametrize("path", _case_params())
def test_siglip_and_sam_inputs(
    path: Path, configs: tuple[SiglipPreprocessConfig, SamPreprocessConfig]
) -> None:
    c = Case(path)
    siglip_config, sam_config = configs
    assert torch.equal(preprocess_siglip(c.image, siglip_config), c.t["input.siglip_pixel_values"])
    sam = preprocess_sam(c.image, sam_config)
    assert torch.equal(sam.pixel_values, c.t["input.sam_pixel_values"])
    assert sam.scaled_size == c.scaled_size == sam_scaled_size(c.image_size, sam_config.longest_edge)
    assert sam.original_size == c.image_size == tuple(int(v) for v in c.t["input.image_size"])


@pytest.mark.parametrize("path", _case_params(_has_vprompts))
def test_prompt_masks_and_sampler_points(
    path: Path, configs: tuple[SiglipPreprocessConfig, SamPreprocessConfig]
) -> None:
    c = Case(path)
    padded = preprocess_prompt_masks(c.prompt_masks(), configs[1])
    assert torch.equal(padded, c.t["input.vprompt_masks"])
    for k, vp in enumerate(c.case["visual_prompts"]):
        png = np.asarray(Image.open(path / vp["preprocessed_mask_file"])) > 0
        assert np.array_equal(padded[k].numpy().astype(bool), png)
        points = sample_prompt_points(padded[k])
        assert torch.equal(points, c.t["sampler.points_yx_norm"][k])


@pytest.mark.parametrize("path", _case_params(_has_vprompts))
def test_visual_prompt_rendering_matches_official_masks(path: Path) -> None:
    c = Case(path)
    for vp, expected in zip(c.case["visual_prompts"], c.prompt_masks()):
        if vp["type"] == "point":
            mask = point_prompt_mask(c.image_size, [tuple(vp["point_xy"])], vp["radius"])
        elif vp["type"] == "box":
            mask = box_prompt_mask(c.image_size, vp["box_xyxy"])
        else:
            mask = polyline_prompt_mask(c.image_size, [tuple(p) for p in vp["polyline_xy"]], vp["radius"])
        assert np.array_equal(mask, expected), vp["type"]


def _has_logits(case: dict[str, Any]) -> bool:
    return not case.get("negative")


@pytest.mark.parametrize("path", _case_params(_has_logits))
def test_mask_logits_resize_chain(path: Path) -> None:
    c = Case(path)
    if "decoder.masks_queries_logits_lowres" not in c.t:
        pytest.skip("no mask output recorded")
    pad = int(c.t["input.sam_pixel_values"].shape[-1])
    padded = upsample_mask_logits(c.t["decoder.masks_queries_logits_lowres"], pad)
    if "masks_queries_logits" in c.t:
        torch.testing.assert_close(padded, c.t["masks_queries_logits"], rtol=0, atol=ATOL)
    orig = sem_seg_postprocess(padded[0], c.scaled_size, c.image_size)
    torch.testing.assert_close(orig[None], c.t["masks_queries_logits_orig"], rtol=0, atol=ATOL)


def _thresholds(c: Case) -> PostprocessThresholds:
    th = c.case.get("thresholds") or {}
    return PostprocessThresholds(
        panoptic_score=th.get("panoptic", 0.5),
        instance_score=th.get("instance", 0.5),
        vgd_score=th.get("score", 0.5),
        intseg_score=th.get("score", 0.5),
        mask=th.get("mask", 0.5),
    )


def _run_post(c: Case) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    pad = int(c.t["input.sam_pixel_values"].shape[-1])
    mask_logits = upsample_mask_logits(c.t["decoder.masks_queries_logits_lowres"], pad)[0]
    trace: dict[str, torch.Tensor] = {}
    task = c.case["task"]
    prompt_masks = c.prompt_masks() if task in ("vgdseg", "intseg") else None
    results = postprocess(
        task,
        c.t["class_queries_logits"][0],
        mask_logits,
        scaled_size=c.scaled_size,
        image_size=c.image_size,
        thresholds=_thresholds(c),
        segmentation=("panoptic", "instance", "semantic"),
        stuff_indices=c.case.get("stuff_indices") or (),
        prompt_masks=prompt_masks,
        trace=trace,
    )
    return results, trace


def _has_post(case: dict[str, Any]) -> bool:
    return not case.get("negative")


@pytest.mark.parametrize("path", _case_params(_has_post))
def test_postprocessing_matches_official(path: Path) -> None:
    c = Case(path)
    assert c.expected["has_masks"]
    results, trace = _run_post(c)
    post_keys = [k for k in c.t if k.startswith("post.")]
    assert post_keys
    for key in post_keys:
        got, want = trace[key], c.t[key]
        if want.is_floating_point():
            torch.testing.assert_close(got.to(want.dtype), want, rtol=0, atol=ATOL, msg=key)
        else:
            assert torch.equal(got.to(torch.int64), want.to(torch.int64)), key

    e = c.expected
    if "panoptic" in e:
        segs = [(s.id, s.category_id, s.isthing, s.score) for s in results["panoptic"].segments]
        want_segs = [
            (s["id"], s["category_id"], s["isthing"], s["score"]) for s in e["panoptic"]["segments_info"]
        ]
        assert segs == want_segs
    if "instance" in e:
        got_scores = [round(float(s), 6) for s in results["instance"].scores]
        assert got_scores == [s["score"] for s in e["instance"]["segments_info"]]
    if "refseg" in e:
        assert results["refseg"].score == e["refseg"]["score"]
        assert int(results["refseg"].mask.sum()) == e["refseg"]["area"]
    if "gcgseg" in e:
        want_scores = [s["score"] for s in e["gcgseg"]["segments_info"]]
        assert [round(float(s), 6) for s in results["gcgseg"].scores] == want_scores
    if "vgdseg" in e:
        got = [
            (int(k), round(float(s), 6)) for k, s in zip(results["vgdseg"].classes, results["vgdseg"].scores)
        ]
        assert got == [(s["label_id"], s["score"]) for s in e["vgdseg"]["segments_info"]]
    if "intseg" in e:
        ints, want = results["intseg"], e["intseg"]
        assert (ints.score, ints.category_id, int(ints.mask.sum())) == (
            want["score"],
            want["category_id"],
            want["area"],
        )
        diag = want["diagnostics"]
        assert ints.prompt_box.tolist() == diag["prompt_box_xyxy"]
        # The recorded diagnostics list the candidates by query index.
        order = torch.argsort(ints.candidate_queries)
        assert ints.candidate_queries[order].tolist() == diag["kept_query_indices"]
        assert ints.candidate_boxes[order].tolist() == diag["kept_boxes_xyxy"]
        want_ious = torch.tensor(diag["kept_iou_with_prompt_box"])
        torch.testing.assert_close(ints.ious[order], want_ious, rtol=0, atol=1e-6)


# -- behaviour beyond the recorded cases ---------------------------------------------------------


def test_sampler_is_deterministic_and_max_pool_equivalent_below_count() -> None:
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[10:15, 20:30] = 1  # 50 pixels < 256
    points = sample_prompt_points(mask)
    assert points.shape == (256, 2) and points.dtype == torch.float32
    unique = {tuple(p) for p in points.tolist()}
    assert unique == {(r / 64, c / 64) for r in range(10, 15) for c in range(20, 30)}
    big = torch.zeros(64, 64, dtype=torch.uint8)
    big[:40, :40] = 1  # 1600 pixels > 256: evenly spaced subset, the same every call
    a, b = sample_prompt_points(big), sample_prompt_points(big)
    assert torch.equal(a, b) and a.shape == (256, 2)
    assert len({tuple(p) for p in a.tolist()}) == 256
    with pytest.raises(PromptError):
        sample_prompt_points(torch.zeros(8, 8))


def test_line_pixels_matches_skimage() -> None:
    draw = pytest.importorskip("skimage.draw")
    rng = np.random.default_rng(0)
    for _ in range(200):
        r0, c0, r1, c1 = (int(v) for v in rng.integers(0, 40, size=4))
        rows, cols = line_pixels(r0, c0, r1, c1)
        want_r, want_c = draw.line(r0, c0, r1, c1)
        assert rows.tolist() == want_r.tolist() and cols.tolist() == want_c.tolist()


def test_box_and_point_prompts_in_continuous_pixel_coordinates() -> None:
    box = box_prompt_mask((20, 30), (2.4, 3.6, 10.5, 8.0))
    rows, cols = np.nonzero(box)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 7, 2, 9)
    point = point_prompt_mask((50, 50), [(10.7, 20.2)], radius=2)
    assert point[20, 10] and point[22, 10] and not point[23, 10] and point.sum() == 13
    with pytest.raises(PromptError):
        point_prompt_mask((50, 50), [(60.0, 1.0)])
    with pytest.raises(PromptError):
        box_prompt_mask((20, 30), (40, 1, 50, 5))


def test_postprocess_rejects_unknown_task_and_missing_prompt_masks() -> None:
    logits = torch.zeros(3, 2)
    masks = torch.zeros(3, 16, 16)
    with pytest.raises(ValueError, match="unknown"):
        postprocess("chat", logits, masks, scaled_size=(16, 16), image_size=(16, 16))
    with pytest.raises(ValueError, match="prompt masks"):
        postprocess("intseg", logits, masks, scaled_size=(16, 16), image_size=(16, 16))
    assert processing.Thresholds is PostprocessThresholds


def test_region_prompt_mask_for_each_kind() -> None:
    from xsam_backend.prompt import VisualRegion
    from xsam_backend.xsam.processing import region_prompt_mask

    size = (40, 60)
    two_clicks = region_prompt_mask(VisualRegion("point", (10.5, 10.5, 40.5, 30.5)), size)
    assert two_clicks[10, 10] and two_clicks[30, 40] and not two_clicks[20, 25]
    box = region_prompt_mask(VisualRegion("box", (5, 6, 15, 16)), size)
    assert box.sum() == 100
    stroke = np.zeros(size, dtype=bool)
    stroke[20, 30] = True
    scribble = region_prompt_mask(VisualRegion("scribble", (), mask={"size": [40, 60]}), size, stroke)
    assert scribble.sum() == 81  # the disk of radius 5
    with pytest.raises(PromptError):
        region_prompt_mask(VisualRegion("scribble", (), mask={"size": [40, 60]}), size)


def test_no_confident_query_gives_empty_panoptic_and_instances() -> None:
    from xsam_backend.xsam.processing import instance_postprocess, panoptic_postprocess

    logits = torch.tensor([[-5.0, 5.0], [-6.0, 6.0]])  # background wins everywhere
    masks = torch.randn(2, 32, 32)
    th = PostprocessThresholds(panoptic_score=0.5, instance_score=0.5)
    pan = panoptic_postprocess(logits, masks, (32, 20), (64, 40), (), th)
    assert pan.segments == () and pan.segmentation.shape == (64, 40) and not pan.segmentation.any()
    ins = instance_postprocess(logits, masks, (32, 20), (64, 40), th)
    assert ins.masks.shape == (0, 64, 40) and (ins.segmentation == -1).all()


def test_pruned_generic_postprocessing_equals_the_full_official_computation() -> None:
    """Leaving out unconfident queries before resizing changes nothing (official rules inline)."""
    from xsam_backend.xsam.processing import instance_postprocess, panoptic_postprocess

    gen = torch.Generator().manual_seed(0)
    q, c = 12, 3
    logits = torch.randn(q, c + 1, generator=gen) * 3
    masks = torch.randn(q, 32, 32, generator=gen) * 4
    scaled, size = (32, 24), (50, 37)
    th = PostprocessThresholds(panoptic_score=0.5, instance_score=0.45)
    full = sem_seg_postprocess(masks, scaled, size)
    probs = torch.softmax(logits, -1)[:, :-1]

    ins = instance_postprocess(logits, masks, scaled, size, th)
    scores, topk = probs.flatten().topk(q, sorted=False)
    picked = full[topk // c]
    binary = (picked > 0).float()
    mask_scores = (picked.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    total = scores * mask_scores
    keep = total >= th.instance_score
    assert 0 < int(keep.sum()) < q
    assert torch.equal(ins.scores, total[keep]) and torch.equal(ins.masks, binary[keep].bool())

    pan = panoptic_postprocess(logits, masks, scaled, size, (), th)
    score, label = probs.max(-1)
    kept = score > th.panoptic_score
    weighted = full[kept].sigmoid() * score[kept].view(-1, 1, 1)
    winner = weighted.argmax(0)
    expected_ids = torch.zeros(size, dtype=torch.int32)
    n = 0
    for k in range(int(kept.sum())):
        area, own = (winner == k).sum(), (weighted[k] >= th.mask).sum()
        if area > 0 and own > 0 and (area / own).item() > th.overlap_area:
            n += 1
            expected_ids[winner == k] = n
    assert len(pan.segments) == n and torch.equal(pan.segmentation, expected_ids)


# -- pruned and low-resolution post-processing equal the official computation ---------------------


def _official_intseg(
    logits: torch.Tensor,
    padded: torch.Tensor,
    scaled: tuple[int, int],
    size: tuple[int, int],
    prompt: torch.Tensor,
    threshold: float,
) -> dict[str, Any]:
    """``intseg_postprocess_fn`` written out without pruning: every query resized and scored."""
    from xsam_backend.xsam.processing import box_iou, masks_to_boxes

    probs = torch.softmax(logits, -1)[:, :-1]
    q, c = probs.shape
    class_scores, topk = probs.flatten().topk(q, sorted=False)
    queries = torch.div(topk, c, rounding_mode="floor")
    full = sem_seg_postprocess(padded, scaled, size)[queries]
    binary = (full > 0).float()
    mask_scores = (full.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = class_scores * mask_scores
    keep = (scores >= threshold) | (scores == scores.max())
    boxes = masks_to_boxes(binary[keep])
    prompt_orig = sem_seg_postprocess(prompt[None], scaled, size, mode="nearest") > 0
    ious = box_iou(boxes, masks_to_boxes(prompt_orig))[:, 0]
    best = int(ious.argmax())
    return {
        "queries": queries[keep],
        "scores": scores[keep],
        "boxes": boxes,
        "ious": ious,
        "index": best,
        "mask": binary[keep][best].bool(),
    }


def _random_decoder_output(seed: int, q: int = 24, c: int = 1, low: int = 16) -> tuple[torch.Tensor, ...]:
    """Class logits ``(q, c + 1)`` and low-resolution mask logits ``(q, low, low)``; a few queries
    are exact copies of others (tied scores, tied boxes)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(q, c + 1, generator=gen) * (1 + seed % 4)
    lowres = torch.randn(q, low, low, generator=gen) * 4 + torch.randn(q, 1, 1, generator=gen) * 3
    copies = torch.randint(0, q, (3, 2), generator=gen)
    for src, dst in copies.tolist():
        logits[dst], lowres[dst] = logits[src], lowres[src]
    top = int(torch.softmax(logits, -1)[:, 0].argmax())
    logits[(top + 1) % q], lowres[(top + 1) % q] = logits[top], lowres[top]  # a tie at the top
    return logits, lowres


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_pruned_intseg_equals_the_unpruned_official_computation(threshold: float) -> None:
    """Bit for bit, ties included. The masks are given in the original frame (no resize), so the
    only difference from the official computation is which queries get scored."""
    from xsam_backend.xsam.processing import intseg_postprocess

    side = 64
    pruned_somewhere, tied_at_top = False, 0
    for seed in range(40):
        logits, lowres = _random_decoder_output(seed)
        masks = upsample_mask_logits(lowres, side)
        prompt = _prompt_box(seed, side)
        th = PostprocessThresholds(intseg_score=threshold)
        want = _official_intseg(logits, masks, (side, side), (side, side), prompt, threshold)
        got = intseg_postprocess(logits, masks, (side, side), (side, side), prompt, th)
        assert torch.equal(got.candidate_queries, want["queries"]), seed
        assert torch.equal(got.candidate_scores, want["scores"]), seed
        assert torch.equal(got.candidate_boxes, want["boxes"]), seed
        assert torch.equal(got.ious, want["ious"]), seed
        assert got.index == want["index"] and torch.equal(got.mask, want["mask"]), seed
        assert got.score == round(float(want["scores"][want["index"]]), 6)
        tied_at_top += int((want["scores"] == want["scores"].max()).sum()) >= 2
        pruned_somewhere |= got.scored < logits.shape[0]
    assert tied_at_top > 0
    if threshold > 0:
        assert pruned_somewhere


def _prompt_box(seed: int, side: int) -> torch.Tensor:
    prompt = torch.zeros(side, side, dtype=torch.uint8)
    y, x = (seed * 7) % (side - 14), (seed * 11) % (side - 10)
    prompt[y : y + 12, x : x + 9] = 1
    return prompt


@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_pruned_intseg_from_low_resolution_logits_matches_the_official_choice(threshold: float) -> None:
    """Through the real resize chain (stride-8 logits, crop, resize to another size): the same
    candidates and choice; scores agree to float rounding (resizing a different number of planes
    may round the last bit differently)."""
    from xsam_backend.xsam.processing import intseg_postprocess

    scaled, size, pad = (64, 48), (70, 52), 64
    for seed in range(20):
        gen = torch.Generator().manual_seed(1000 + seed)
        logits = torch.randn(24, 2, generator=gen) * 2
        lowres = torch.randn(24, 16, 16, generator=gen) * 4 + torch.randn(24, 1, 1, generator=gen) * 3
        prompt = _prompt_box(seed, pad)
        want = _official_intseg(logits, upsample_mask_logits(lowres, pad), scaled, size, prompt, threshold)
        th = PostprocessThresholds(intseg_score=threshold)
        got = intseg_postprocess(logits, lowres, scaled, size, prompt, th, pad_size=pad)
        assert torch.equal(got.candidate_queries, want["queries"]), seed
        torch.testing.assert_close(got.candidate_scores, want["scores"], rtol=0, atol=1e-6)
        assert torch.equal(got.candidate_boxes, want["boxes"]) and got.index == want["index"], seed
        assert torch.equal(got.mask, want["mask"]), seed


def test_low_resolution_input_gives_the_official_results_for_every_task() -> None:
    from xsam_backend.xsam.processing import (
        gcgseg_postprocess,
        instance_postprocess,
        panoptic_postprocess,
        refseg_postprocess,
        semantic_postprocess,
        vgdseg_postprocess,
    )

    scaled, size, pad = (64, 40), (90, 57), 64
    th = PostprocessThresholds(panoptic_score=0.3, instance_score=0.2, vgd_score=0.2)
    for seed in range(4):
        logits, lowres = _random_decoder_output(seed, q=16, c=3)
        padded = upsample_mask_logits(lowres, pad)
        pan = [
            panoptic_postprocess(logits, m, scaled, size, (1,), th, **kw) for m, kw in _inputs(lowres, pad)
        ]
        assert pan[0].segments == pan[1].segments and torch.equal(pan[0].segmentation, pan[1].segmentation)
        for fn in (instance_postprocess, vgdseg_postprocess):
            a, b = (fn(logits, m, scaled, size, th, **kw) for m, kw in _inputs(lowres, pad))
            assert a.masks.shape[0] > 0
            for name in ("masks", "classes", "boxes", "segmentation"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            # Upsampling fewer planes at once may round the last bit of a logit differently.
            torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-6)
        sem = [semantic_postprocess(logits, m, scaled, size, **kw) for m, kw in _inputs(lowres, pad)]
        assert torch.equal(sem[0], sem[1])
        gcg = [gcgseg_postprocess(logits, m, scaled, size, **kw) for m, kw in _inputs(lowres, pad)]
        assert torch.equal(gcg[0].segmentation, gcg[1].segmentation)
        one = logits[:, [0, -1]]
        ref = [refseg_postprocess(one, m, scaled, size, **kw) for m, kw in _inputs(lowres, pad)]
        assert torch.equal(ref[0].mask, ref[1].mask) and ref[0].score == ref[1].score
        assert torch.equal(padded, upsample_mask_logits(lowres, pad))


def _inputs(lowres: torch.Tensor, pad: int) -> list[tuple[torch.Tensor, dict[str, int]]]:
    return [(upsample_mask_logits(lowres, pad), {}), (lowres, {"pad_size": pad})]


def test_instances_by_class_probability_lists_the_official_pool_in_bound_order() -> None:
    from xsam_backend.xsam.processing import instance_postprocess
    from xsam_backend.xsam.processing_post import instances_by_class_probability

    side = 64  # no resize: the scores are bit for bit those of the batched official call
    for seed in range(6):
        logits, lowres = _random_decoder_output(seed, q=12, c=2)
        masks = upsample_mask_logits(lowres, side)
        frames = ((side, side), (side, side))
        pool = instance_postprocess(logits, masks, *frames, PostprocessThresholds(instance_score=0.0))
        ranked = list(instances_by_class_probability(logits, masks, *frames))
        assert sorted(r.rank for r in ranked) == list(range(12))
        bounds = [r.class_prob for r in ranked]
        assert bounds == sorted(bounds, reverse=True)
        for r in ranked:
            assert r.score <= r.class_prob
            assert r.score == float(pool.scores[r.rank]) and int(pool.classes[r.rank]) == r.category_id
            assert torch.equal(r.mask, pool.masks[r.rank])


def test_semantic_scores_are_mean_pixel_class_probabilities() -> None:
    from xsam_backend.xsam.processing_post import semantic_segments

    logits = torch.tensor([[2.0, 0.0, -1.0], [-3.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    masks = torch.full((3, 32, 32), -30.0)
    masks[0, :, :16] = 30.0  # query 0 owns the left half, query 1 the right half
    masks[1, :, 16:] = 30.0
    result = semantic_segments(logits, masks, (32, 32), (32, 32))
    probs = torch.softmax(logits, -1)[:, :-1]
    assert torch.equal(result.segmentation, semantic_postprocess_of(logits, masks))
    assert (result.segmentation[:, :15] == 0).all() and (result.segmentation[:, 17:] == 1).all()
    # Away from the seam one query's sigmoid is 1 and the others' ~0: p(c | x) = P(c | that query).
    assert float(result.scores[0]) == pytest.approx(float(probs[0, 0]), abs=0.02)
    assert float(result.scores[1]) == pytest.approx(float(probs[1, 1]), abs=0.02)
    assert ((result.scores >= 0) & (result.scores <= 1)).all()


def semantic_postprocess_of(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    from xsam_backend.xsam.processing import semantic_postprocess

    return semantic_postprocess(logits, masks, (32, 32), (32, 32))


def test_refseg_reads_the_category_of_its_seg_pass() -> None:
    from xsam_backend.xsam.processing import refseg_postprocess

    logits = torch.tensor([[4.0, -4.0, 0.0], [-4.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    masks = torch.zeros(3, 16, 16)
    masks[1, :4, :4] = 9.0
    masks[0, 8:, 8:] = 9.0
    second = refseg_postprocess(logits, masks, (16, 16), (16, 16), category=1)
    assert second.query == 1 and second.category_id == 1 and int(second.mask.sum()) > 0
    assert second.mask[0, 0] and not second.mask[12, 12]
    assert refseg_postprocess(logits, masks, (16, 16), (16, 16)).query == 0
    with pytest.raises(ValueError, match="out of range"):
        refseg_postprocess(logits, masks, (16, 16), (16, 16), category=2)


def test_masks_to_boxes_edges_and_empty_masks() -> None:
    from xsam_backend.xsam.processing import masks_to_boxes

    masks = torch.zeros(3, 5, 7, dtype=torch.bool)
    masks[0, 4, 6] = True  # the last pixel: exclusive corner at the image size
    masks[1, 1:3, 0:2] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[6.0, 4.0, 7.0, 5.0], [0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]]
    assert boxes.dtype == torch.float32 and masks_to_boxes(masks[:0]).shape == (0, 4)
