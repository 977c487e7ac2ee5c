"""Fetch a task's image the way Label Studio serves it, safely, and decode it to RGB.

:meth:`MediaFetcher.fetch` turns the value of a task's image field into an ``(H, W, 3)`` uint8
RGB array in the frame Label Studio's percentages use (EXIF orientation applied). The URL forms:

==========================================  =================================================
``/data/upload/<project>/<file>``           ``LABEL_STUDIO_MEDIA_DIR/upload/<project>/<file>``
                                            when that file exists, else GET from Label Studio
``/data/local-files/?d=<relative path>``    ``LOCAL_FILES_DOCUMENT_ROOT/<relative path>`` when
                                            the root is set (a path escaping it is refused),
                                            else GET from Label Studio
``s3://``, ``gs://``, ``azure-blob://``,    GET ``{LS}/tasks/<task id>/presign/?fileuri=<urlsafe
``azure-spi://``                            base64 of the URI>``; Label Studio redirects to a
                                            presigned URL or answers with the bytes
``http(s)://`` on Label Studio's origin     as the relative forms above
other ``http(s)://``                        GET, only from hosts in ``MEDIA_ALLOWED_HOSTS``
==========================================  =================================================

Requests to Label Studio's origin carry its API key (:mod:`xsam_backend.labelstudio.auth`);
no other request does. SSRF guard: redirects are followed by hand (at most 5) and every hop
must be on Label Studio's origin, on an allowed host, or the direct redirect target of a Label
Studio answer (a presigned storage URL); every hop not on Label Studio's origin must resolve
only to public addresses (no private, loopback, link-local, shared or reserved ranges). The
resolver is a constructor argument. The check and the connection resolve the name separately,
so a DNS server that answers differently within milliseconds can still slip through; pointing
the backend at a resolver you trust closes that gap.

Limits: the whole fetch (all hops and all bytes) must finish within ``MEDIA_TIMEOUT_S``; bodies
are streamed and cut at ``MAX_IMAGE_BYTES``; the pixel count is checked from the image header
before decoding (``MAX_IMAGE_PIXELS``).

Caches: downloaded bytes on disk (:class:`~xsam_backend.labelstudio.media_cache.DiskCache`,
keyed by sha256 of Label Studio's base URL and the task URL), decoded arrays in memory
(:class:`~xsam_backend.labelstudio.media_cache.ArrayCache`), so repeated clicks on one image
skip both download and decode. Files read from local directories skip the disk cache; their
memory-cache key includes the file's size and mtime, so an edited file is read again.

Error messages name the task URL (query strings of absolute URLs left out, as they may hold
storage signatures) and the host; never a token.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from xsam_backend.errors import (
    MediaError,
    MediaForbidden,
    MediaNotFound,
    MediaTooLarge,
    MediaUnavailable,
)
from xsam_backend.labelstudio.auth import LabelStudioAuth
from xsam_backend.labelstudio.media_cache import ArrayCache, DiskCache, cache_key
from xsam_backend.settings import Settings

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Paths under which Label Studio serves task media: uploads and local files, storage proxies,
# and the per-task / per-project presign and resolve routes.
_LABEL_STUDIO_MEDIA_PREFIXES = ("/data/", "/storage-data/", "/tasks/", "/projects/")
_CHUNK_BYTES = 1 << 16

Resolver = Callable[[str], Sequence[str]]
"""Host name -> the IP addresses (strings) it resolves to; raises ``OSError`` when it cannot."""


def resolve_host(host: str) -> list[str]:
    """The IP addresses ``host`` resolves to through the system resolver (the default resolver)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public_address(address: str) -> bool:
    """Whether ``address`` (an IPv4/IPv6 literal) is globally routable and not multicast.

    Private (10/8, 172.16/12, 192.168/16, fc00::/7), loopback, link-local (169.254/16, the cloud
    metadata range; fe80::/10), shared (100.64/10), reserved and unspecified addresses are not;
    IPv4-mapped IPv6 addresses are judged by their IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def host_matches(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` matches an allow-list entry: an exact name, ``*.domain`` or ``*`` (any host).

    Names compare case-insensitively, ignoring a trailing dot. ``*`` still gets the public-address
    check.
    """
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def display_url(url: str) -> str:
    """``url`` for error messages: an absolute URL's query string (maybe a signature) is elided."""
    parts = urlsplit(url)
    if parts.scheme and parts.query:
        return url.split("?", 1)[0] + "?…"
    return url


def decode_image(data: bytes, *, max_pixels: int, source: str) -> np.ndarray:
    """Decode an encoded image to RGB, applying its EXIF orientation.

    Returns an ``(H, W, 3)`` uint8 array, H and W after EXIF orientation (the frame Label Studio
    shows and its percentages refer to). Modes are converted as follows: ``RGB`` as is; ``L``,
    ``1``, ``P``, ``CMYK``, ``YCbCr`` and other colour modes with PIL's conversion; 16-bit
    (``I;16*``) and 32-bit integer (``I``) grey levels scaled linearly from 0..65535 to 0..255
    (values clipped), float (``F``) from 0..1 when the values lie there, else by their min..max;
    any alpha channel (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) composited on white.
    ``source`` names the image in error messages.

    Raises :class:`MediaTooLarge` when width·height exceeds ``max_pixels`` (checked from the
    header before any pixel is decoded) and :class:`MediaError` ("cannot decode image") for data
    that is not an image, is truncated or is corrupt.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise MediaTooLarge(f"{source}: image is too large ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"cannot decode image {source}: not a supported image file") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise MediaTooLarge(
                f"{source}: image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{max_pixels} (MAX_IMAGE_PIXELS)"
            )
        if width == 0 or height == 0:
            raise MediaError(f"cannot decode image {source}: it has no pixels ({width}x{height})")
        try:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return _to_rgb(oriented)
        except (OSError, ValueError, SyntaxError, struct.error) as exc:
            raise MediaError(f"cannot decode image {source}: {exc}") from exc


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(grey * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        finite = grey[np.isfinite(grey)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if low < 0.0 or high > 1.0:
            grey = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
        grey = np.nan_to_num(grey, nan=0.0, posinf=1.0, neginf=0.0)
        grey8 = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        composited = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(composited), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _raise_pil_bomb_guard(max_pixels: int) -> None:
    # PIL refuses images over 2 * Image.MAX_IMAGE_PIXELS on open, before our own check can run;
    # raise its threshold (never lower it: other code in the process may rely on it) so that
    # MAX_IMAGE_PIXELS, not PIL's default, decides what is too large.
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


@dataclass(frozen=True)
class Stat:
    """The parts of a file's ``stat`` that identify its content version."""

    st_size: int
    st_mtime_ns: int


@dataclass(frozen=True)
class _LocalFile:
    path: Path


@dataclass(frozen=True)
class _Remote:
    url: str  # absolute http(s) URL of the first request


class MediaFetcher:
    """Fetches and decodes task images; thread-safe, one per process.

    ``session`` performs all HTTP requests (a test seam, and connection reuse); ``resolver`` maps
    a host name to IP addresses for the SSRF guard. Constructing a fetcher raises PIL's global
    decompression-bomb threshold to ``settings.max_image_pixels`` if it is lower (see
    :func:`decode_image`); importing this module changes nothing.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        resolver: Resolver = resolve_host,
    ) -> None:
        self._settings = settings
        self._session = session if session is not None else requests.Session()
        self._resolver = resolver
        self._ls_base = settings.label_studio_url.rstrip("/") if settings.label_studio_url else None
        self._ls_path = urlsplit(self._ls_base).path.rstrip("/") if self._ls_base else ""
        self._auth = (
            LabelStudioAuth(
                self._ls_base,
                settings.label_studio_api_key,
                session=self._session,
                timeout_s=settings.media_timeout_s,
            )
            if self._ls_base
            else None
        )
        self._disk = DiskCache(settings.media_cache_dir, settings.media_cache_disk_bytes)
        self._memory = ArrayCache(settings.media_cache_memory_bytes)
        self._key_locks: dict[str, tuple[threading.Lock, list[int]]] = {}
        self._key_locks_guard = threading.Lock()
        _raise_pil_bomb_guard(settings.max_image_pixels)

    @property
    def auth(self) -> LabelStudioAuth | None:
        """The Label Studio authorization in use, or ``None`` without ``LABEL_STUDIO_URL``."""
        return self._auth

    @property
    def memory_cache(self) -> ArrayCache:
        """The in-memory cache of decoded images."""
        return self._memory

    def fetch(self, url: str, task_id: int | None = None) -> np.ndarray:
        """The image at ``url`` (a task's image field) as a read-only ``(H, W, 3)`` uint8 RGB array.

        H and W are the size after EXIF orientation, the frame of Label Studio's percentages.
        ``task_id`` is required for cloud storage URIs (Label Studio presigns them per task).
        The array is shared with the memory cache: copy it before writing to it.

        Raises :class:`MediaForbidden` (SSRF guard, path outside a root, token refused),
        :class:`MediaNotFound`, :class:`MediaTooLarge` (bytes or pixels), :class:`MediaUnavailable`
        (connection, time-out, server error) and :class:`MediaError` (undecodable image, unusable URL).
        """
        if not isinstance(url, str) or not url.strip():
            raise MediaError(f"the task's image URL is empty or not a string: {url!r}")
        url = url.strip()
        source = self._locate(url, task_id)
        if isinstance(source, _LocalFile):
            stat = self._stat(source.path, url)
            key = cache_key("file", str(source.path), str(stat.st_size), str(stat.st_mtime_ns))
        else:
            key = cache_key(self._ls_base or "", url)
        with self._locked(key):
            cached = self._memory.get(key)
            if cached is not None:
                log.debug("media: memory cache hit for %s", display_url(url))
                return cached
            if isinstance(source, _LocalFile):
                data = self._read_local(source.path, url)
            else:
                data = self._read_remote(source.url, key, display_url(url))
            image = decode_image(data, max_pixels=self._settings.max_image_pixels, source=display_url(url))
            image.flags.writeable = False
            self._memory.put(key, image)
            return image

    # -- where the bytes are -------------------------------------------------------------------

    def _locate(self, url: str, task_id: int | None) -> _LocalFile | _Remote:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            return _Remote(self._presign_url(url, task_id))
        if scheme in ("http", "https"):
            if self._auth is not None and self._auth.is_label_studio(url):
                return self._locate_on_label_studio(parts.path, parts.query, url)
            if not parts.hostname or not host_matches(parts.hostname, self._settings.media_allowed_hosts):
                raise MediaForbidden(
                    f"{display_url(url)}: host {parts.hostname!r} is neither Label Studio's host nor in "
                    "MEDIA_ALLOWED_HOSTS; add it there to let the backend download from it"
                )
            return _Remote(url)
        if not scheme and not parts.netloc and url.startswith("/"):
            return self._locate_on_label_studio(parts.path, parts.query, url)
        raise MediaError(
            f"unsupported image URL {display_url(url)}: expected /data/upload/..., /data/local-files/?d=..., "
            "http(s)://..., or a cloud storage URI (s3://, gs://, azure-blob://, azure-spi://)"
        )

    def _locate_on_label_studio(self, path: str, query: str, url: str) -> _LocalFile | _Remote:
        """A path on Label Studio's server: a shared local directory if configured, else HTTP.

        Over HTTP only Label Studio's media routes are requested (the request carries the API key,
        so a task must not be able to point it at other endpoints), without ``.``/``..`` segments.
        """
        if self._ls_path and path.startswith(self._ls_path + "/"):
            path = path[len(self._ls_path) :]  # Label Studio served under a path prefix
        media_dir = self._settings.label_studio_media_dir
        if path.startswith("/data/upload/") and media_dir is not None:
            relative = unquote(path[len("/data/upload/") :])
            local = _inside(Path(media_dir) / "upload", relative, url, "LABEL_STUDIO_MEDIA_DIR")
            if local.is_file():
                return _LocalFile(local)
        if path.rstrip("/") == "/data/local-files":
            values = parse_qs(query).get("d")
            if not values or not values[0]:
                raise MediaError(f"{url}: a local-files URL needs a ?d=<path> parameter")
            root = self._settings.local_files_document_root
            if root is not None:
                local = _inside(Path(root), values[0], url, "LOCAL_FILES_DOCUMENT_ROOT")
                if local.is_file():
                    return _LocalFile(local)
                if self._ls_base is None:
                    raise MediaNotFound(f"{url}: no such file under LOCAL_FILES_DOCUMENT_ROOT")
        if any(segment in (".", "..") for segment in unquote(path).split("/")):
            raise MediaForbidden(f"{url}: '.' and '..' path segments are not allowed")
        if not path.startswith(_LABEL_STUDIO_MEDIA_PREFIXES):
            raise MediaForbidden(
                f"{url} is not a Label Studio media URL (expected a path under "
                f"{', '.join(_LABEL_STUDIO_MEDIA_PREFIXES)})"
            )
        if self._ls_base is None:
            raise MediaError(
                f"{url} is relative to Label Studio: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) so the "
                "backend can download it, or LABEL_STUDIO_MEDIA_DIR / LOCAL_FILES_DOCUMENT_ROOT to read "
                "the files directly"
            )
        return _Remote(self._ls_base + path + (f"?{query}" if query else ""))

    def _presign_url(self, uri: str, task_id: int | None) -> str:
        if self._ls_base is None:
            raise MediaError(f"{uri} is a cloud storage URI that Label Studio presigns: set LABEL_STUDIO_URL")
        if task_id is None:
            raise MediaError(
                f"{uri} is a cloud storage URI: Label Studio presigns it per task, so the task id is required"
            )
        encoded = base64.urlsafe_b64encode(uri.encode("utf-8")).decode("ascii")
        return f"{self._ls_base}/tasks/{int(task_id)}/presign/?fileuri={quote(encoded)}"

    # -- local files ---------------------------------------------------------------------------

    def _stat(self, path: Path, url: str) -> Stat:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise MediaNotFound(f"{url}: file not found") from None
        except OSError as exc:
            raise MediaUnavailable(f"{url}: cannot read the file: {exc.strerror}") from exc
        if stat.st_size > self._settings.max_image_bytes:
            raise MediaTooLarge(
                f"{url}: file is {stat.st_size} bytes, over the limit of {self._settings.max_image_bytes} "
                "(MAX_IMAGE_BYTES)"
            )
        return Stat(st_size=stat.st_size, st_mtime_ns=stat.st_mtime_ns)

    def _read_local(self, path: Path, url: str) -> bytes:
        try:
            with path.open("rb") as handle:
                data = handle.read(self._settings.max_image_bytes + 1)
        except FileNotFoundError:
            raise MediaNotFound(f"{url}: file not found") from None
        except PermissionError:
            raise MediaForbidden(f"{url}: the backend may not read the file (permission denied)") from None
        except OSError as exc:
            raise MediaUnavailable(f"{url}: cannot read the file: {exc.strerror}") from exc
        if len(data) > self._settings.max_image_bytes:
            raise MediaTooLarge(
                f"{url}: file is over the limit of {self._settings.max_image_bytes} bytes (MAX_IMAGE_BYTES)"
            )
        return data

    # -- HTTP ----------------------------------------------------------------------------------

    def _read_remote(self, url: str, key: str, shown: str) -> bytes:
        data = self._disk.get(key)
        if data is not None:
            log.debug("media: disk cache hit for %s", shown)
            return data
        data = self._download(url, shown)
        self._disk.put(key, data)
        return data

    def _download(self, url: str, shown: str) -> bytes:
        """GET ``url`` with the SSRF guard, following at most 5 redirects; the body, capped."""
        deadline = time.monotonic() + self._settings.media_timeout_s
        hop = url
        redirected_by_label_studio = False
        redirects = 0
        retried_auth = False
        # The API key goes only to Label Studio, and only while every hop so far was Label Studio:
        # a storage host redirecting back must not make us send it.
        chain_on_label_studio = True
        while True:
            on_label_studio = self._check_hop(hop, redirected_by_label_studio, shown)
            chain_on_label_studio = chain_on_label_studio and on_label_studio
            send_key = self._auth is not None and chain_on_label_studio
            headers = self._auth.headers_for(hop) if send_key and self._auth is not None else {}
            host = urlsplit(hop).hostname or "?"
            response = self._get(hop, headers, host, shown, deadline)
            with response:
                status = response.status_code
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise MediaUnavailable(
                            f"{host} answered HTTP {status} without a Location for {shown}"
                        )
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise MediaUnavailable(f"more than {MAX_REDIRECTS} redirects fetching {shown}")
                    hop = urljoin(hop, location)
                    redirected_by_label_studio = on_label_studio
                    continue
                if status == 401 and send_key and not retried_auth and self._auth is not None:
                    retried_auth = True
                    if self._auth.invalidate():
                        continue
                self._raise_for_status(status, host, shown, on_label_studio)
                return self._read_body(response, host, shown, deadline)

    def _check_hop(self, hop: str, redirected_by_label_studio: bool, shown: str) -> bool:
        """Apply the SSRF guard to one request URL; ``True`` if it is on Label Studio's origin."""
        parts = urlsplit(hop)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise MediaForbidden(f"{shown}: refusing to follow a redirect to a non-http(s) URL")
        if self._auth is not None and self._auth.is_label_studio(hop):
            return True
        host = parts.hostname
        if not redirected_by_label_studio and not host_matches(host, self._settings.media_allowed_hosts):
            raise MediaForbidden(
                f"{shown}: host {host!r} is neither Label Studio's host nor in MEDIA_ALLOWED_HOSTS"
            )
        try:
            addresses = [host] if _is_ip_literal(host) else list(self._resolver(host))
        except OSError as exc:
            raise MediaUnavailable(f"{shown}: cannot resolve host {host!r}") from exc
        if not addresses:
            raise MediaUnavailable(f"{shown}: host {host!r} resolves to no address")
        for address in addresses:
            if not is_public_address(address):
                raise MediaForbidden(
                    f"{shown}: host {host!r} resolves to the non-public address {address}; the backend only "
                    "downloads from public addresses outside Label Studio (for storage on a private network, "
                    "let Label Studio proxy the files: turn off 'Use pre-signed URLs' in the storage settings)"
                )
        return False

    def _get(
        self, hop: str, headers: dict[str, str], host: str, shown: str, deadline: float
    ) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MediaUnavailable(
                f"{shown}: timed out after {self._settings.media_timeout_s:g} s (at {host})"
            )
        try:
            return self._session.get(
                hop, headers=headers, stream=True, timeout=remaining, allow_redirects=False
            )
        except requests.Timeout as exc:
            raise MediaUnavailable(
                f"{host} did not answer within {self._settings.media_timeout_s:g} s for {shown}"
            ) from exc
        except requests.ConnectionError as exc:
            raise MediaUnavailable(f"cannot connect to {host} to fetch {shown}") from exc
        except requests.RequestException as exc:
            raise MediaUnavailable(f"request to {host} for {shown} failed: {type(exc).__name__}") from exc

    def _raise_for_status(self, status: int, host: str, shown: str, on_label_studio: bool) -> None:
        if 200 <= status < 300:
            return
        if status in (401, 403):
            hint = ""
            if on_label_studio:
                hint = (
                    "; set LABEL_STUDIO_API_KEY"
                    if self._auth is None or self._auth.kind == "none"
                    else "; check LABEL_STUDIO_API_KEY (legacy tokens are off by default since Label Studio "
                    "1.23: use a personal access token, or enable legacy tokens for the organisation)"
                )
            raise MediaForbidden(f"{host} refused {shown} (HTTP {status}){hint}")
        if status in (404, 410):
            raise MediaNotFound(f"{host} has no {shown} (HTTP {status})")
        if status == 413:
            raise MediaTooLarge(f"{host} refused to send {shown} (HTTP 413)")
        raise MediaUnavailable(f"{host} answered HTTP {status} for {shown}")

    def _read_body(self, response: requests.Response, host: str, shown: str, deadline: float) -> bytes:
        cap = self._settings.max_image_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise MediaTooLarge(f"{shown} is {declared} bytes, over the limit of {cap} (MAX_IMAGE_BYTES)")
        body = bytearray()
        try:
            for chunk in response.iter_content(_CHUNK_BYTES):
                body += chunk
                if len(body) > cap:
                    raise MediaTooLarge(f"{shown} is over the limit of {cap} bytes (MAX_IMAGE_BYTES)")
                if time.monotonic() > deadline:
                    raise MediaUnavailable(
                        f"{shown}: timed out after {self._settings.media_timeout_s:g} s while reading from {host}"
                    )
        except requests.RequestException as exc:
            raise MediaUnavailable(f"{host} broke off sending {shown}: {type(exc).__name__}") from exc
        return bytes(body)

    # -- one fetch per image at a time ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """Serialise fetches of one key, so concurrent requests for an image download it once."""
        with self._key_locks_guard:
            lock, users = self._key_locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._key_locks_guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._key_locks[key]


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _inside(root: Path, relative: str, url: str, setting: str) -> Path:
    """``root / relative`` with symlinks and ``..`` resolved; :class:`MediaForbidden` if outside ``root``.

    ``setting`` names the variable that configured ``root``, for the message (which does not show
    server paths).
    """
    try:
        base = root.resolve()
        candidate = (base / relative).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise MediaError(f"{url}: unusable file path ({exc})") from exc
    if not candidate.is_relative_to(base):
        raise MediaForbidden(f"{url}: the path leaves the directory configured by {setting}")
    return candidate
