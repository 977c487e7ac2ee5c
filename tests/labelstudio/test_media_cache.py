"""DiskCache and ArrayCache: bounds, recency, atomic writes, sharing a directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xsam_backend.labelstudio.media_cache import ArrayCache, DiskCache, cache_key


def test_cache_key_is_stable_and_separates_parts() -> None:
    assert cache_key("http://ls", "/a") == cache_key("http://ls", "/a")
    assert cache_key("http://ls", "/a") != cache_key("http://ls2", "/a")
    assert cache_key("ab", "c") != cache_key("a", "bc")
    assert len(cache_key("x")) == 64


def test_disk_cache_round_trip_and_no_temporary_files_left(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000)
    key = cache_key("k")
    assert cache.get(key) is None
    cache.put(key, b"hello")
    assert cache.get(key) == b"hello"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [key]


def test_disk_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 250)
    keys = [cache_key(str(i)) for i in range(3)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, bytes(100))
        path = tmp_path / key[:2] / key
        os.utime(path, ns=(i * 10**9, i * 10**9))  # distinct, old mtimes
    assert cache.get(keys[0]) is not None  # a hit makes entry 0 the most recent
    cache.put(keys[2], bytes(100))
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None


def test_disk_cache_skips_oversized_and_disabled(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "a", 10)
    cache.put(cache_key("big"), bytes(11))
    assert cache.get(cache_key("big")) is None
    disabled = DiskCache(tmp_path / "b", 0)
    disabled.put(cache_key("x"), b"1")
    assert disabled.get(cache_key("x")) is None and not (tmp_path / "b").exists()


def test_unwritable_disk_cache_is_a_miss_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    cache = DiskCache(blocker / "cache", 1000)  # a directory under a regular file cannot exist
    cache.put(cache_key("k"), b"data")
    assert cache.get(cache_key("k")) is None


def test_two_processes_share_a_directory(tmp_path: Path) -> None:
    # Another process fills the shared directory over the bound; this one's entry is evicted
    # there and is simply a miss here.
    mine = DiskCache(tmp_path, 300)
    mine.put(cache_key("mine"), bytes(100))
    old = time.time() - 3600
    os.utime(tmp_path / cache_key("mine")[:2] / cache_key("mine"), (old, old))
    script = (
        "import sys; from pathlib import Path;"
        "from xsam_backend.labelstudio.media_cache import DiskCache, cache_key;"
        "c = DiskCache(Path(sys.argv[1]), 300);"
        "[c.put(cache_key(str(i)), bytes(100)) for i in range(3)]"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    assert mine.get(cache_key("mine")) is None
    assert all(mine.get(cache_key(str(i))) == bytes(100) for i in range(3))


def test_array_cache_is_bounded_by_bytes_lru() -> None:
    cache = ArrayCache(max_bytes=300)
    arrays = {name: np.zeros(100, np.uint8) for name in "abcd"}
    for name in "abc":
        cache.put(name, arrays[name])
    assert cache.nbytes == 300 and len(cache) == 3
    assert cache.get("a") is arrays["a"]  # a becomes most recent
    cache.put("d", arrays["d"])
    assert cache.get("b") is None
    assert {k for k in "acd" if cache.get(k) is not None} == set("acd")
    cache.put("huge", np.zeros(301, np.uint8))
    assert cache.get("huge") is None and cache.nbytes == 300
    cache.put("a", np.zeros(50, np.uint8))  # replacing an entry updates the byte count
    assert cache.nbytes == 250


def test_media_modules_import_without_torch() -> None:
    # torch set to None in sys.modules makes any ``import torch`` raise ImportError.
    script = (
        "import sys; sys.modules['torch'] = None;"
        "import xsam_backend.labelstudio.media, xsam_backend.labelstudio.auth, xsam_backend.labelstudio.media_cache"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
