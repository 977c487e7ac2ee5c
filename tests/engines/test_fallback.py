"""The weight-free engine on real photographs, against reference masks made without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from scipy import ndimage
from skimage.filters import threshold_otsu

from xsam_backend.engines.base import Engine
from xsam_backend.engines.factory import FALLBACK_VERSION
from xsam_backend.engines.fallback import FallbackEngine
from xsam_backend.errors import MediaError, NeedsWeights, PromptError
from xsam_backend.masks import encode_compact_rle
from xsam_backend.prompt import Prompt, Task, VisualRegion

ENGINE = FallbackEngine()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b)))


def interactive(*regions: VisualRegion, negative: tuple[tuple[float, float], ...] = ()) -> Prompt:
    return Prompt(task=Task.INTERACTIVE, regions=regions, negative_points=negative, label="object")


def point(*xy: float) -> VisualRegion:
    return VisualRegion("point", tuple(float(c) for c in xy))


def box(x0: float, y0: float, x1: float, y1: float) -> VisualRegion:
    return VisualRegion("box", (x0, y0, x1, y1))


def scribble(stroke: np.ndarray) -> VisualRegion:
    return VisualRegion("scribble", mask=encode_compact_rle(stroke))


def only_mask(image: np.ndarray, prompt: Prompt) -> np.ndarray:
    result = ENGINE.predict(image, prompt)
    assert len(result.segments) == 1
    mask = result.segments[0].mask
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    return mask


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Half-open ``(x0, y0, x1, y1)`` pixel bounds of a mask."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


# Reference masks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coins_rgb() -> np.ndarray:
    """``skimage.data.coins()`` (303x384 grayscale) as grayscale-looking RGB."""
    return np.repeat(skimage.data.coins()[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def coin_references() -> list[np.ndarray]:
    """One mask per coin: Otsu threshold, opening, filled holes, round components only."""
    coins = skimage.data.coins()
    bright = ndimage.binary_opening(coins > threshold_otsu(coins), iterations=2)
    labels, count = ndimage.label(ndimage.binary_fill_holes(bright))
    references = []
    for index in range(1, count + 1):
        mask = labels == index
        x0, y0, x1, y1 = bbox(mask)
        width, height = x1 - x0, y1 - y0
        fill = np.count_nonzero(mask) / (width * height)
        # A disc fills pi/4 of its box; merged or clipped blobs do not.
        if np.count_nonzero(mask) >= 800 and 0.75 < width / height < 1.33 and 0.7 < fill < 0.85:
            references.append(mask)
    assert len(references) >= 20
    return references


@pytest.fixture(scope="module")
def cup_top() -> np.ndarray:
    """The top of the cup in ``skimage.data.coffee()``: its white rim (low saturation, bright)
    and everything the rim encloses."""
    image = skimage.data.coffee().astype(np.int32)
    value = image.max(axis=2)
    saturation = (value - image.min(axis=2)) * 255 // np.maximum(value, 1)
    white = (saturation < 60) & (value > 150)
    labels, _ = ndimage.label(white)
    rim_row = int(np.argmax(white[:, 290]))
    top = ndimage.binary_fill_holes(labels == labels[rim_row, 290])
    assert 30_000 < np.count_nonzero(top) < 40_000
    return top


# Interactive segmentation ----------------------------------------------------------------------


def test_centre_click_on_each_coin_finds_it(coins_rgb: np.ndarray, coin_references: list[np.ndarray]) -> None:
    scores = []
    for reference in coin_references:
        rows, cols = np.nonzero(reference)
        mask = only_mask(coins_rgb, interactive(point(cols.mean() + 0.5, rows.mean() + 0.5)))
        scores.append(iou(mask, reference))
    assert min(scores) >= 0.7, scores
    assert np.mean(scores) >= 0.9, scores


def test_tight_box_on_each_coin_finds_it(coins_rgb: np.ndarray, coin_references: list[np.ndarray]) -> None:
    scores = []
    for reference in coin_references:
        x0, y0, x1, y1 = bbox(reference)
        mask = only_mask(coins_rgb, interactive(box(x0, y0, x1, y1)))
        assert not mask[:, :x0].any() and not mask[:, x1:].any()
        assert not mask[:y0].any() and not mask[y1:].any()
        scores.append(iou(mask, reference))
    assert min(scores) >= 0.7, scores
    assert np.mean(scores) >= 0.9, scores


@pytest.mark.parametrize("click", [(290, 145), (250, 120), (330, 160)])
def test_click_in_the_cup_finds_the_cup_top(cup_top: np.ndarray, click: tuple[int, int]) -> None:
    mask = only_mask(skimage.data.coffee(), interactive(point(*click)))
    assert iou(mask, cup_top) >= 0.85


def test_tight_box_around_the_cup_top(cup_top: np.ndarray) -> None:
    mask = only_mask(skimage.data.coffee(), interactive(box(*bbox(cup_top))))
    assert iou(mask, cup_top) >= 0.85


def test_scribble_across_a_coin(coins_rgb: np.ndarray, coin_references: list[np.ndarray]) -> None:
    reference = coin_references[0]
    x0, y0, x1, y1 = bbox(reference)
    stroke = np.zeros(reference.shape, dtype=bool)
    middle = (y0 + y1) // 2
    stroke[middle - 1 : middle + 2, x0 + (x1 - x0) // 4 : x1 - (x1 - x0) // 4] = True
    mask = only_mask(coins_rgb, interactive(scribble(stroke)))
    assert mask[stroke].all()
    assert iou(mask, reference) >= 0.8


def test_positive_clicks_inside_and_negative_clicks_outside(cup_top: np.ndarray) -> None:
    image = skimage.data.coffee()
    positives = [(290.0, 145.0), (240.0, 110.0), (300.0, 60.0)]
    negatives = ((290.0, 25.0), (190.0, 110.0), (380.0, 150.0))  # on the rim, and outside the cup
    mask = only_mask(image, interactive(point(*sum(positives, ())), negative=negatives))
    for x, y in positives:
        assert mask[int(y), int(x)]
    for x, y in negatives:
        assert not mask[int(y), int(x)]
    # Forbidding the rim leaves the inside of the cup.
    assert np.count_nonzero(mask) < np.count_nonzero(cup_top)
    assert np.count_nonzero(mask & cup_top) >= 0.6 * np.count_nonzero(mask)


def test_clicks_are_honoured_even_on_a_featureless_image() -> None:
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    mask = only_mask(image, interactive(point(10.2, 10.7, 50, 30), negative=((30.0, 20.0),)))
    assert mask[10, 10] and mask[30, 50]
    assert not mask[20, 30]


def test_label_score_and_version() -> None:
    result = ENGINE.predict(skimage.data.coffee(), interactive(point(290, 145)))
    (segment,) = result.segments
    assert segment.label == "object"
    assert result.model_version == FALLBACK_VERSION and result.engine == "fallback"
    assert 0.0 <= segment.score <= 1.0


def test_score_is_higher_for_a_clear_object_than_for_noise(
    coins_rgb: np.ndarray, coin_references: list[np.ndarray]
) -> None:
    rows, cols = np.nonzero(coin_references[0])
    coin = ENGINE.predict(coins_rgb, interactive(point(cols.mean(), rows.mean()))).segments[0].score
    noise = np.random.default_rng(0).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    noisy = ENGINE.predict(noise, interactive(point(80, 60))).segments[0].score
    assert coin > 0.8
    assert noisy < 0.5 < coin


def test_same_input_same_mask() -> None:
    image = skimage.data.coffee()
    prompt = interactive(point(290, 145, 360, 285), negative=((290.0, 25.0),))
    first = ENGINE.predict(image, prompt).segments[0]
    ENGINE.predict(skimage.data.astronaut(), interactive(point(220, 150)))  # moves OpenCV's RNG
    second = ENGINE.predict(image, prompt).segments[0]
    assert np.array_equal(first.mask, second.mask)
    assert first.score == second.score


def test_large_image_boundary_follows_the_object(cup_top: np.ndarray) -> None:
    # 4x the coffee photograph: GrabCut runs on a shrunk copy, the boundary is refined at full size.
    image = np.repeat(np.repeat(skimage.data.coffee(), 2, axis=0), 2, axis=1)
    reference = np.repeat(np.repeat(cup_top, 2, axis=0), 2, axis=1)
    mask = only_mask(image, interactive(point(580, 290)))
    assert iou(mask, reference) >= 0.85


def test_mirrored_view_of_an_image(cup_top: np.ndarray) -> None:
    image = skimage.data.coffee()[:, ::-1]  # a view with a negative stride, as a BGR<->RGB flip gives
    mask = only_mask(image, interactive(point(600 - 290, 145)))
    assert iou(mask, cup_top[:, ::-1]) >= 0.85


# Odd geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 5), (5, 3), (2, 900), (900, 2)])
def test_tiny_and_extreme_images(height: int, width: int) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = only_mask(image, interactive(point(width / 2, height / 2)))
    assert mask[height // 2, width // 2]
    boxed = ENGINE.predict(image, interactive(box(0, 0, width, height)))
    for segment in boxed.segments:
        assert segment.mask.shape == (height, width)


def test_clicks_on_the_image_border() -> None:
    image = skimage.data.astronaut()
    height, width = image.shape[:2]
    corners = (0.0, 0.0, float(width), float(height), float(width), 0.0)
    mask = only_mask(image, interactive(point(*corners)))
    assert mask[0, 0] and mask[height - 1, width - 1] and mask[0, width - 1]


def test_box_partly_outside_the_image_is_clipped(
    coins_rgb: np.ndarray, coin_references: list[np.ndarray]
) -> None:
    # The coin nearest the top-left corner, with a box running off the image's top and left.
    reference = min(coin_references, key=lambda m: sum(bbox(m)[:2]))
    x0, y0, x1, y1 = bbox(reference)
    mask = only_mask(coins_rgb, interactive(box(-50, -40, x1, y1)))
    assert not mask[:, x1:].any() and not mask[y1:].any()
    assert iou(mask, reference) >= 0.6


def test_inverted_box_corners_mean_the_same_box(
    coins_rgb: np.ndarray, coin_references: list[np.ndarray]
) -> None:
    x0, y0, x1, y1 = bbox(coin_references[1])
    straight = only_mask(coins_rgb, interactive(box(x0, y0, x1, y1)))
    inverted = only_mask(coins_rgb, interactive(box(x1, y1, x0, y0)))
    assert np.array_equal(straight, inverted)


def test_box_and_click_together_stay_in_the_box(cup_top: np.ndarray) -> None:
    x0, y0, x1, y1 = bbox(cup_top)
    mask = only_mask(skimage.data.coffee(), interactive(box(x0, y0, x1, y1 - 60), point(290, 100)))
    assert mask[100, 290]
    assert not mask[y1 - 60 :].any()


# Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [Task.SIMILAR, Task.GENERIC, Task.REFERRING, Task.REASONING, Task.CAPTION])
def test_tasks_that_need_the_model(task: Task) -> None:
    assert not ENGINE.supports(task)
    prompt = Prompt(
        task=task,
        regions=(point(5, 5),) if task is Task.SIMILAR else (),
        classes=("cat",) if task is Task.GENERIC else (),
        text=None if task in (Task.SIMILAR, Task.GENERIC) else "the cat",
    )
    with pytest.raises(NeedsWeights) as caught:
        ENGINE.predict(np.zeros((10, 10, 3), dtype=np.uint8), prompt)
    message = caught.value.message
    assert "model_weights/" in message and "model_weights/README.md" in message
    assert "points" in message and "box" in message and "scribble" in message
    assert caught.value.status == 422


def test_interactive_is_supported() -> None:
    assert ENGINE.supports(Task.INTERACTIVE)
    assert isinstance(ENGINE, Engine)
    assert ENGINE.name == "fallback" and ENGINE.model_version == FALLBACK_VERSION


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (interactive(point(384.5, 10)), r"point \(384\.5, 10\) lies outside the 384x303 image"),
        (
            interactive(point(10, 10), negative=((-1.0, 5.0),)),
            r"point \(-1, 5\) lies outside the 384x303 image",
        ),
        (interactive(box(400, 10, 500, 50)), "wholly outside the 384x303 image"),
        (interactive(box(0, 0, 10, 10), box(20, 20, 30, 30)), "at most one box"),
        (interactive(point(10.2, 10.9), negative=((10.7, 10.1),)), "both a positive and a negative click"),
        (interactive(box(0, 0, 50, 50), point(100, 100)), "outside the box"),
    ],
)
def test_bad_prompts(coins_rgb: np.ndarray, prompt: Prompt, expected: str) -> None:
    with pytest.raises(PromptError, match=expected):
        ENGINE.predict(coins_rgb, prompt)


def test_scribble_of_the_wrong_size_or_empty(coins_rgb: np.ndarray) -> None:
    with pytest.raises(PromptError, match="scribble mask is 10x20 pixels"):
        ENGINE.predict(coins_rgb, interactive(scribble(np.ones((20, 10), dtype=bool))))
    with pytest.raises(PromptError, match="no pixel set"):
        ENGINE.predict(coins_rgb, interactive(scribble(np.zeros((303, 384), dtype=bool))))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 3)),
        np.zeros((0, 5, 3), np.uint8),
    ],
)
def test_bad_images(image: np.ndarray) -> None:
    with pytest.raises(MediaError):
        ENGINE.predict(image, interactive(point(0, 0)))


def test_import_pulls_in_no_torch() -> None:
    code = "import sys, xsam_backend.engines.fallback; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
