"""MediaFetcher and decode_image against real files and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ls_http_server import LEGACY_TOKEN, LabelStudioTestServer, Route
from PIL import Image

from xsam_backend.errors import (
    MediaError,
    MediaForbidden,
    MediaNotFound,
    MediaTooLarge,
    MediaUnavailable,
)
from xsam_backend.labelstudio.media import MediaFetcher, decode_image, host_matches, is_public_address
from xsam_backend.settings import Settings

PUBLIC_IP = "93.184.216.34"


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_bytes(width: int = 8, height: int = 6, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    return encode(Image.new("RGB", (width, height), color))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` 8-bit RGB pixels but holds one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def server() -> Iterator[LabelStudioTestServer]:
    srv = LabelStudioTestServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def settings(tmp_path: Path, server: LabelStudioTestServer) -> Settings:
    return Settings(
        label_studio_url=server.base_url,
        label_studio_api_key=LEGACY_TOKEN,
        media_cache_dir=tmp_path / "cache",
        media_timeout_s=5.0,
    )


def resolver_to(address: str) -> Any:
    return lambda host: [address]


# -- decoding ----------------------------------------------------------------------------------


def test_decode_rgb_png_is_exact() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(pixels)), max_pixels=100, source="x")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_decode_applies_exif_orientation_6() -> None:
    # Stored 40 wide x 20 high, left half red, right half blue; orientation 6 = rotate 90° clockwise.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data, max_pixels=10_000, source="x")
    assert out.shape == (40, 20, 3)  # displayed 20 wide x 40 high
    top, bottom = out[5:15].reshape(-1, 3).mean(0), out[25:35].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the stored left (red) ends up on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_decode_16bit_grey_png_scales_linearly() -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_image(data, max_pixels=100, source="x")
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_decode_cmyk_jpeg_to_rgb() -> None:
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)  # pure red ink mix
    out = decode_image(data, max_pixels=100, source="x")
    assert out.shape == (8, 8, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15


def test_decode_rgba_composites_on_white() -> None:
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(rgba, "RGBA")), max_pixels=100, source="x")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [127, 127, 255])


def test_decode_grey_la_palette_and_bilevel() -> None:
    grey = np.array([[0, 100, 255]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(grey, "L")), max_pixels=100, source="x")
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [100, 100, 100], [255, 255, 255]])

    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], dtype=np.uint8), "LA")
    out = decode_image(encode(la), max_pixels=100, source="x")
    np.testing.assert_array_equal(out[0], [[50, 50, 50], [255, 255, 255]])

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 6))
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    out = decode_image(encode(palette, transparency=1), max_pixels=100, source="x")
    np.testing.assert_array_equal(out[0], [[0, 0, 255], [255, 255, 255]])

    bilevel = Image.new("1", (3, 1), 0)
    bilevel.putpixel((1, 0), 1)
    out = decode_image(encode(bilevel), max_pixels=100, source="x")
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0])


def test_decode_one_pixel() -> None:
    out = decode_image(png_bytes(1, 1, (1, 2, 3)), max_pixels=1, source="x")
    np.testing.assert_array_equal(out, [[[1, 2, 3]]])


def test_decode_truncated_jpeg_and_garbage_are_media_errors() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    jpeg = encode(Image.fromarray(pixels), "JPEG")
    with pytest.raises(MediaError, match="cannot decode image photo.jpg"):
        decode_image(jpeg[: len(jpeg) // 2], max_pixels=10_000, source="photo.jpg")
    for junk in (b"", b"not an image at all", jpeg[:40]):
        with pytest.raises(MediaError, match="cannot decode image"):
            decode_image(junk, max_pixels=10_000, source="photo.jpg")


def test_decode_refuses_decompression_bomb_from_the_header() -> None:
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(MediaTooLarge, match="too large|over the limit"):
        decode_image(bomb, max_pixels=100_000_000, source="bomb.png")
    # Under PIL's own threshold, our limit decides, before any pixel is decoded.
    with pytest.raises(MediaTooLarge, match="2000x2000 = 4000000 pixels, over the limit of 1000000"):
        decode_image(png_declaring(2000, 2000), max_pixels=1_000_000, source="bomb.png")


# -- local files ---------------------------------------------------------------------------------


def test_upload_read_from_media_dir_without_label_studio(tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "upload" / "3").mkdir(parents=True)
    (media / "upload" / "3" / "ab12cd34-my photo.png").write_bytes(png_bytes(4, 2))
    fetcher = MediaFetcher(Settings(label_studio_media_dir=media, media_cache_dir=tmp_path / "cache"))
    out = fetcher.fetch("/data/upload/3/ab12cd34-my%20photo.png")
    assert out.shape == (2, 4, 3)
    assert not out.flags.writeable
    with pytest.raises(MediaError, match="set LABEL_STUDIO_URL"):
        fetcher.fetch("/data/upload/3/missing.png")


def test_upload_falls_back_to_label_studio_with_token(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    server.routes["/data/upload/3/x.png"] = Route(body=png_bytes(3, 5), protected=True)
    out = MediaFetcher(settings).fetch("/data/upload/3/x.png")
    assert out.shape == (5, 3, 3)
    assert server.requests[-1].authorization == f"Token {LEGACY_TOKEN}"


def test_absolute_url_on_label_studio_host_reads_the_shared_dir(tmp_path: Path, settings: Settings) -> None:
    media = tmp_path / "media"
    (media / "upload" / "1").mkdir(parents=True)
    (media / "upload" / "1" / "a.png").write_bytes(png_bytes(2, 2))
    fetcher = MediaFetcher(settings.with_changes(label_studio_media_dir=media))
    assert fetcher.fetch(f"{settings.label_studio_url}/data/upload/1/a.png").shape == (2, 2, 3)


def test_local_files_from_document_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "c.png").write_bytes(png_bytes(6, 4))
    fetcher = MediaFetcher(Settings(local_files_document_root=root, media_cache_dir=tmp_path / "cache"))
    assert fetcher.fetch("/data/local-files/?d=images/c.png").shape == (4, 6, 3)
    assert fetcher.fetch("/data/local-files/?d=images%2Fc.png").shape == (4, 6, 3)
    with pytest.raises(MediaNotFound):
        fetcher.fetch("/data/local-files/?d=images/none.png")
    with pytest.raises(MediaError, match=r"\?d="):
        fetcher.fetch("/data/local-files/?x=1")


@pytest.mark.parametrize(
    "url",
    [
        "/data/local-files/?d=../secret.png",
        "/data/local-files/?d=images/../../secret.png",
        "/data/local-files/?d=%2E%2E/secret.png",
        "/data/local-files/?d=/etc/passwd",
        "/data/local-files/?d=images/link-out.png",
        "/data/upload/../../secret.png",
        "/data/upload/1/%2e%2e/%2e%2e/%2e%2e/secret.png",
    ],
)
def test_paths_escaping_the_root_are_forbidden(tmp_path: Path, url: str) -> None:
    root = tmp_path / "root"
    media = tmp_path / "media"
    (root / "images").mkdir(parents=True)
    (media / "upload" / "1").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (root / "images" / "link-out.png").symlink_to(tmp_path / "secret.png")
    fetcher = MediaFetcher(
        Settings(local_files_document_root=root, label_studio_media_dir=media, media_cache_dir=tmp_path / "c")
    )
    with pytest.raises(MediaForbidden, match="leaves the directory configured by"):
        fetcher.fetch(url)


def test_symlink_inside_the_root_is_allowed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "real.png").write_bytes(png_bytes(2, 3))
    (root / "link.png").symlink_to(root / "a" / "real.png")
    fetcher = MediaFetcher(Settings(local_files_document_root=root, media_cache_dir=tmp_path / "c"))
    assert fetcher.fetch("/data/local-files/?d=link.png").shape == (3, 2, 3)


def test_local_file_over_the_byte_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.png").write_bytes(png_bytes(64, 64))
    fetcher = MediaFetcher(
        Settings(local_files_document_root=root, max_image_bytes=50, media_cache_dir=tmp_path)
    )
    with pytest.raises(MediaTooLarge, match="MAX_IMAGE_BYTES"):
        fetcher.fetch("/data/local-files/?d=big.png")


def test_edited_local_file_is_read_again(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    path = root / "x.png"
    path.write_bytes(png_bytes(2, 2, (1, 1, 1)))
    fetcher = MediaFetcher(Settings(local_files_document_root=root, media_cache_dir=tmp_path / "c"))
    assert fetcher.fetch("/data/local-files/?d=x.png")[0, 0, 0] == 1
    path.write_bytes(png_bytes(3, 2, (9, 9, 9)))
    os.utime(path, ns=(1, 10**18))
    assert fetcher.fetch("/data/local-files/?d=x.png")[0, 0, 0] == 9


# -- configuration errors --------------------------------------------------------------------------


def test_relative_url_without_label_studio_url(tmp_path: Path) -> None:
    fetcher = MediaFetcher(Settings(media_cache_dir=tmp_path))
    for url in ("/data/upload/1/a.png", "/data/local-files/?d=a.png", "/storage-data/uploaded/?filepath=x"):
        with pytest.raises(MediaError, match="set LABEL_STUDIO_URL"):
            fetcher.fetch(url)


def test_unsupported_and_empty_urls(settings: Settings) -> None:
    fetcher = MediaFetcher(settings)
    for url in ("ftp://host/a.png", "file:///etc/passwd", "images/a.png", "   "):
        with pytest.raises(MediaError):
            fetcher.fetch(url)


def test_only_label_studio_media_routes_get_the_token(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    fetcher = MediaFetcher(settings)
    for url in (
        "/api/projects/1/",
        "/data/upload/1/../../api/projects/",
        "/data/upload/1/%2E%2E/x.png",
        "/user/logout",
    ):
        with pytest.raises(MediaForbidden):
            fetcher.fetch(url)
    with pytest.raises(MediaError, match="unsupported image URL"):
        fetcher.fetch("//evil.example/a.png")
    assert server.requests == []


def test_label_studio_under_a_path_prefix(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/ls/data/upload/1/a.png"] = Route(body=png_bytes(3, 2), protected=True)
    fetcher = MediaFetcher(settings.with_changes(label_studio_url=server.base_url + "/ls"))
    assert fetcher.fetch("/ls/data/upload/1/a.png").shape == (2, 3, 3)
    assert fetcher.fetch(server.url("/ls/data/upload/1/a.png")).shape == (2, 3, 3)


def test_cloud_uri_needs_task_id_and_label_studio(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="task id is required"):
        MediaFetcher(settings).fetch("s3://bucket/a.png")
    with pytest.raises(MediaError, match="set LABEL_STUDIO_URL"):
        MediaFetcher(Settings(media_cache_dir=tmp_path)).fetch("gs://bucket/a.png", task_id=1)


# -- HTTP: statuses, limits, time-outs ---------------------------------------------------------------


def test_http_statuses_map_to_errors(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/data/upload/1/gone.png"] = Route(status=404)
    server.routes["/data/upload/1/boom.png"] = Route(status=500)
    server.routes["/data/upload/1/private.png"] = Route(body=png_bytes(), protected=True)
    server.routes["/data/upload/1/junk.png"] = Route(body=b"<html>login</html>", protected=True)
    fetcher = MediaFetcher(settings)
    with pytest.raises(MediaNotFound, match="HTTP 404"):
        fetcher.fetch("/data/upload/1/gone.png")
    with pytest.raises(MediaUnavailable, match="HTTP 500"):
        fetcher.fetch("/data/upload/1/boom.png")
    with pytest.raises(MediaError, match="cannot decode image /data/upload/1/junk.png"):
        fetcher.fetch("/data/upload/1/junk.png")
    no_key = MediaFetcher(
        settings.with_changes(label_studio_api_key=None, media_cache_dir=settings.media_cache_dir / "2")
    )
    with pytest.raises(MediaForbidden, match="HTTP 401.*set LABEL_STUDIO_API_KEY"):
        no_key.fetch("/data/upload/1/private.png")
    wrong_key = MediaFetcher(settings.with_changes(label_studio_api_key="f" * 40))
    with pytest.raises(MediaForbidden, match="check LABEL_STUDIO_API_KEY") as info:
        wrong_key.fetch("/data/upload/1/private.png")
    assert "f" * 40 not in info.value.message


def test_byte_cap_with_and_without_content_length(settings: Settings, server: LabelStudioTestServer) -> None:
    big = png_bytes(200, 200) + b"\0" * 5000
    server.routes["/data/upload/1/declared.png"] = Route(body=big)
    server.routes["/data/upload/1/streamed.png"] = Route(body=big, send_length=False)
    server.routes["/data/upload/1/small.png"] = Route(body=png_bytes(3, 3), send_length=False)
    fetcher = MediaFetcher(settings.with_changes(max_image_bytes=2000))
    with pytest.raises(MediaTooLarge, match="MAX_IMAGE_BYTES"):
        fetcher.fetch("/data/upload/1/declared.png")
    with pytest.raises(MediaTooLarge, match="MAX_IMAGE_BYTES"):
        fetcher.fetch("/data/upload/1/streamed.png")
    assert fetcher.fetch("/data/upload/1/small.png").shape == (3, 3, 3)


def test_pixel_limit_through_fetch(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/data/upload/1/bomb.png"] = Route(body=png_declaring(50_000, 50_000))
    with pytest.raises(MediaTooLarge):
        MediaFetcher(settings).fetch("/data/upload/1/bomb.png")


def test_timeout_and_connection_refused(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/data/upload/1/slow.png"] = Route(body=png_bytes(), delay_s=1.0)
    with pytest.raises(MediaUnavailable, match="127.0.0.1"):
        MediaFetcher(settings.with_changes(media_timeout_s=0.2)).fetch("/data/upload/1/slow.png")
    closed = LabelStudioTestServer()
    closed.start()
    dead_url = closed.base_url
    closed.stop()
    fetcher = MediaFetcher(settings.with_changes(label_studio_url=dead_url))
    with pytest.raises(MediaUnavailable, match="cannot connect to 127.0.0.1"):
        fetcher.fetch("/data/upload/1/a.png")


# -- redirects and the SSRF guard ---------------------------------------------------------------------


def test_disallowed_host_is_refused_without_a_request(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    server.routes["/img.png"] = Route(body=png_bytes())
    with pytest.raises(MediaForbidden, match="MEDIA_ALLOWED_HOSTS"):
        MediaFetcher(settings).fetch(server.url("/img.png", host="localhost"))
    assert server.requests == []


def test_allowed_host_with_public_address_is_fetched_without_token(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    server.routes["/img.png"] = Route(body=png_bytes(5, 5))
    fetcher = MediaFetcher(
        settings.with_changes(media_allowed_hosts=("localhost",)), resolver=resolver_to(PUBLIC_IP)
    )
    assert fetcher.fetch(server.url("/img.png?sig=secret", host="localhost")).shape == (5, 5, 3)
    assert server.requests[-1].authorization is None


@pytest.mark.parametrize(
    "address", ["10.0.0.7", "127.0.0.1", "169.254.169.254", "192.168.1.2", "::1", "fe80::1"]
)
def test_allowed_host_resolving_to_a_private_address_is_refused(
    settings: Settings, server: LabelStudioTestServer, address: str
) -> None:
    fetcher = MediaFetcher(
        settings.with_changes(media_allowed_hosts=("images.example",)), resolver=resolver_to(address)
    )
    with pytest.raises(MediaForbidden, match=f"non-public address {address}"):
        fetcher.fetch("http://images.example/a.png")
    assert server.requests == []


def test_allow_listed_metadata_ip_literal_is_refused(settings: Settings) -> None:
    fetcher = MediaFetcher(settings.with_changes(media_allowed_hosts=("169.254.169.254",)))
    with pytest.raises(MediaForbidden, match="non-public address 169.254.169.254"):
        fetcher.fetch("http://169.254.169.254/latest/meta-data/")


def test_redirect_to_another_host_is_checked_again(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/to-private"] = Route(status=302, location=server.url("/img.png", host="127.0.0.2"))
    server.routes["/to-file"] = Route(status=302, location="file:///etc/passwd")
    fetcher = MediaFetcher(
        settings.with_changes(label_studio_url=None, media_allowed_hosts=("localhost", "127.0.0.2")),
        resolver=resolver_to(PUBLIC_IP),
    )
    with pytest.raises(MediaForbidden, match="non-public address 127.0.0.2"):
        fetcher.fetch(server.url("/to-private", host="localhost"))
    with pytest.raises(MediaForbidden, match="non-http"):
        fetcher.fetch(server.url("/to-file", host="localhost"))
    assert server.count("/img.png") == 0


def test_redirect_from_allowed_host_to_unlisted_host_is_refused(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    server.routes["/hop"] = Route(status=302, location="http://elsewhere.example/img.png")
    fetcher = MediaFetcher(
        settings.with_changes(media_allowed_hosts=("localhost",)), resolver=resolver_to(PUBLIC_IP)
    )
    with pytest.raises(MediaForbidden, match="'elsewhere.example' is neither"):
        fetcher.fetch(server.url("/hop", host="localhost"))


def test_at_most_five_redirects(settings: Settings, server: LabelStudioTestServer) -> None:
    for i in range(6):
        server.routes[f"/data/upload/1/r{i}"] = Route(status=302, location=f"/data/upload/1/r{i + 1}")
    server.routes["/data/upload/1/r6"] = Route(body=png_bytes(2, 2))
    fetcher = MediaFetcher(settings)
    assert fetcher.fetch("/data/upload/1/r1").shape == (2, 2, 3)  # five redirects
    with pytest.raises(MediaUnavailable, match="more than 5 redirects"):
        fetcher.fetch("/data/upload/1/r0")


def test_presigned_cloud_uri_is_followed_without_the_token(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    seen: list[tuple[int, str]] = []

    def target(task_id: int, uri: str) -> str:
        seen.append((task_id, uri))
        return server.url("/bucket/a.png?X-Amz-Signature=abc", host="localhost")

    server.presign_target = target
    server.routes["/bucket/a.png"] = Route(body=png_bytes(7, 3))
    fetcher = MediaFetcher(
        settings, resolver=resolver_to(PUBLIC_IP)
    )  # no allow-list: trusted because LS sent it
    assert fetcher.fetch("s3://bucket/dir/a b.png", task_id=42).shape == (3, 7, 3)
    assert seen == [(42, "s3://bucket/dir/a b.png")]
    presign, storage = server.requests[-2:]
    assert presign.path.startswith("/tasks/42/presign/?fileuri=")
    assert presign.authorization == f"Token {LEGACY_TOKEN}"
    assert storage.path.startswith("/bucket/a.png") and storage.authorization is None


def test_presigned_target_on_a_private_address_is_refused(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    server.presign_target = lambda task_id, uri: "http://minio.internal:9000/bucket/a.png?sig=secret"
    fetcher = MediaFetcher(settings, resolver=resolver_to("172.18.0.5"))
    with pytest.raises(MediaForbidden, match="non-public address 172.18.0.5") as info:
        fetcher.fetch("s3://bucket/a.png", task_id=1)
    assert "secret" not in info.value.message


def test_cloud_uri_proxied_by_label_studio(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/proxy/gs://bucket/b.png"] = Route(body=png_bytes(4, 4))
    assert MediaFetcher(settings).fetch("gs://bucket/b.png", task_id=3).shape == (4, 4, 3)
    encoded = base64.urlsafe_b64encode(b"gs://bucket/b.png").decode()
    assert server.requests[-1].path.replace("%3D", "=") == f"/tasks/3/presign/?fileuri={encoded}"


def test_host_matching_and_public_addresses() -> None:
    assert host_matches("Images.Example.", ["images.example"])
    assert host_matches("a.cdn.example", ["*.cdn.example"])
    assert not host_matches("cdn.example.evil", ["*.cdn.example"])
    assert not host_matches("evilcdn.example", ["*.cdn.example"])
    assert host_matches("anything", ["*"])
    assert is_public_address(PUBLIC_IP) and is_public_address("2606:4700::1111")
    for address in ("10.1.2.3", "172.16.0.1", "100.64.0.1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1", "x"):
        assert not is_public_address(address)


# -- personal access tokens ------------------------------------------------------------------------


def test_personal_access_token_is_exchanged_once_and_again_after_401(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    for name in ("a", "b", "c"):
        server.routes[f"/data/upload/1/{name}.png"] = Route(body=png_bytes(2, 2), protected=True)
    fetcher = MediaFetcher(settings.with_changes(label_studio_api_key=server.pat))
    fetcher.fetch("/data/upload/1/a.png")
    fetcher.fetch("/data/upload/1/b.png")
    assert server.refresh_calls == 1
    server.revoke_access_tokens()  # e.g. Label Studio restarted with a new signing key
    fetcher.fetch("/data/upload/1/c.png")
    assert server.refresh_calls == 2
    assert server.count("/data/upload/1/c.png") == 2


# -- caches ----------------------------------------------------------------------------------------


def test_memory_cache_skips_download_and_decode(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/data/upload/1/a.png"] = Route(body=png_bytes(4, 4))
    fetcher = MediaFetcher(settings)
    first = fetcher.fetch("/data/upload/1/a.png")
    second = fetcher.fetch("/data/upload/1/a.png")
    assert second is first
    assert server.count("/data/upload/1/a.png") == 1


def test_disk_cache_survives_a_new_fetcher(settings: Settings, server: LabelStudioTestServer) -> None:
    server.routes["/data/upload/1/a.png"] = Route(body=png_bytes(4, 4))
    no_memory = settings.with_changes(media_cache_memory_bytes=0)
    MediaFetcher(no_memory).fetch("/data/upload/1/a.png")
    again = MediaFetcher(no_memory).fetch("/data/upload/1/a.png")
    assert again.shape == (4, 4, 3)
    assert server.count("/data/upload/1/a.png") == 1
    # Another Label Studio instance does not share the entry.
    other = no_memory.with_changes(label_studio_url=server.url("", host="localhost"))
    MediaFetcher(other, resolver=resolver_to(PUBLIC_IP)).fetch("/data/upload/1/a.png")
    assert server.count("/data/upload/1/a.png") == 2


def test_disk_cache_is_bounded(settings: Settings, server: LabelStudioTestServer) -> None:
    sizes = {}
    for i in range(4):
        body = png_bytes(30 + i, 30, (i, 0, 0)) + bytes(1000)  # trailing bytes after IEND are ignored
        server.routes[f"/data/upload/1/{i}.png"] = Route(body=body)
        sizes[i] = len(body)
    bound = sizes[0] * 2 + 100
    fetcher = MediaFetcher(settings.with_changes(media_cache_disk_bytes=bound, media_cache_memory_bytes=0))
    for i in range(4):
        fetcher.fetch(f"/data/upload/1/{i}.png")
    files = [p for p in settings.media_cache_dir.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= bound
    assert len(files) == 2
    fetcher.fetch("/data/upload/1/3.png")  # newest: still cached
    fetcher.fetch("/data/upload/1/0.png")  # oldest: evicted, downloaded again
    assert server.count("/data/upload/1/3.png") == 1
    assert server.count("/data/upload/1/0.png") == 2


def test_concurrent_fetches_of_one_image_download_once(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    server.routes["/data/upload/1/a.png"] = Route(body=png_bytes(16, 16), delay_s=0.2)
    fetcher = MediaFetcher(settings)
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetcher.fetch("/data/upload/1/a.png")))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(r is results[0] for r in results)
    assert server.count("/data/upload/1/a.png") == 1


def test_token_is_not_sent_when_another_host_redirects_to_label_studio(
    settings: Settings, server: LabelStudioTestServer
) -> None:
    server.routes["/bounce"] = Route(status=302, location=server.url("/data/upload/1/p.png"))
    server.routes["/data/upload/1/p.png"] = Route(body=png_bytes(), protected=True)
    fetcher = MediaFetcher(
        settings.with_changes(media_allowed_hosts=("localhost",)), resolver=resolver_to(PUBLIC_IP)
    )
    with pytest.raises(MediaForbidden, match="HTTP 401"):
        fetcher.fetch(server.url("/bounce", host="localhost"))
    assert all(r.authorization is None for r in server.requests)
