"""CPU benchmark of the X-SAM pipeline with a mid-size random-weight model.

Real input geometry (SigLIP 384², SAM 1024², 1753 image tokens, the Phi-3 tokenizer) with
narrow, shallow modules, and the release's Mask2Former decoder (200 queries, 9 layers, 128² masks).
Prints per-stage times (the decoder with and without its cached image-only state, the interactive
post-processing), a first click versus a cached click on the same image, the LLM tokens run per
click, and the load average (the timings are only comparable under similar load).

    python bench/bench_xsam_cpu.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from bench.bench_xsam_gpu import load_tokenizer
from xsam_backend.engines.xsam_engine import XSamEngine
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.xsam import processing_post as post
from xsam_backend.xsam.config import XSamConfig
from xsam_backend.xsam.modeling import XSamModel
from xsam_backend.xsam.pipeline import XSamPipeline

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "model_weights" / "xsam-s3-phi3-mini-siglip2-sam-large.config.json"
TOKENIZER = ROOT.parent / "shared" / "xsam_full_size" / "phi3_tokenizer"


def mid_size_config() -> XSamConfig:
    """The release geometry with narrow modules: LLM 512 x 4 layers, SigLIP 256 x 4, SAM 256 x 4."""
    data = copy.deepcopy(json.loads(RELEASE.read_text()))
    data["llm_config_phi3"].update(
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    data["vision_config_siglip"].update(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4
    )
    data["sam_vision_config"].update(
        hidden_size=256, mlp_dim=512, num_hidden_layers=4, num_attention_heads=4, global_attn_indexes=[1, 3]
    )
    x = data["xsam"]
    x["seg_select_layers_used"] = [2, 3, 4]
    x["visual_projector"].update({"in": 256, "hidden": 512, "out": 512})
    x["seg_projector"].update({"in": 1024, "hidden": 512, "out": 512})
    x["llm_projector"].update({"in": 512})
    x["seg_connector"].update(in_channels=[256, 256, 256], hidden_channels=128)
    data["mask2former_config"].update(feature_channels=[128, 256, 512])
    return XSamConfig.from_dict(data)


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Best wall time of ``repeats`` calls (at least one) and the last call's result."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = mid_size_config()
    model = XSamModel(config).eval()
    tokenizer = load_tokenizer(TOKENIZER)
    pipeline = XSamPipeline(model, tokenizer, config)
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)

    rows = []
    with torch.inference_mode():
        siglip = torch.randn(1, 3, 384, 384)
        sam = torch.randn(1, 3, 1024, 1024)
        t, _ = timed(lambda: model.visual_encoder(siglip, output_hidden_states=True), args.repeats)
        rows.append(("SigLIP encoder", t))
        t, states = timed(lambda: model.segmentor.encode(sam), args.repeats)
        rows.append(("SAM encoder", t))
        t, conn = timed(
            lambda: model.seg_connector([states[i] for i in config.seg_select_layers]), args.repeats
        )
        rows.append(("connector", t))
        t, _ = timed(lambda: model.segmentor.decode_pixels(conn), args.repeats)
        rows.append(("pixel decoder", t))
        t, state = timed(lambda: pipeline.prepare_image(image), args.repeats)
        rows.append(("prepare_image (pre-processing + all of the above)", t))
        t, _ = timed(lambda: model.prepare_decoder(state.features), args.repeats)
        rows.append(("  decoder image-only state (keys/values of 9 layers)", t))
        width = model.bg_embeds.weight.shape[1]
        conds, seg = torch.randn(2, width), torch.randn(width)
        t, _ = timed(lambda: model.decode(state.features, seg, conds), args.repeats)
        rows.append(("decoder without the cached state", t))
        t, decoded = timed(lambda: model.decode(state.decoder, seg, conds), args.repeats)
        rows.append(("decoder on the cached state (what a click runs)", t))
        prompt_mask = torch.zeros(config.sam_image_size, config.sam_image_size, dtype=torch.uint8)
        prompt_mask[300:340, 400:440] = 1
        logits, masks = decoded.class_logits[0], decoded.mask_logits[0]
        frames = (state.scaled_size, state.image_size)
        t, _ = timed(
            lambda: post.intseg_postprocess(
                logits, masks, *frames, prompt_mask, pad_size=config.sam_image_size
            ),
            args.repeats,
        )
        rows.append(("intseg post-processing", t))

    def click(n: int, negatives: tuple[tuple[float, float], ...] = ()) -> Prompt:
        coords = tuple(float(c) for i in range(n) for c in (300 + 5 * i, 200 + 3 * i))
        return Prompt(
            task=Task.INTERACTIVE,
            regions=(VisualRegion("point", coords),),
            negative_points=negatives,
            label="x",
        )

    first_times, cached_times, negative_times, tokens = [], [], [], []
    for r in range(args.repeats):
        engine = XSamEngine(pipeline, f"bench-{r}")
        start = time.perf_counter()
        engine.predict(image, click(1))
        first_times.append(time.perf_counter() - start)
        first_tokens = engine.last_output.tokens_run if engine.last_output else 0
        start = time.perf_counter()
        engine.predict(image, click(2))
        cached_times.append(time.perf_counter() - start)
        tokens.append((first_tokens, engine.last_output.tokens_run if engine.last_output else 0))
        start = time.perf_counter()
        engine.predict(image, click(2, negatives=((100.0, 400.0),)))
        negative_times.append(time.perf_counter() - start)
    first, cached = min(first_times), min(cached_times)
    rows += [
        ("first click (encode image + prefix + suffix + decoder)", first),
        ("cached click", cached),
        ("cached click with a negative point", min(negative_times)),
    ]

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"mid-size random X-SAM on CPU ({torch.get_num_threads()} threads), best of {args.repeats}")
    print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} cores")
    print(f"{'stage':58s} {'ms':>9s}")
    for name, t in rows:
        print(f"{name:58s} {t * 1000:9.1f}")
    print(f"{'cached click speed-up':58s} {first / cached:8.1f}x")
    print(f"{'LLM tokens run: first click / cached click':58s} {tokens[0][0]:>4d} / {tokens[0][1]}")


if __name__ == "__main__":
    main()
