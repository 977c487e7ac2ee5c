"""One object from clicks, a box or a scribble, with OpenCV GrabCut and no model weights.

The pipeline, all in the original image's pixel frame unless a step says otherwise:

1. **Where to look.** On a median-smoothed copy in CIE Lab (long side at most
   :data:`COARSE_LONG_SIDE`), grow a region from the positive seeds: the pixels within a colour
   tolerance of the seed's 5x5 median and connected to it; the tolerance shrinks while the region
   covers most of the image or reaches a negative click. Negative clicks grow their own region the
   same way (never reaching a positive seed); it becomes sure background. The *frame*, where the
   object probably is, is the user's box, or the positive region padded by a quarter of its size.
2. **GrabCut.** The window (frame plus a margin) is resized to at most :data:`GRABCUT_PIXELS`
   pixels, because GrabCut's max-flow cost grows faster than the pixel count, and labelled:
   clicks and strokes sure foreground, the frame probable foreground, the rest of the window sure
   background outside a user's box and probable background around a guessed frame. When the
   object reaches the window's edge, the frame widens on that side and GrabCut runs again, at most
   :data:`GROW_ROUNDS` times.
3. **Clean-up.** Keep the parts connected to a positive seed (box only: parts at least a fifth of
   the largest); fill holes under 2 % of the area.
4. **Full resolution.** Upsample the working mask; when the window was shrunk, re-decide the
   pixels in a band along the boundary by which local colour mean (sure inside or sure outside,
   from a box filter) they are closer to. Then clip to the box and force the clicks.

The score is the Hellinger distance between the colour histograms of the mask and of a ring of
pixels around it (OpenCV's Bhattacharyya comparison, 8 bins per RGB channel), on the GrabCut
working image: 1 when no colour of the object occurs right around it, 0 when the object cannot be
told from its surroundings by colour (or there is no surrounding to compare with).

Everything is deterministic: GrabCut's k-means is seeded with :data:`GRABCUT_SEED`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

COARSE_LONG_SIDE = 512  # long side of the copy used to guess the object's extent
GRABCUT_PIXELS = 12_000  # GrabCut works on at most this many pixels (its cost grows faster than that)
GRABCUT_ITERATIONS = 3
GRABCUT_SEED = 20240917  # GrabCut's k-means draws from OpenCV's RNG; a fixed seed makes it repeatable
MIN_MODEL_SAMPLES = 10  # each colour model is a 5-component GMM: fewer samples than this cannot fit one
LEAK_FRACTION = 0.6  # a flood fill over more of the image than this is taken to have leaked
FLOOD_TOLERANCES = (28, 18, 10)  # Euclidean Lab distance in OpenCV's 8-bit Lab units, tried in order
MIN_FRAME_FRACTION = 0.08  # a guessed frame spans at least this fraction of the image's long side
GROW_ROUNDS = 3  # GrabCut runs at most this often, widening the frame where the object touches it
TOUCH_FRACTION = 0.1
FILL_TRUST = 0.25  # a flood fill over this fraction of the guessed frame is trusted to outline the object
NEAR_BAND = 0.08  # ... and probable foreground is kept within this fraction of the frame's size around it

Box = tuple[int, int, int, int]  # half-open pixel bounds (x0, y0, x1, y1): columns [x0, x1), rows [y0, y1)


@dataclass(frozen=True)
class ObjectSeeds:
    """Where the annotator says the object is, as pixel indices of the full image.

    ``positive``: ``(N, 2)`` int64 ``(col, row)`` pixels that must be in the mask; ``negative``:
    ``(M, 2)`` int64 ``(col, row)`` pixels that must not be; ``strokes``: ``(H, W)`` bool scribble
    pixels that must be in the mask, or ``None``; ``box``: ``(x0, y0, x1, y1)`` half-open pixel
    bounds ``[x0, x1) x [y0, y1)`` the mask must stay inside, or ``None``. At least one of
    ``positive``, ``strokes`` or ``box`` is given; all lie inside the image.
    """

    positive: np.ndarray
    negative: np.ndarray
    strokes: np.ndarray | None = None
    box: Box | None = None


@dataclass(frozen=True)
class _Window:
    """A crop ``[x0, x1) x [y0, y1)`` of the full image and its GrabCut working size ``(gw, gh)``."""

    x0: int
    y0: int
    x1: int
    y1: int
    gw: int
    gh: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def shrunk(self) -> bool:
        return (self.gw, self.gh) != (self.width, self.height)

    def to_working(self, points: np.ndarray) -> np.ndarray:
        """Full-image ``(N, 2)`` ``(col, row)`` pixels -> ``(N, 2)`` working-image pixels."""
        cols = ((points[:, 0] - self.x0 + 0.5) * self.gw / self.width).astype(np.int64)
        rows = ((points[:, 1] - self.y0 + 0.5) * self.gh / self.height).astype(np.int64)
        return np.stack([np.clip(cols, 0, self.gw - 1), np.clip(rows, 0, self.gh - 1)], axis=1)

    def crop_to_working(self, full: np.ndarray, *, keep_thin: bool = False) -> np.ndarray:
        """Crop an ``(H, W)`` bool full-image mask to the window, resized to ``(gh, gw)`` bool.

        ``keep_thin``: a working pixel is on when any of its pixels is (strokes must not vanish);
        otherwise when most of them are.
        """
        crop = full[self.y0 : self.y1, self.x0 : self.x1].astype(np.uint8) * 255
        if not self.shrunk:
            return crop > 0
        small = cv2.resize(crop, (self.gw, self.gh), interpolation=cv2.INTER_AREA)
        return small > 0 if keep_thin else small >= 128


def segment_object(image: np.ndarray, seeds: ObjectSeeds) -> tuple[np.ndarray, float]:
    """Segment the one object the seeds point at.

    ``image``: ``(H, W, 3)`` uint8 RGB. Returns the mask, ``(H, W)`` bool in the image's pixel frame
    (inside ``seeds.box`` when given, holding every positive pixel and no negative one), and its
    score in ``[0, 1]`` (see the module docstring).
    """
    shape = (image.shape[0], image.shape[1])
    grown, avoid = _flood_regions(image, seeds)
    if seeds.box is not None:
        frame, rounds = seeds.box, 1
    else:
        frame, rounds = _guess_frame(shape, seeds, grown), GROW_ROUNDS
    for round_ in range(rounds):
        window = _window_around(frame, shape)
        crop = image[window.y0 : window.y1, window.x0 : window.x1]
        working = (
            crop
            if not window.shrunk
            else cv2.resize(crop, (window.gw, window.gh), interpolation=cv2.INTER_AREA)
        )
        working = np.ascontiguousarray(working)
        in_frame = window.crop_to_working(_box_mask(frame, shape) & _near(grown, frame), keep_thin=True)
        init = _grabcut_init(in_frame, seeds, window, shape, avoid=avoid, hard_frame=seeds.box is not None)
        labels = _run_grabcut(working, init)
        foreground = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        foreground = _clean(foreground, _working_seed_mask(seeds, window))
        wider = _grow_frame(frame, foreground, window, shape)
        if wider is None or round_ == rounds - 1:
            break
        frame = wider
    score = _colour_separation(working, foreground)
    mask = np.zeros(shape, dtype=bool)
    mask[window.y0 : window.y1, window.x0 : window.x1] = _to_full_resolution(crop, foreground, window)
    return _enforce_seeds(mask, seeds), score


def _near(region: np.ndarray | None, frame: Box) -> np.ndarray | np.bool_:
    """Where the object may be, given the positive flood fill ``region`` (``(H, W)`` bool).

    When the fill covers a good part of the frame (:data:`FILL_TRUST`), it has found the object's
    colour: only pixels within a band around it stay probable foreground, so GrabCut's foreground
    model is not taught the background that fills the rest of a loose frame (on flat, noisy
    backgrounds such as JPEG-compressed ones, it would otherwise keep the whole frame). A fill
    that found only a speck (texture) says little, and the whole frame stays probable foreground.
    """
    if region is None:
        return np.True_
    x0, y0, x1, y1 = frame
    if np.count_nonzero(region[y0:y1, x0:x1]) < FILL_TRUST * (x1 - x0) * (y1 - y0):
        return np.True_
    band = max(2, round(NEAR_BAND * max(x1 - x0, y1 - y0)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    return cv2.dilate(region.astype(np.uint8), kernel) > 0


def _box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool, on inside the half-open pixel box ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    out = np.zeros(shape, dtype=bool)
    out[y0:y1, x0:x1] = True
    return out


def _window_around(frame: Box, shape: tuple[int, int]) -> _Window:
    """The crop GrabCut works on: ``frame`` plus a margin of background, clipped to the ``(H, W)`` image."""
    height, width = shape
    x0, y0, x1, y1 = frame
    margin = max(4, round(0.15 * max(x1 - x0, y1 - y0)))
    x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
    x1, y1 = min(width, x1 + margin), min(height, y1 + margin)
    shrink = min(1.0, math.sqrt(GRABCUT_PIXELS / ((x1 - x0) * (y1 - y0))))
    gw, gh = max(1, round((x1 - x0) * shrink)), max(1, round((y1 - y0) * shrink))
    return _Window(x0, y0, x1, y1, gw, gh)


def _guess_frame(shape: tuple[int, int], seeds: ObjectSeeds, region: np.ndarray | None) -> Box:
    """Where the object probably lies: its seeds and their flood fill, padded, not too small.

    ``shape``: ``(H, W)``; ``region``: the positive flood fill, ``(H, W)`` bool, or ``None``.
    """
    height, width = shape
    if region is None:
        # The fill leaked at every tolerance: nothing says where the object ends.
        return 0, 0, width, height
    points = seeds.positive.reshape(-1, 2)
    rows, cols = np.nonzero(region if seeds.strokes is None else region | seeds.strokes)
    cols = np.concatenate([cols, points[:, 0]])
    rows = np.concatenate([rows, points[:, 1]])
    x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
    # GrabCut forgives a loose frame far more than a tight one, and the fill often falls short.
    pad = max(2, round(0.25 * max(x1 - x0, y1 - y0)))
    # A click on texture (a coin's relief) may fill only a speck; the object is rarely that small.
    least = max(3, round(MIN_FRAME_FRACTION * max(height, width)))
    pad_x = max(pad, (least - (x1 - x0) + 1) // 2)
    pad_y = max(pad, (least - (y1 - y0) + 1) // 2)
    return max(0, x0 - pad_x), max(0, y0 - pad_y), min(width, x1 + pad_x), min(height, y1 + pad_y)


def _grow_frame(frame: Box, foreground: np.ndarray, window: _Window, shape: tuple[int, int]) -> Box | None:
    """``frame`` pushed out on every side where the object reaches the window's edge, else ``None``.

    ``foreground``: ``(gh, gw)`` bool, working frame. A side counts when over
    :data:`TOUCH_FRACTION` of the pixels just inside the window's rim there are foreground;
    sides on the image's edge never count.
    """
    height, width = shape
    if min(window.gw, window.gh) < 3:
        return None
    x0, y0, x1, y1 = frame
    step_x, step_y = max(2, (x1 - x0) // 2), max(2, (y1 - y0) // 2)
    touches = {
        "left": window.x0 > 0 and foreground[:, 1].mean() > TOUCH_FRACTION,
        "right": window.x1 < width and foreground[:, -2].mean() > TOUCH_FRACTION,
        "top": window.y0 > 0 and foreground[1, :].mean() > TOUCH_FRACTION,
        "bottom": window.y1 < height and foreground[-2, :].mean() > TOUCH_FRACTION,
    }
    if not any(touches.values()):
        return None
    return (
        max(0, x0 - step_x) if touches["left"] else x0,
        max(0, y0 - step_y) if touches["top"] else y0,
        min(width, x1 + step_x) if touches["right"] else x1,
        min(height, y1 + step_y) if touches["bottom"] else y1,
    )


def _coarse_lab(image: np.ndarray) -> np.ndarray:
    """The image at the coarse scale, median-smoothed, as ``(h, w, 3)`` float32 Lab (OpenCV 8-bit units)."""
    height, width = image.shape[:2]
    scale = min(1.0, COARSE_LONG_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = image if scale == 1.0 else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # Fine texture inside an object (coin reliefs, fur) would stop the fill early; a median keeps edges.
    small = cv2.medianBlur(np.ascontiguousarray(small), 5)
    return np.asarray(cv2.cvtColor(small, cv2.COLOR_RGB2LAB), dtype=np.float32)


def _flood_regions(image: np.ndarray, seeds: ObjectSeeds) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Colour-similar regions grown from the positive and from the negative seeds.

    Returns ``(positive, negative)``, each ``(H, W)`` bool in the image's pixel frame, or ``None``
    when every tolerance leaked (or, for ``negative``, there are no negative clicks). A positive
    region never holds a negative click, nor a negative region a positive click or stroke.
    """
    height, width = image.shape[:2]
    lab = _coarse_lab(image)
    ch, cw = lab.shape[:2]

    def to_coarse(points: np.ndarray) -> np.ndarray:
        return np.stack([points[:, 0] * cw // width, points[:, 1] * ch // height], axis=1).astype(np.int64)

    def at(points: np.ndarray) -> np.ndarray:
        out = np.zeros((ch, cw), dtype=bool)
        out[points[:, 1], points[:, 0]] = True
        return out

    def to_full(region: np.ndarray | None) -> np.ndarray | None:
        if region is None or (ch, cw) == (height, width):
            return region
        return cv2.resize(region.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0

    positive_points = to_coarse(_seed_points(seeds))
    negative_points = to_coarse(seeds.negative.reshape(-1, 2))
    positive_pixels = at(positive_points)
    if seeds.strokes is not None:
        strokes = seeds.strokes.astype(np.uint8) * 255
        positive_pixels |= cv2.resize(strokes, (cw, ch), interpolation=cv2.INTER_AREA) > 0
    positive = _flood(lab, positive_points, forbidden=at(negative_points)) if positive_points.size else None
    negative = _flood(lab, negative_points, forbidden=positive_pixels) if negative_points.size else None
    return to_full(positive), to_full(negative)


def _flood(lab: np.ndarray, start: np.ndarray, forbidden: np.ndarray) -> np.ndarray | None:
    """Pixels of a colour like a start pixel's and 4-connected to it, ``(h, w)`` bool, coarse frame.

    ``lab``: :func:`_coarse_lab` output; ``start``: ``(K, 2)`` ``(col, row)`` coarse pixels, whose
    colour is the median of the 5x5 patch around each. Tolerances from :data:`FLOOD_TOLERANCES`
    are tried in turn until the region covers at most :data:`LEAK_FRACTION` of the image and no
    ``forbidden`` pixel; ``None`` when none does.
    """
    ch, cw = lab.shape[:2]
    distances: list[np.ndarray] = []
    for col, row in start:
        patch = lab[max(0, row - 2) : row + 3, max(0, col - 2) : col + 3].reshape(-1, 3)
        difference = lab - np.median(patch, axis=0)
        distances.append(np.einsum("ijk,ijk->ij", difference, difference))
    for tolerance in FLOOD_TOLERANCES:
        region = np.zeros((ch, cw), dtype=bool)
        for (col, row), distance in zip(start, distances):
            if region[row, col]:
                continue
            similar = distance < tolerance**2
            similar[row, col] = True
            _, components = cv2.connectedComponents(similar.astype(np.uint8), connectivity=4)
            region |= components == components[row, col]
        if np.count_nonzero(region) <= LEAK_FRACTION * ch * cw and not (region & forbidden).any():
            return region
    return None


def _seed_points(seeds: ObjectSeeds) -> np.ndarray:
    """``(K, 2)`` ``(col, row)`` pixels to grow from: the clicks and up to 8 stroke pixels."""
    points: list[np.ndarray] = [seeds.positive.reshape(-1, 2)]
    if seeds.strokes is not None:
        rows, cols = np.nonzero(seeds.strokes)
        pick = np.linspace(0, rows.size - 1, num=min(8, rows.size)).astype(np.int64)
        points.append(np.stack([cols[pick], rows[pick]], axis=1))
    return np.concatenate(points).astype(np.int64)


def _disk_radius(window: _Window) -> int:
    """Radius in working pixels of the sure region drawn around each click."""
    return max(1, min(3, min(window.gw, window.gh) // 40))


def _working_seed_mask(seeds: ObjectSeeds, window: _Window) -> np.ndarray:
    """``(gh, gw)`` bool: the positive clicks and strokes at the working scale."""
    out = np.zeros((window.gh, window.gw), dtype=bool)
    if seeds.positive.size:
        cols_rows = window.to_working(seeds.positive)
        out[cols_rows[:, 1], cols_rows[:, 0]] = True
    if seeds.strokes is not None:
        out |= window.crop_to_working(seeds.strokes, keep_thin=True)
    return out


def _grabcut_init(
    in_frame: np.ndarray,
    seeds: ObjectSeeds,
    window: _Window,
    shape: tuple[int, int],
    *,
    avoid: np.ndarray | None,
    hard_frame: bool,
) -> np.ndarray:
    """``(gh, gw)`` uint8 GrabCut labels (``cv2.GC_*``) for the working image.

    ``in_frame``: ``(gh, gw)`` bool, where the object probably is (probable foreground).
    ``hard_frame``: the rest of the window is sure background (a user's box); otherwise it is
    probable background and only the window's rim inside the image is sure background, because a
    guessed frame that cuts the object would teach the background model the object's colours.
    ``shape``: ``(H, W)`` of the full image. ``avoid``: ``(H, W)`` bool, the region grown from the
    negative clicks (sure background), or ``None``.
    """
    height, width = shape
    if hard_frame:
        init = np.where(in_frame, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    else:
        init = np.where(in_frame, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        if window.x0 > 0:
            init[:, 0] = cv2.GC_BGD
        if window.y0 > 0:
            init[0, :] = cv2.GC_BGD
        if window.x1 < width:
            init[:, -1] = cv2.GC_BGD
        if window.y1 < height:
            init[-1, :] = cv2.GC_BGD
    if not ((init == cv2.GC_BGD) | (init == cv2.GC_PR_BGD)).any():
        # The frame is the whole window: its rim is the only hint of background there is.
        init[[0, -1], :] = cv2.GC_PR_BGD
        init[:, [0, -1]] = cv2.GC_PR_BGD
    if avoid is not None:
        init[window.crop_to_working(avoid)] = cv2.GC_BGD
    radius = _disk_radius(window)
    for points, label in ((seeds.negative, cv2.GC_BGD), (seeds.positive, cv2.GC_FGD)):
        if points.size:
            for col, row in window.to_working(points):
                cv2.circle(init, (int(col), int(row)), radius, int(label), thickness=-1)
    if seeds.strokes is not None:
        init[window.crop_to_working(seeds.strokes, keep_thin=True)] = cv2.GC_FGD
    # A negative click wins over the disk of a nearby positive one, but never over the click itself.
    if seeds.negative.size:
        cols_rows = window.to_working(seeds.negative)
        init[cols_rows[:, 1], cols_rows[:, 0]] = cv2.GC_BGD
    if seeds.positive.size:
        cols_rows = window.to_working(seeds.positive)
        init[cols_rows[:, 1], cols_rows[:, 0]] = cv2.GC_FGD
    return init


def _run_grabcut(working: np.ndarray, init: np.ndarray) -> np.ndarray:
    """GrabCut labels after :data:`GRABCUT_ITERATIONS`; the init itself when a model cannot be fit.

    ``working``: ``(h, w, 3)`` uint8 RGB; ``init``: ``(h, w)`` uint8 ``cv2.GC_*`` labels. Returns
    ``(h, w)`` uint8 labels.
    """
    foreground = np.count_nonzero((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD))
    if foreground < MIN_MODEL_SAMPLES or init.size - foreground < MIN_MODEL_SAMPLES:
        return init
    if not (init == cv2.GC_PR_FGD).any() and not (init == cv2.GC_PR_BGD).any():
        return init
    labels = init.copy()
    background_model = np.zeros((1, 65), dtype=np.float64)
    foreground_model = np.zeros((1, 65), dtype=np.float64)
    cv2.setRNGSeed(GRABCUT_SEED)
    # The rectangle is ignored when starting from a mask.
    unused_rect = (0, 0, working.shape[1], working.shape[0])
    cv2.grabCut(
        working,
        labels,
        unused_rect,
        background_model,
        foreground_model,
        GRABCUT_ITERATIONS,
        cv2.GC_INIT_WITH_MASK,
    )
    return labels


def _clean(foreground: np.ndarray, seed_mask: np.ndarray) -> np.ndarray:
    """Keep the parts touching a seed (or, with none, the big parts); fill holes under 2 % of the area.

    ``foreground``, ``seed_mask``: ``(h, w)`` bool, working frame. Returns ``(h, w)`` bool.
    """
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        foreground.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return foreground
    if seed_mask.any():
        keep = np.unique(components[seed_mask & foreground])
        keep = keep[keep > 0]
    else:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.flatnonzero(areas >= 0.2 * areas.max())
    kept = np.isin(components, keep)
    count, holes, stats, _ = cv2.connectedComponentsWithStats((~kept).astype(np.uint8), connectivity=4)
    h, w = kept.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = x + stats[:, cv2.CC_STAT_WIDTH], y + stats[:, cv2.CC_STAT_HEIGHT]
    inner = (x > 0) & (y > 0) & (right < w) & (bottom < h)
    fill = inner & (stats[:, cv2.CC_STAT_AREA] < 0.02 * np.count_nonzero(kept))
    fill[0] = False  # label 0 is the mask itself
    return kept | fill[holes]


def _colour_separation(working: np.ndarray, foreground: np.ndarray) -> float:
    """Hellinger distance in ``[0, 1]`` of the RGB histograms of the mask and a ring around it."""
    area = int(np.count_nonzero(foreground))
    if area == 0:
        return 0.0
    radius = max(2, round(0.25 * math.sqrt(area)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    ring = cv2.dilate(foreground.astype(np.uint8), kernel).astype(bool) & ~foreground
    if np.count_nonzero(ring) < MIN_MODEL_SAMPLES or area < MIN_MODEL_SAMPLES:
        return 0.0
    bins, ranges = [8, 8, 8], [0, 256, 0, 256, 0, 256]
    inside = cv2.calcHist([working], [0, 1, 2], foreground.astype(np.uint8), bins, ranges)
    around = cv2.calcHist([working], [0, 1, 2], ring.astype(np.uint8), bins, ranges)
    distance = cv2.compareHist(inside, around, cv2.HISTCMP_BHATTACHARYYA)
    return float(min(1.0, max(0.0, distance)))


def _to_full_resolution(crop: np.ndarray, foreground: np.ndarray, window: _Window) -> np.ndarray:
    """Working-frame mask -> ``(window.height, window.width)`` bool, boundary refined by colour."""
    if not window.shrunk:
        return foreground
    size = (window.width, window.height)
    upsampled = cv2.resize(foreground.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
    step = math.ceil(window.width / window.gw)
    # A square kernel is separable, so this stays cheap on large images.
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * step + 1, 2 * step + 1))
    as_u8 = upsampled.astype(np.uint8)
    sure_in = cv2.erode(as_u8, kernel).astype(np.float32)
    sure_out = 1.0 - cv2.dilate(as_u8, kernel).astype(np.float32)
    band = (sure_in == 0) & (sure_out == 0)
    if not band.any():
        return upsampled
    pixels = crop.astype(np.float32)
    box = (4 * step + 1, 4 * step + 1)

    def local_mean(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = cv2.boxFilter(weight, -1, box, normalize=False)
        sums = cv2.boxFilter(pixels * weight[..., None], -1, box, normalize=False)
        return sums / np.maximum(total, 1e-6)[..., None], total

    mean_in, count_in = local_mean(sure_in)
    mean_out, count_out = local_mean(sure_out)
    rows, cols = np.nonzero(band & (count_in > 0) & (count_out > 0))
    colours = pixels[rows, cols]
    to_in = np.sum((colours - mean_in[rows, cols]) ** 2, axis=1)
    to_out = np.sum((colours - mean_out[rows, cols]) ** 2, axis=1)
    refined = upsampled.copy()
    refined[rows, cols] = to_in < to_out
    # Colour decisions are per pixel; a median removes the speckle they leave in texture.
    return cv2.medianBlur(refined.astype(np.uint8) * 255, 5) > 0


def _enforce_seeds(mask: np.ndarray, seeds: ObjectSeeds) -> np.ndarray:
    """Clip to the box, keep only the parts holding a seed, put clicks and strokes in, negatives out."""
    if seeds.box is not None:
        x0, y0, x1, y1 = seeds.box
        clipped = np.zeros_like(mask)
        clipped[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
        mask = clipped
    seed_mask = np.zeros_like(mask)
    if seeds.positive.size:
        seed_mask[seeds.positive[:, 1], seeds.positive[:, 0]] = True
    if seeds.strokes is not None:
        seed_mask |= seeds.strokes
    mask = mask | seed_mask
    if seed_mask.any():
        mask = _clean(mask, seed_mask) if _has_stray_parts(mask) else mask
    if seeds.negative.size:
        mask[seeds.negative[:, 1], seeds.negative[:, 0]] = False
    if seeds.positive.size:
        mask[seeds.positive[:, 1], seeds.positive[:, 0]] = True
    return mask


def _has_stray_parts(mask: np.ndarray) -> bool:
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return bool(count > 2)
