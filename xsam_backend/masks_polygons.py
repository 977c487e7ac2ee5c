"""Masks to Label Studio polygons and back (public through :mod:`xsam_backend.masks`).

Frames: a polygon vertex ``(x, y)`` is in continuous pixel coordinates with the origin at the
top-left corner of the top-left pixel, so pixel ``(col, row)`` covers ``[col, col+1] x [row,
row+1]`` and a mask that fills a whole ``W``-wide image spans ``x = 0 .. W``. This is the frame
Label Studio's percentages refer to (``x% = x / W * 100``).

Tracing: OpenCV finds the boundary pixels of each 8-connected part (their centres); shapely
grows that outline by half a pixel with square corners, which puts it on the pixel edges, then
simplifies it with the tolerance. Label Studio polygons cannot hold holes, so holes follow a
:class:`HolePolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import split

from xsam_backend.errors import BadRequest
from xsam_backend.masks_validation import as_bool_mask, check_image_size

LargeHoleAction = Literal["brush", "fill", "split"]


@dataclass(frozen=True)
class HolePolicy:
    """What to do with holes, which a Label Studio polygon cannot hold.

    A hole is *small* when its area is at most ``small_hole_px`` pixels or at most
    ``small_hole_fraction`` of its part's outer area; small holes are filled (the outer ring is
    kept). A part with any larger hole gets ``large_hole``:

    * ``"brush"``: the part is not turned into polygons; its pixels go to
      :attr:`PolygonSet.fallback_masks`, for a brush region that keeps the hole exactly;
    * ``"fill"``: the outer ring is kept and the hole is lost (the region covers it);
    * ``"split"``: the part is cut by vertical lines through its holes into hole-free pieces
      that together cover exactly the part, one polygon each.
    """

    small_hole_px: float = 64.0
    small_hole_fraction: float = 0.01
    large_hole: LargeHoleAction = "brush"

    def __post_init__(self) -> None:
        if self.large_hole not in ("brush", "fill", "split"):
            raise BadRequest(f"large_hole must be 'brush', 'fill' or 'split'; got {self.large_hole!r}")
        if self.small_hole_px < 0 or not 0 <= self.small_hole_fraction <= 1:
            raise BadRequest("small_hole_px must be >= 0 and small_hole_fraction in [0, 1]")


@dataclass(frozen=True)
class PolygonSet:
    """The polygons of one mask, one per part, plus the parts left to a brush.

    ``polygons``: each ``(N, 2)`` float64, ``N >= 3`` vertices ``(x, y)`` in continuous pixel
    coordinates (see the module docstring), an open ring (the first vertex is not repeated),
    simple (no self-intersection) with positive area. ``fallback_masks``: each ``(H, W)`` bool,
    pixel frame, one per part the hole policy sent to a brush region.
    """

    polygons: list[np.ndarray] = field(default_factory=list)
    fallback_masks: list[np.ndarray] = field(default_factory=list)


def _grow_to_pixel_edges(centres: np.ndarray, holes: list[np.ndarray]) -> BaseGeometry:
    """Region covered by the pixels whose centres trace ``centres`` (minus ``holes``).

    ``centres``: ``(N, 2)`` int pixel indices ``(col, row)`` of a part's boundary pixels;
    ``holes``: the same for its holes. Returns a shapely geometry in continuous pixel coordinates.
    """
    shell = centres.astype(np.float64) + 0.5
    inner = [h.astype(np.float64) + 0.5 for h in holes if len(h) >= 3]
    outline: BaseGeometry
    if len(shell) >= 3 and Polygon(shell).area > 0:
        outline = Polygon(shell, inner)
        if not outline.is_valid:  # contours doubling back along 1-pixel spurs
            outline = shapely.make_valid(outline)
    elif len(shell) >= 2:
        outline = LineString(shell)
    else:
        outline = Point(shell[0])
    # Square caps and mitred joins turn lines and corners through pixel centres into the
    # pixel edges around them; thin spurs (1-pixel lines) survive as lines and grow the same way.
    return outline.buffer(0.5, cap_style="square", join_style="mitre", mitre_limit=2.0)


def _polygons_of(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty else []
    if isinstance(geom, MultiPolygon):
        return [g for g in geom.geoms if not g.is_empty]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygons_of(g)]
    return []


def _split_holes(poly: Polygon) -> list[Polygon]:
    """Cut a polygon by vertical lines through its holes until no piece has a hole."""
    pending, done = [poly], []
    while pending:
        piece = pending.pop()
        if not piece.interiors:
            done.append(piece)
            continue
        x = Polygon(piece.interiors[0]).representative_point().x
        _, y_min, _, y_max = piece.bounds
        cut = split(piece, LineString([(x, y_min - 1.0), (x, y_max + 1.0)]))
        pieces = _polygons_of(cut)
        if len(pieces) < 2:  # pragma: no cover - a line through a hole always cuts its part
            done.append(Polygon(piece.exterior))
            continue
        pending.extend(pieces)
    return done


def _iou(a: Polygon, b: Polygon) -> float:
    overlap = a.intersection(b).area
    return float(overlap / (a.area + b.area - overlap))


def _simple_ring(poly: Polygon, tolerance_px: float, min_area_px: float, min_iou: float) -> np.ndarray | None:
    """The exterior of ``poly`` simplified, as an open ``(N, 2)`` ring, or None if degenerate.

    The tolerance is halved until the simplified ring is simple and has IoU >= ``min_iou``
    with the exact ring; the exact ring (pixel edges) is simple by construction.
    """
    shell = shapely.geometry.polygon.orient(Polygon(poly.exterior), sign=1.0)
    if not shell.is_valid or shell.area <= 0 or shell.area < min_area_px:
        return None
    chosen = shell
    tolerance = tolerance_px
    for _ in range(4):
        if tolerance <= 0:
            break
        simple = shell.simplify(tolerance, preserve_topology=True)
        if (
            isinstance(simple, Polygon)
            and simple.is_valid
            and simple.area > 0
            and _iou(simple, shell) >= min_iou
        ):
            chosen = simple
            break
        tolerance /= 2
    ring = np.asarray(chosen.exterior.coords, dtype=np.float64)[:-1]
    return ring if len(ring) >= 3 else None


def mask_to_polygons(
    mask: np.ndarray,
    *,
    tolerance_px: float = 1.0,
    min_area_px: float = 16.0,
    hole_policy: HolePolicy | None = None,
    min_iou: float = 0.99,
) -> PolygonSet:
    """Trace a mask into simple polygons, one per 8-connected part, for PolygonLabels.

    ``mask``: ``(H, W)`` bool or integer 0/1 / 0/255, pixel frame. ``tolerance_px``: the largest
    distance (pixels) a simplified outline may stray from the pixel edges (0 keeps every
    corner). ``min_area_px``: parts (and pieces) smaller than this many pixels are dropped as
    specks. ``hole_policy``: see :class:`HolePolicy` (default: small holes filled, a part with a
    larger hole goes to a brush). ``min_iou``: simplification is reduced until each polygon
    has at least this IoU with its part's exact pixel-edge outline. Parts are ordered by
    decreasing area.
    """
    m = as_bool_mask(mask)
    if tolerance_px < 0 or min_area_px < 0 or not 0 <= min_iou <= 1:
        raise BadRequest("tolerance_px and min_area_px must be >= 0 and min_iou in [0, 1]")
    policy = hole_policy or HolePolicy()
    u8 = np.ascontiguousarray(m, dtype=np.uint8)
    contours, hierarchy = cv2.findContours(u8, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return PolygonSet()
    links = hierarchy[0]
    # Pixel counts per 8-connected part (the same parts findContours traces) let specks be
    # dropped before any geometry is built.
    _, labels, stats, _ = cv2.connectedComponentsWithStats(u8, connectivity=8)
    part_px = stats[:, cv2.CC_STAT_AREA]
    found: list[tuple[float, np.ndarray | None, np.ndarray | None]] = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1:
            continue  # a hole; handled with its parent
        col, row = contour[0, 0]
        label = labels[row, col]
        if part_px[label] < min_area_px:
            continue
        holes, child = [], links[i][2]
        while child != -1:
            holes.append(contours[child][:, 0, :])
            child = links[child][0]
        part = _grow_to_pixel_edges(contour[:, 0, :], holes)
        if part.area < min_area_px:
            continue
        pieces = _polygons_of(part)
        outer_area = sum(Polygon(p.exterior).area for p in pieces)
        limit = max(policy.small_hole_px, policy.small_hole_fraction * outer_area)
        has_large_hole = any(Polygon(r).area > limit for p in pieces for r in p.interiors)
        if has_large_hole and policy.large_hole == "brush":
            found.append((part.area, None, labels == label))
            continue
        if has_large_hole and policy.large_hole == "split":
            pieces = [q for p in pieces for q in _split_holes(p)]
        for piece in pieces:
            ring = _simple_ring(piece, tolerance_px, min_area_px, min_iou)
            if ring is not None:
                found.append((piece.area, ring, None))
    found.sort(key=lambda item: -item[0])
    return PolygonSet(
        polygons=[ring for _, ring, _ in found if ring is not None],
        fallback_masks=[fb for _, _, fb in found if fb is not None],
    )


def _check_points(points: np.ndarray | list[list[float]]) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise BadRequest(f"a polygon needs at least 3 (x, y) points; got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise BadRequest("polygon points must be finite numbers")
    return pts


def polygon_to_percent(points: np.ndarray | list[list[float]], width: int, height: int) -> list[list[float]]:
    """Pixel polygon to Label Studio ``value.points``: ``[[x%, y%], ...]`` of the original size.

    ``points``: ``(N, 2)`` ``(x, y)`` in continuous pixel coordinates; ``width``, ``height``:
    the image's original size in pixels. Returns plain floats, ``x / width * 100``.
    """
    h, w = check_image_size(height, width)
    pts = _check_points(points)
    return (pts * np.array([100.0 / w, 100.0 / h])).tolist()


def percent_to_polygon(points: list[list[float]], width: int, height: int) -> np.ndarray:
    """Label Studio ``value.points`` (percent) to ``(N, 2)`` float64 continuous pixel ``(x, y)``."""
    h, w = check_image_size(height, width)
    return _check_points(points) * np.array([w / 100.0, h / 100.0])


def rasterize_polygon(points: np.ndarray | list[list[float]], height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie inside a polygon: ``(H, W)`` bool, pixel frame.

    ``points``: ``(N, 2)`` ``(x, y)`` in continuous pixel coordinates (pixel ``(c, r)`` has its
    centre at ``(c + 0.5, r + 0.5)``). A centre exactly on a left or top edge is inside, on a
    right or bottom edge outside, so polygons that share an edge never share a pixel; parts
    outside the image are clipped. Self-intersecting input is filled by the even-odd rule.
    """
    h, w = check_image_size(height, width)
    pts = _check_points(points)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # Rows whose centre line y = r + 0.5 an edge crosses, with the half-open rule y_lo <= y < y_hi.
    y_lo, y_hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(y_lo - 0.5), 0, h).astype(np.int64)
    stop = np.clip(np.ceil(y_hi - 0.5), 0, h).astype(np.int64)
    rows_per_edge = np.where(y0 != y1, np.maximum(stop - first, 0), 0)
    edge = np.repeat(np.arange(len(pts)), rows_per_edge)
    row = np.arange(edge.size) - np.repeat(np.cumsum(rows_per_edge) - rows_per_edge, rows_per_edge)
    row += first[edge]
    cy = row + 0.5
    x = x0[edge] + (cy - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((x, row))
    row, x = row[order], x[order]
    # Crossings pair up within a row (even-odd); fill columns whose centre is in [x_a, x_b).
    col = np.clip(np.ceil(x - 0.5), 0, w).astype(np.int64)
    edges = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(edges, (row[0::2], col[0::2]), 1)
    np.add.at(edges, (row[1::2], col[1::2]), -1)
    return np.cumsum(edges[:, :w], axis=1) > 0
