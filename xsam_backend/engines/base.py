"""The Engine protocol every model plugs into.

An engine owns a model (or none) and its caches. It is built once per worker process, lazily, and
called from one thread at a time per instance unless it documents otherwise.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from xsam_backend.prompt import Prompt, Task
from xsam_backend.segment import EngineResult


@runtime_checkable
class Engine(Protocol):
    """Segments an image for a prompt."""

    @property
    def name(self) -> str:
        """Short engine name shown in ``/health`` and the logs (``"xsam"``, ``"fallback"``)."""
        ...

    @property
    def model_version(self) -> str:
        """Version string stored with every prediction (changes when the weights change)."""
        ...

    def supports(self, task: Task) -> bool:
        """Whether :meth:`predict` can answer this task (others raise ``NeedsWeights``)."""
        ...

    def predict(self, image: np.ndarray, prompt: Prompt, project: str | None = None) -> EngineResult:
        """Segment ``image`` for ``prompt``, on behalf of Label Studio project ``project``.

        ``image``: ``(H, W, 3)`` ``uint8`` RGB, the original image after EXIF orientation; the
        prompt's pixel coordinates refer to it. Returns segments whose masks are ``(H, W)`` bool.
        Raises ``NeedsWeights`` for tasks the engine cannot do, ``PromptError`` for prompts that
        do not fit the image. An engine with per-project trained versions answers with the
        project's serving version (the result names it); others ignore ``project``.
        """
        ...
