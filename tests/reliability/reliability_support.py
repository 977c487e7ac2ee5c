"""What the reliability tests share: test images (clean and hostile), an app builder, the error contract."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from PIL import Image
from werkzeug.exceptions import default_exceptions

from xsam_backend.dispatch import Dispatcher, InlineDispatcher
from xsam_backend.server.app import create_app
from xsam_backend.settings import Settings

W, H = 50, 40  # the clean test image, pixels
DISK_CENTER = (25, 20)  # (x, y), pixels
DISK_RADIUS = 12

# Werkzeug's stock descriptions say only that something was wrong, not what: never acceptable.
GENERIC_MESSAGES = frozenset(str(cls.description) for cls in default_exceptions.values())


def disk_image(width: int = W, height: int = H) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB: a yellow disk on dark grey (the fallback engine finds it)."""
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 30, np.uint8)
    cx, cy = DISK_CENTER[0] * width / W, DISK_CENTER[1] * height / H
    radius = DISK_RADIUS * min(width / W, height / H)
    image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = (220, 200, 40)
    return image


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` RGB pixels and holds almost no data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def hostile_images() -> dict[str, bytes]:
    """File name -> bytes: every kind of image a task may point at, clean or hostile.

    All but the bomb and the truncated JPEG decode to the disk scene of :func:`disk_image` (the
    EXIF one after its rotation is applied; the 1x1 one is a single pixel).
    """
    rgb = Image.fromarray(disk_image())
    grey16 = Image.fromarray((disk_image()[..., 0].astype(np.uint16) * 257), mode="I;16")
    rgba = Image.fromarray(np.dstack([disk_image(), np.full((H, W), 255, np.uint8)]), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored a quarter turn anticlockwise (W x H swapped); shown turned back clockwise
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(disk_image(), 1)))
    full_jpeg = _encode(rgb, "JPEG", quality=95)
    return {
        "disk.png": _encode(rgb, "PNG"),
        "bomb.png": _png_declaring(100_000, 100_000),
        "truncated.jpg": full_jpeg[: len(full_jpeg) // 2],
        "one-pixel.png": _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "grey16.png": _encode(grey16, "PNG"),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "rgba.png": _encode(rgba, "PNG"),
        "grey.png": _encode(rgb.convert("L"), "PNG"),
        "exif-rotated.jpg": _encode(rotated, "JPEG", quality=95, exif=exif.tobytes()),
        "not-an-image.png": b"this is text, not an image\n",
    }


def write_test_images(root: Path) -> None:
    """Write :func:`hostile_images` into ``root/images/``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, data in hostile_images().items():
        (root / "images" / name).write_bytes(data)


def make_app(root: Path, dispatcher: Dispatcher | None = None, **changes: Any) -> Flask:
    """The app on ``root`` as ``LOCAL_FILES_DOCUMENT_ROOT``, fallback engine, inline unless ``dispatcher``."""
    settings = Settings(
        local_files_document_root=root, engine="fallback", media_cache_dir=root / "cache"
    ).with_changes(**changes)
    return create_app(settings, dispatcher=dispatcher or InlineDispatcher(settings))


def assert_clear_error(status: int, body: bytes, context: str = "") -> dict[str, Any]:
    """An error answer honours the contract: JSON ``{"status", "code", "message"}`` naming the problem.

    ``status`` must be 4xx or 5xx and equal the body's ``status``; ``message`` a specific text (not
    a stock HTTP description) and no traceback. Returns the decoded body.
    """
    where = f" ({context})" if context else ""
    assert status >= 400, f"expected an error status, got {status}{where}"
    try:
        payload = json.loads(body)
    except ValueError:
        raise AssertionError(f"error body is not JSON{where}: {body[:200]!r}") from None
    assert isinstance(payload, dict) and set(payload) >= {"status", "code", "message"}, payload
    assert payload["status"] == status, (payload, status, context)
    assert isinstance(payload["code"], str) and payload["code"], payload
    message = payload["message"]
    assert isinstance(message, str) and len(message.strip()) >= 10, (payload, context)
    assert message not in GENERIC_MESSAGES, (payload, context)
    assert "Traceback" not in message, payload
    return payload


def keypoint(x_px: float, y_px: float, width: int = W, height: int = H, name: str = "kp") -> dict[str, Any]:
    """A smart keypoint region as Label Studio sends it (percent coordinates of the original size)."""
    return {
        "id": "kp1",
        "type": "keypointlabels",
        "from_name": name,
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "is_positive": True,
        "value": {
            "x": 100 * x_px / width,
            "y": 100 * y_px / height,
            "width": 0.5,
            "keypointlabels": ["Object"],
        },
    }


def predict_body(config: str, images: list[str], context: dict[str, Any] | None) -> dict[str, Any]:
    """A ``/predict`` body: one task per image path under the document root, ids 1, 2, ..."""
    tasks = [
        {"id": i + 1, "data": {"image": f"/data/local-files/?d={path}"}} for i, path in enumerate(images)
    ]
    return {"tasks": tasks, "project": "3.1795316825", "label_config": config, "params": {"context": context}}


class CanaryServer:
    """A loopback HTTP server that records every request and answers per path.

    ``redirects[path] = location`` answers 302 to ``location``; ``files[path] = bytes`` answers 200
    with the bytes; anything else 404. ``hits`` lists the paths requested, ``authorization`` the
    ``Authorization`` headers received. Use as a context manager.
    """

    def __init__(self) -> None:
        self.redirects: dict[str, str] = {}
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.authorization: list[str | None] = []
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path
                canary.hits.append(path)
                canary.authorization.append(self.headers.get("Authorization"))
                if path in canary.redirects:
                    self.send_response(302)
                    self.send_header("Location", canary.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path in canary.files:
                    body = canary.files[path]
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> CanaryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
