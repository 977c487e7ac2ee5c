"""A task's predictions from Label Studio, for the agreement filter (``GET /api/predictions/?task=ID``).

Only read when the filter is on: one request per task that already has an accepted annotation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from xsam_backend.errors import BackendError, LabelStudioApiError
from xsam_backend.labelstudio.auth import LabelStudioAuth
from xsam_backend.settings import Settings


class PredictionReader:
    """Lists a task's predictions (dicts with ``result``, ``model_version``, ``created_at``, ``id``)."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float = 60.0, session: requests.Session | None = None
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._session = session if session is not None else requests.Session()
        self._timeout_s = timeout_s
        self._auth = LabelStudioAuth(self._base_url, api_key, session=self._session, timeout_s=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> PredictionReader:
        """A reader for ``LABEL_STUDIO_URL`` with ``LABEL_STUDIO_API_KEY``; both must be set."""
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise LabelStudioApiError(
                "the agreement filter reads predictions: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
        return cls(
            settings.label_studio_url, settings.label_studio_api_key, timeout_s=settings.media_timeout_s
        )

    def __call__(self, task_id: int) -> list[Mapping[str, Any]]:
        """The predictions of task ``task_id``. Raises :class:`LabelStudioApiError` on failure."""
        url = f"{self._base_url}/api/predictions/"
        for attempt in range(2):
            try:
                headers = self._auth.headers_for(url)
                response = self._session.get(
                    url, params={"task": task_id}, headers=headers, timeout=self._timeout_s
                )
            except requests.RequestException as exc:
                raise LabelStudioApiError(
                    f"cannot reach Label Studio at {url}: {type(exc).__name__}"
                ) from exc
            except BackendError as exc:  # the token exchange failed
                raise LabelStudioApiError(f"{url}: {exc.message}") from exc
            # An access token may expire between the exchange and the request: exchange once more.
            if response.status_code == 401 and attempt == 0 and self._auth.invalidate():
                continue
            break
        if response.status_code != 200:
            raise LabelStudioApiError(
                f"{url}?task={task_id} answered HTTP {response.status_code}; check LABEL_STUDIO_API_KEY"
            )
        body = response.json()
        items = body.get("results", []) if isinstance(body, Mapping) else body
        if not isinstance(items, list):
            raise LabelStudioApiError(f"{url}?task={task_id} returned {type(body).__name__}, not a list")
        return [p for p in items if isinstance(p, Mapping)]
