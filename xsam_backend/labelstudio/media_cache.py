"""Two caches for task images: encoded bytes on disk, decoded arrays in memory.

* :class:`DiskCache` keeps downloaded files under one directory, bounded in bytes, least recently
  used first out (recency is the file's mtime, bumped on every hit, because many file systems
  do not update atime). Writes go to a temporary file in the same directory and are renamed into
  place, so several processes can share the directory: a reader sees a whole file or none, and a
  file evicted by another process is simply a miss.
* :class:`ArrayCache` keeps decoded ``(H, W, 3)`` uint8 images in memory, bounded by their
  ``nbytes``, least recently used first out; thread-safe.

Keys are hex strings (see :func:`cache_key`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cache_key(*parts: str) -> str:
    """sha256 hex digest of ``parts`` joined by newlines (e.g. Label Studio base URL, task URL)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


class DiskCache:
    """Encoded files under ``directory``, at most ``max_bytes`` in all; ``max_bytes <= 0`` disables it.

    Cache failures (read-only or full disk) are logged and treated as misses: a cache must never
    fail a request.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._dir = Path(directory)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0

    def _path(self, key: str) -> Path:
        return self._dir / key[:2] / key

    def get(self, key: str) -> bytes | None:
        """The cached bytes for ``key``, or ``None``; a hit marks the entry most recently used."""
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("media cache: cannot read %s: %s", path, exc)
            return None
        # Evicted by another process since the read? The bytes are still good.
        with contextlib.suppress(OSError):
            os.utime(path)
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, then evict least recently used entries."""
        if not self.enabled or len(data) > self._max_bytes:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("media cache: cannot write %s: %s", path, exc)
            return
        self.evict()

    def evict(self) -> None:
        """Delete least recently used entries until the directory holds at most ``max_bytes``."""
        with self._lock:
            entries: list[tuple[int, int, Path]] = []
            total = 0
            for path in self._dir.glob("*/*"):
                if path.name.startswith(".tmp-"):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # evicted by another process meanwhile
                entries.append((stat.st_mtime_ns, stat.st_size, path))
                total += stat.st_size
            if total <= self._max_bytes:
                return
            entries.sort()
            for _, size, path in entries:
                path.unlink(missing_ok=True)
                total -= size
                if total <= self._max_bytes:
                    break


class ArrayCache:
    """Decoded images in memory, at most ``max_bytes`` of array data; ``max_bytes <= 0`` disables it."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of array data held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> np.ndarray | None:
        """The array stored under ``key`` (marked most recently used), or ``None``."""
        with self._lock:
            array = self._items.get(key)
            if array is not None:
                self._items.move_to_end(key)
            return array

    def put(self, key: str, array: np.ndarray) -> None:
        """Store ``array`` (not copied: pass a read-only array), evicting the least recently used."""
        if array.nbytes > self._max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = array
            self._bytes += array.nbytes
            while self._bytes > self._max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
