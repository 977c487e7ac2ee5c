"""Per-project model versions on disk, written atomically; which one serves; rollback.

Layout under ``Settings.projects_dir`` (``<MODEL_WEIGHTS_ROOT>/projects``)::

    <project>/
        v0001/                 one trained version (immutable once renamed into place)
            delta.safetensors  the trained parameters only (release key names, fp32)
            meta.json          base model version and checksum, annotation ids, metrics, time, ...
        v0002/
        serving.json           {"version": "v0002"} or {"version": null} (the base model)
        .tmp-v0003-<hex>/      a version being written; never read, removed by the next job

A version is written into a temporary directory and renamed into place, so a process killed
mid-write leaves no partial version; ``serving.json`` is replaced with ``os.replace``. The model
version string Label Studio stores with each prediction is
``<base model version>+p<project>.<version>`` (e.g. ``xsam-xsam-tiny-1a2b3c4d+p4.v0002``).

Torch-free at import (the web process reads versions for ``/setup`` and ``/versions``); writing
and reading the tensors imports ``safetensors.torch`` lazily.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xsam_backend.errors import BadRequest

if TYPE_CHECKING:
    import torch

DELTA_FILE = "delta.safetensors"
META_FILE = "meta.json"
SERVING_FILE = "serving.json"
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class VersionError(BadRequest):
    """A version name or project id that does not exist or cannot be used."""

    status = 404
    code = "unknown_version"


def check_project(project: object) -> str:
    """``project`` as a path-safe string (Label Studio ids are integers); raises :class:`BadRequest`."""
    text = str(project).split(".", 1)[0] if project is not None else ""
    if not _PROJECT_RE.match(text):
        raise BadRequest(f"expected a project id (digits, letters, '-' or '_'); got {project!r:.80}")
    return text


def project_model_version(base_model_version: str, project: str, version: str | None) -> str:
    """The model version string of ``version`` of ``project`` (the base's own for ``None``)."""
    if version is None:
        return base_model_version
    return f"{base_model_version}+p{project}.{version}"


@dataclass(frozen=True)
class VersionInfo:
    """One stored version: its name (``v0003``), folder and ``meta.json`` contents."""

    project: str
    name: str
    path: Path
    meta: Mapping[str, Any]

    @property
    def model_version(self) -> str:
        return str(self.meta.get("model_version", self.name))

    @property
    def base_model_version(self) -> str:
        return str(self.meta.get("base_model_version", ""))

    @property
    def delta_path(self) -> Path:
        return self.path / DELTA_FILE

    def summary(self) -> dict[str, Any]:
        """A short JSON view for ``/versions`` and the CLI."""
        keys = ("model_version", "created_at", "promoted", "gate", "metrics", "num_annotations", "lora")
        return {"version": self.name, **{k: self.meta.get(k) for k in keys if k in self.meta}}


class ProjectVersions:
    """The versions of one project under ``projects_dir/<project>``."""

    def __init__(self, projects_dir: Path, project: object) -> None:
        self.project = check_project(project)
        self.dir = Path(projects_dir) / self.project

    # ---- reading -----------------------------------------------------------------------------

    def list(self) -> list[VersionInfo]:
        """Every complete version, oldest first (temporary directories are never listed)."""
        if not self.dir.is_dir():
            return []
        found = []
        for child in self.dir.iterdir():
            if _VERSION_RE.match(child.name) and (child / META_FILE).is_file():
                found.append(self._info(child))
        return sorted(found, key=lambda v: int(v.name[1:]))

    def get(self, name: str) -> VersionInfo:
        """The version called ``name``; raises :class:`VersionError` naming the ones that exist."""
        path = self.dir / name
        if not _VERSION_RE.match(name) or not (path / META_FILE).is_file():
            known = [v.name for v in self.list()]
            raise VersionError(f"project {self.project} has no version {name!r}; it has {known or 'none'}")
        return self._info(path)

    def serving_name(self) -> str | None:
        """The serving version's name, or ``None`` when the base model serves."""
        path = self.dir / SERVING_FILE
        if not path.is_file():
            return None
        name = json.loads(path.read_text()).get("version")
        return str(name) if name else None

    def serving(self) -> VersionInfo | None:
        """The serving version, or ``None`` for the base model (also when the pointer is stale)."""
        name = self.serving_name()
        if name is None or not (self.dir / name / META_FILE).is_file():
            return None
        return self._info(self.dir / name)

    def next_name(self) -> str:
        """The name the next version gets: one past the highest number used, partial ones included."""
        numbers = [0]
        if self.dir.is_dir():
            for child in self.dir.iterdir():
                match = _VERSION_RE.match(child.name.removeprefix(".tmp-").split("-", 1)[0])
                if match:
                    numbers.append(int(match.group(1)))
        return f"v{max(numbers) + 1:04d}"

    @staticmethod
    def _info(path: Path) -> VersionInfo:
        meta = json.loads((path / META_FILE).read_text())
        return VersionInfo(project=path.parent.name, name=path.name, path=path, meta=meta)

    # ---- writing -----------------------------------------------------------------------------

    def write(self, name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> VersionInfo:
        """Write version ``name`` atomically: a temporary directory, fsync, then one rename.

        ``tensors``: the trained parameters (release key names), stored as given. ``meta`` is
        written as ``meta.json``. Raises ``FileExistsError`` if ``name`` exists already.
        """
        from safetensors.torch import save_file

        if not _VERSION_RE.match(name):
            raise ValueError(f"version names look like v0001; got {name!r}")
        final = self.dir / name
        if final.exists():
            raise FileExistsError(f"version {final} exists already")
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / DELTA_FILE))
            (tmp / META_FILE).write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")
            for file in (tmp / DELTA_FILE, tmp / META_FILE):
                _fsync(file)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync(self.dir)
        return self._info(final)

    def set_serving(self, name: str | None) -> None:
        """Serve version ``name`` (``None``: the base model); atomic replace of ``serving.json``."""
        if name is not None:
            self.get(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{SERVING_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"version": name}) + "\n")
        _fsync(tmp)
        os.replace(tmp, self.dir / SERVING_FILE)
        _fsync(self.dir)

    def remove_partial(self) -> int:
        """Delete temporary directories left by killed writers; returns how many. Call it only
        under the project's training lock (another job might be writing)."""
        if not self.dir.is_dir():
            return 0
        partial = [p for p in self.dir.iterdir() if p.name.startswith(".tmp-") and p.is_dir()]
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        return len(partial)


def load_delta(version: VersionInfo) -> dict[str, torch.Tensor]:
    """The trained parameters of ``version`` on CPU (release key names)."""
    from safetensors.torch import load_file

    return load_file(str(version.delta_path), device="cpu")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
