"""What every dataset writer receives: one image entry and its instances at a time."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from xsam_backend.export.curation import Split
from xsam_backend.export.regions import Instance

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ImageEntry:
    """One exported image.

    ``stem``: the file name without extension, unique in the export (``<task id>_<source
    name>``); ``file_name``: the image's file name in the dataset (``<stem>.png`` when images are
    copied, else ``<stem><source extension>``); ``width``, ``height``: pixels after EXIF
    orientation, the frame of the instances; ``source``: the task's image URL.
    """

    task_id: int
    split: Split
    stem: str
    file_name: str
    width: int
    height: int
    source: str


class DatasetWriter(Protocol):
    """A format's writer: ``add`` is called once per image, then ``close`` once."""

    def add(self, image: ImageEntry, instances: Sequence[Instance]) -> None:
        """Write one image's instances (masks ``(H, W)`` bool in the image's pixel frame)."""
        ...

    def close(self) -> list[Path]:
        """Finish the dataset; return the files written besides per-image ones."""
        ...


def source_name(url: str) -> str:
    """The file name a task's image URL points at (``/data/local-files/?d=a/b.jpg`` → ``b.jpg``)."""
    parts = urlsplit(url)
    path = parts.path
    if "d" in (query := parse_qs(parts.query)):
        path = query["d"][0]
    return PurePosixPath(unquote(path)).name


def image_stem(task_id: int, url: str) -> str:
    """``<task id>_<source name without extension>``, restricted to ``[A-Za-z0-9._-]``."""
    name = PurePosixPath(source_name(url)).stem
    safe = _UNSAFE.sub("_", name).strip("._")[:80]
    return f"{task_id}_{safe}" if safe else str(task_id)


def source_extension(url: str) -> str:
    """The lower-cased extension of the image URL's file name (``".jpg"``), ``""`` when none."""
    suffix = PurePosixPath(source_name(url)).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""
