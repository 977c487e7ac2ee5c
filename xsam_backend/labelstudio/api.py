"""A small Label Studio REST client for training and export, on label-studio-sdk 2.1.2.

Only what training and export need: a project's label config, and its tasks with their
annotations, streamed page by page (one page of ``page_size`` tasks in memory at a time)::

    api = LabelStudioApi.from_settings(settings)
    config = api.label_config(project_id)
    for task in api.iter_tasks(project_id):
        ...  # task.id, task.data["image"], task.annotations

The SDK authenticates (``Token <legacy key>``, or a personal access token exchanged for access
tokens as they expire) and pages through ``GET /api/tasks/?project=<id>&fields=all``; Label
Studio answers 404 past the last page, which ends the iteration. Page-number pagination can
skip or repeat a task when tasks are added or deleted while iterating. Errors become
:class:`LabelStudioApiError` with the endpoint, the status and what to check, never the token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from xsam_backend.errors import LabelStudioApiError
from xsam_backend.settings import Settings


@dataclass(frozen=True)
class LabelledTask:
    """One task as the API returns it: ``data`` (e.g. ``{"image": "/data/upload/1/x.jpg"}``), its
    annotations, each a dict with ``id``, ``result`` (the regions, Label Studio JSON) and
    ``was_cancelled``, ``ground_truth``, ``completed_by``, ``created_at``, ``updated_at``, and its
    predictions, each with ``id``, ``result``, ``model_version``, ``score``, ``created_at``."""

    id: int
    data: Mapping[str, Any]
    annotations: tuple[Mapping[str, Any], ...]
    predictions: tuple[Mapping[str, Any], ...] = ()


class LabelStudioApi:
    """Reads projects and tasks from Label Studio at ``base_url`` with ``api_key``.

    ``httpx_client`` replaces the SDK's own HTTP client (connection settings, tests);
    ``max_retries`` is the SDK's retry count for failed requests.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        httpx_client: httpx.Client | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        try:
            self._client = LabelStudio(
                base_url=self._base_url,
                api_key=api_key,
                timeout=timeout_s,
                max_retries=max_retries,
                httpx_client=httpx_client,
            )
        except ApiError as exc:
            # The SDK checks a personal access token's expiry up front.
            raise LabelStudioApiError(f"LABEL_STUDIO_API_KEY cannot be used: {_detail(exc)}") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioApi:
        """A client for ``LABEL_STUDIO_URL`` with ``LABEL_STUDIO_API_KEY``; both must be set."""
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise LabelStudioApiError(
                "training and export read annotations from Label Studio: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY (a personal access token, or a legacy token)"
            )
        return cls(
            settings.label_studio_url, settings.label_studio_api_key, timeout_s=settings.media_timeout_s
        )

    def label_config(self, project_id: int) -> str:
        """The project's label config XML."""
        try:
            project = self._client.projects.get(id=project_id)
        except (ApiError, httpx.HTTPError) as exc:
            raise self._error(f"/api/projects/{project_id}/", exc) from exc
        config = getattr(project, "label_config", None)
        if not isinstance(config, str):
            raise LabelStudioApiError(f"{self._base_url}/api/projects/{project_id}/ returned no label_config")
        return config

    def iter_tasks(
        self,
        project_id: int,
        *,
        only_annotated: bool = True,
        include_cancelled: bool = False,
        page_size: int = 100,
    ) -> Iterator[LabelledTask]:
        """The project's tasks with their annotations, fetched ``page_size`` at a time.

        With ``only_annotated`` tasks without a (kept) annotation are skipped; skipped annotations
        (``was_cancelled``) are dropped unless ``include_cancelled``. Raises
        :class:`LabelStudioApiError` for a missing project, a refused key or an unreachable server.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1; got {page_size}")
        # A missing project would otherwise look like an empty one: the pager treats 404 as the end.
        self.label_config(project_id)
        endpoint = f"/api/tasks/?project={project_id}"
        try:
            pager: Iterable[Any] = self._client.tasks.list(
                project=project_id, fields="all", only_annotated=only_annotated or None, page_size=page_size
            )
            for item in pager:
                task = _labelled_task(item, include_cancelled)
                if task is not None and (task.annotations or not only_annotated):
                    yield task
        except (ApiError, httpx.HTTPError) as exc:
            raise self._error(endpoint, exc) from exc

    def _error(self, endpoint: str, exc: Exception) -> LabelStudioApiError:
        where = f"{self._base_url}{endpoint}"
        if isinstance(exc, ApiError):
            status = exc.status_code
            if status in (401, 403):
                return LabelStudioApiError(
                    f"Label Studio refused {where} (HTTP {status}): check LABEL_STUDIO_API_KEY (legacy tokens "
                    "are off by default since Label Studio 1.23: use a personal access token)"
                )
            if status == 404:
                return LabelStudioApiError(f"{where}: not found (HTTP 404); check the project id")
            return LabelStudioApiError(f"{where} answered HTTP {status}: {_detail(exc)}")
        return LabelStudioApiError(f"cannot reach Label Studio at {where}: {type(exc).__name__}")


def _detail(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:200]


def _labelled_task(item: Any, include_cancelled: bool) -> LabelledTask | None:
    raw = item.dict() if hasattr(item, "dict") else dict(item)
    task_id = raw.get("id")
    if not isinstance(task_id, int):
        return None
    annotations = tuple(
        annotation
        for annotation in raw.get("annotations") or ()
        if isinstance(annotation, Mapping) and (include_cancelled or not annotation.get("was_cancelled"))
    )
    predictions = tuple(p for p in raw.get("predictions") or () if isinstance(p, Mapping))
    return LabelledTask(id=task_id, data=raw.get("data") or {}, annotations=annotations, predictions=predictions)
