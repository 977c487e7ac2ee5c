"""CPU benchmark of one fine-tuning step, by recipe, on the mid-size random-weight X-SAM.

The release's Mask2Former decoder (200 queries, 9 layers, 128² masks, 12 544 loss points) on
cached features of one 480x640 image with three instances; the narrow LLM of
``bench_xsam_cpu.py`` (512 wide, 4 layers) for the adapter rows. Rows: the final prediction's
loss only, deep supervision (every intermediate prediction, the default), and deep supervision
with a LoRA adapter on the LLM. Prints the median step time and the parameters each recipe trains,
and the load average (timings are only comparable under similar load).

    PYTHONPATH=. python bench/bench_train_step.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from bench.bench_xsam_cpu import TOKENIZER, mid_size_config
from bench.bench_xsam_gpu import load_tokenizer
from xsam_backend.training.features import extract_features
from xsam_backend.training.lora import LoraSpec, use_lora
from xsam_backend.training.loss import LossWeights
from xsam_backend.training.trainer import TrainConfig, make_sample, train, tuned_parameters
from xsam_backend.xsam.modeling import XSamModel
from xsam_backend.xsam.pipeline import XSamPipeline

CLASSES = ("box", "bar", "blob")


def scene() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A 480x640 RGB image with three flat-coloured shapes, their masks ``(3, H, W)`` and classes."""
    rng = np.random.default_rng(0)
    image = (rng.random((480, 640, 3)) * 60).astype(np.uint8)
    masks = np.zeros((3, 480, 640), bool)
    masks[0, 40:200, 60:260] = True
    masks[1, 300:340, 100:600] = True
    yy, xx = np.mgrid[:480, :640]
    masks[2] = (yy - 150) ** 2 + (xx - 480) ** 2 < 70**2
    for k, colour in enumerate(((220, 40, 40), (40, 220, 40), (40, 40, 220))):
        image[masks[k]] = colour
    return image, masks, [0, 1, 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = mid_size_config()
    tokenizer = load_tokenizer(TOKENIZER)
    image, masks, classes = scene()
    side = int(config.sam_image_size)

    recipes = (
        ("final prediction only", LossWeights(auxiliary=False), None),
        ("deep supervision (default)", LossWeights(), None),
        ("deep supervision + LoRA r=16", LossWeights(), LoraSpec(rank=16, alpha=32)),
    )
    rows = []
    for name, weights, adapter in recipes:
        model = XSamModel(config).eval()
        pipeline = XSamPipeline(model, tokenizer, config)
        features = extract_features(pipeline, image, CLASSES, llm_inputs=adapter is not None)
        sample = make_sample(features, masks, classes, side)
        use_lora(model, adapter)
        params = sum(p.numel() for _, p in tuned_parameters(model))
        times: list[float] = []
        last = [time.perf_counter()]

        def on_step(
            step: int, steps: int, loss: float, times: list[float] = times, last: list[float] = last
        ) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        last[0] = time.perf_counter()
        train(model, [sample], TrainConfig(steps=args.steps + 1, loss=weights), on_step)
        rows.append((name, statistics.median(times[1:]), params))  # the first step warms up

    print(f"one fine-tuning step on CPU ({torch.get_num_threads()} threads), median of {args.steps}")
    print(f"{'recipe':<32} {'ms/step':>9} {'trained params':>15}")
    for name, seconds, params in rows:
        print(f"{name:<32} {seconds * 1000:>9.0f} {params:>15,}")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
