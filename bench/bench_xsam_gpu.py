"""GPU benchmark of the full-size X-SAM architecture with random bf16 weights.

The release architecture (``model_weights/xsam-s3-...config.json``: Phi-3-mini, SigLIP2, SAM
ViT-L, Mask2Former) is built on the meta device and materialised directly on the GPU with random
weights, so no 9 GB host copy is ever made; precision as the engine (bf16, the Mask2Former
decoders in fp32). Prints per-stage latency, a first versus a cached click, prelabel throughput
(generic segmentation with ``--classes`` names) and the peak GPU memory.

    python bench/bench_xsam_gpu.py [--repeats 5] [--classes 20] [--images 8]
    python bench/bench_xsam_gpu.py --dry-run   # tiny parity model on CPU: checks the script only

Random weights give random masks: post-processing times depend on how many queries pass the
thresholds, so they are indicative; network times are not affected.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from xsam_backend.engines.xsam_engine import XSamEngine
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.xsam import processing_post as post
from xsam_backend.xsam.checkpoint import build_meta_model, materialise_buffers
from xsam_backend.xsam.config import XSamConfig
from xsam_backend.xsam.modeling import XSamModel
from xsam_backend.xsam.pipeline import XSamPipeline, XSamRequest, preprocess_configs
from xsam_backend.xsam.processing_pre import preprocess_sam, preprocess_siglip

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "model_weights" / "xsam-s3-phi3-mini-siglip2-sam-large.config.json"
SHARED_DIRS = (ROOT.parent / "shared", ROOT / "shared")
NO_CUDA = "bench_xsam_gpu: no CUDA device is available; run it on a GPU machine or pass --dry-run."


@dataclass(frozen=True)
class BenchSetup:
    """What one run measures: model config, tokenizer folder, device, dtype, sizes and counts."""

    config: XSamConfig
    tokenizer_dir: Path
    device: torch.device
    dtype: torch.dtype
    image_hw: tuple[int, int]
    repeats: int
    classes: int
    images: int


def _shared(relative: str) -> Path:
    for base in SHARED_DIRS:
        if (base / relative).exists():
            return base / relative
    return SHARED_DIRS[0] / relative


def random_model(config: XSamConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> XSamModel:
    """The model with random weights, built on the meta device and materialised on ``device``.

    Matrices ~ N(0, 0.02²), norm scales 1, biases 0, ``logit_scale`` log(1/0.07); the
    non-persistent buffers (rotary frequencies, position ids) are computed as the loader does.
    Parameters are allocated once, in ``dtype`` (the Mask2Former decoders and ``logit_scale`` in
    fp32, as :func:`~xsam_backend.xsam.checkpoint.load_model` keeps them).
    """
    model = build_meta_model(config)
    model.to(dtype=dtype)
    model.segmentor.pixel_decoder.float()
    model.segmentor.decoder.float()
    model.segmentor.logit_scale.data = model.segmentor.logit_scale.data.float()
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("logit_scale"):
                param.fill_(math.log(1 / 0.07))
            elif param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=gen)
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.zero_()
    materialise_buffers(model, device)
    return model.eval()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The Phi-3 tokenizer with X-SAM's special tokens (added when the folder lacks them)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    missing = [t for t in ("<SEG>", "<p>", "</p>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls of ``fn`` in seconds (device synchronised) and its last result."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def _click(n: int) -> Prompt:
    coords = tuple(float(c) for i in range(n) for c in (40 + 5 * i, 30 + 3 * i))
    return Prompt(task=Task.INTERACTIVE, regions=(VisualRegion("point", coords),), label="object")


def run_bench(setup: BenchSetup) -> list[tuple[str, str]]:
    """Measure; returns the table rows ``(name, value)``."""
    device, repeats = setup.device, setup.repeats
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    model = random_model(setup.config, device, setup.dtype)
    _sync(device)
    rows = [("build + materialise model (s)", f"{time.perf_counter() - start:.2f}")]
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    rows.append(("parameters (GB)", f"{weights_gb:.2f}"))
    pipeline = XSamPipeline(model, load_tokenizer(setup.tokenizer_dir), setup.config)
    rng = np.random.default_rng(0)
    h, w = setup.image_hw
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)

    def ms(name: str, seconds: float) -> None:
        rows.append((f"{name} (ms)", f"{seconds * 1000:.1f}"))

    with torch.inference_mode():
        sig_cfg, sam_cfg = preprocess_configs(setup.config.image_processors)
        t, siglip = timed(lambda: preprocess_siglip(image, sig_cfg), repeats, device)
        ms("pre-process SigLIP", t)
        t, sam_in = timed(lambda: preprocess_sam(image, sam_cfg), repeats, device)
        ms("pre-process SAM", t)
        siglip = siglip.to(device, setup.dtype)
        sam = sam_in.pixel_values.to(device, setup.dtype)
        t, _ = timed(lambda: model.visual_encoder(siglip, output_hidden_states=True), repeats, device)
        ms("SigLIP encoder", t)
        t, states = timed(lambda: model.segmentor.encode(sam), repeats, device)
        ms("SAM encoder", t)
        config = setup.config
        t, conn = timed(
            lambda: model.seg_connector([states[i] for i in config.seg_select_layers]), repeats, device
        )
        ms("connector", t)
        conn32 = [c.float() for c in conn]
        t, _ = timed(lambda: model.segmentor.decode_pixels(conn32), repeats, device)
        ms("pixel decoder", t)
        t, state = timed(lambda: pipeline.prepare_image(image), repeats, device)
        ms("prepare_image (all of the above)", t)

        request = XSamRequest(task="intseg", prompt_masks=_prompt_mask((h, w)))
        fresh = [pipeline.prepare_image(image) for _ in range(max(1, repeats))]
        t, _ = timed(lambda: pipeline.run(fresh.pop(), request), repeats, device)
        ms("image prefix + first prompt (LLM over the image tokens)", t)
        pipeline.run(state, request)
        t, out = timed(lambda: pipeline.run(state, request), repeats, device)
        ms("cached prompt: suffix + decoder + post-processing", t)
        width = model.bg_embeds.weight.shape[1]
        conds, seg = torch.randn(2, width, device=device), torch.randn(width, device=device)
        t, decoded = timed(lambda: model.decode(state.decoder, seg, conds), repeats, device)
        ms("  Mask2Former decoder alone (on the cached image state)", t)
        logits, masks = decoded.class_logits[0].float(), decoded.mask_logits[0].float()
        vp = torch.zeros(config.sam_image_size, config.sam_image_size, dtype=torch.uint8)
        vp[100:200, 100:200] = 1
        frames = (state.scaled_size, state.image_size)
        t, _ = timed(
            lambda: post.intseg_postprocess(logits, masks, *frames, vp, pad_size=config.sam_image_size),
            repeats,
            device,
        )
        ms("  intseg post-processing alone", t)

        first, cached = [], []
        for r in range(max(1, repeats)):
            clicker = XSamEngine(pipeline, f"bench-{r}")
            first.append(timed(partial(clicker.predict, image, _click(1)), 1, device)[0])
            cached.append(timed(partial(clicker.predict, image, _click(2)), 1, device)[0])
        ms("first click (engine)", min(first))
        ms("cached click (engine)", min(cached))
        rows.append(("cached click speed-up", f"{min(first) / min(cached):.1f}x"))

        names = tuple(f"class {k}" for k in range(setup.classes))
        prelabel = Prompt(task=Task.GENERIC, classes=names, mode="panoptic")
        images = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for _ in range(max(1, setup.images))]
        engine = XSamEngine(pipeline, "bench-prelabel", cache_bytes=0)
        engine.predict(images[0], prelabel)  # warm-up
        t, _ = timed(lambda: [engine.predict(img, prelabel) for img in images], 1, device)
        rows.append((f"prelabel, panoptic with {setup.classes} classes (images/s)", f"{len(images) / t:.2f}"))
        rows.append(("LLM tokens run by a cached prompt", f"{out.tokens_run}"))
    if device.type == "cuda":
        rows.append(("peak GPU memory (GB)", f"{torch.cuda.max_memory_allocated(device) / 1e9:.2f}"))
    return rows


def _prompt_mask(size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((1, *size), dtype=bool)
    mask[0, size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = True
    return mask


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    print(title)
    print(f"{'stage':62s} {'value':>10s}")
    for name, value in rows:
        print(f"{name:62s} {value:>10s}")


def parse_setup(argv: Sequence[str] | None) -> BenchSetup:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=None, help="model config JSON (default: the release)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--images", type=int, default=8, help="images for the prelabel throughput")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--dry-run", action="store_true", help="tiny parity model, CPU, fp32, one repeat")
    args = parser.parse_args(argv)
    if args.dry_run:
        model_dir = _shared("xsam_parity/model")
        return BenchSetup(
            config=XSamConfig.from_file(args.config or model_dir),
            tokenizer_dir=args.tokenizer or _shared("xsam_parity/tokenizer"),
            device=torch.device("cpu"),
            dtype=torch.float32,
            image_hw=(96, 128),
            repeats=1,
            classes=min(args.classes, 3),
            images=1,
        )
    if not torch.cuda.is_available():
        raise SystemExit(NO_CUDA)
    return BenchSetup(
        config=XSamConfig.from_file(args.config or RELEASE),
        tokenizer_dir=args.tokenizer or _shared("xsam_full_size/phi3_tokenizer"),
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        image_hw=(args.height, args.width),
        repeats=args.repeats,
        classes=args.classes,
        images=args.images,
    )


def main(argv: Sequence[str] | None = None) -> None:
    setup = parse_setup(argv)
    name = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "CPU (dry run)"
    rows = run_bench(setup)
    print_table(f"X-SAM, random {str(setup.dtype).removeprefix('torch.')} weights, on {name}", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
