"""Which trained version serves a project, as a worker sees it: cheap to ask on every prediction.

``serving.json`` is the only shared state: a training job or ``python -m xsam_backend rollback``
replaces it atomically, and every worker (on any machine sharing ``MODEL_WEIGHTS_ROOT``) notices
on its next prediction for that project, because :class:`ServingVersions` re-reads a project's
pointer when the file's modification time or size changes (one ``stat`` per prediction).

A version trained on another base model than the one loaded is never served (its parameters
belong to other weights); the base model answers and a warning is logged once.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from xsam_backend.errors import BadRequest
from xsam_backend.training.scores import ScoreCalibration
from xsam_backend.training.versions import SERVING_FILE, ProjectVersions, VersionInfo, check_project

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingChoice:
    """The version a project is served with (``None``: the base model), its model version string
    and its score calibration."""

    version: VersionInfo | None
    model_version: str
    calibration: ScoreCalibration


class ServingVersions:
    """Resolves a project's serving version under ``projects_dir`` for ``base_model_version``."""

    def __init__(self, projects_dir: Path, base_model_version: str) -> None:
        self.projects_dir = Path(projects_dir)
        self.base_model_version = base_model_version
        self._base = ServingChoice(None, base_model_version, ScoreCalibration())
        self._cache: dict[str, tuple[tuple[int, int] | None, ServingChoice]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def choice(self, project: object | None) -> ServingChoice:
        """The serving choice of ``project`` (the base model for ``None`` or an unusable id)."""
        if project is None:
            return self._base
        try:
            key = check_project(project)
        except BadRequest:
            return self._base
        pointer = self.projects_dir / key / SERVING_FILE
        try:
            stat = os.stat(pointer)
            signature: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            signature = None
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] == signature:
                return cached[1]
            choice = self._resolve(key) if signature is not None else self._base
            self._cache[key] = (signature, choice)
            return choice

    def _resolve(self, project: str) -> ServingChoice:
        try:
            version = ProjectVersions(self.projects_dir, project).serving()
        except (OSError, ValueError) as exc:
            log.warning(
                "project %s: cannot read its serving version (%s); the base model answers", project, exc
            )
            return self._base
        if version is None:
            return self._base
        if version.base_model_version != self.base_model_version:
            if (project, version.name) not in self._warned:
                self._warned.add((project, version.name))
                log.warning(
                    "project %s: %s was trained on %s but %s is loaded; the base model answers",
                    project,
                    version.name,
                    version.base_model_version,
                    self.base_model_version,
                )
            return self._base
        calibration = ScoreCalibration.from_json(version.meta.get("score_calibration"))
        log.info("project %s: serving %s (%s)", project, version.name, version.model_version)
        return ServingChoice(version, version.model_version, calibration)
