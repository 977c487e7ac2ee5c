"""A small Label Studio REST client for the end-to-end tests (Label Studio 1.23.2 API).

It makes the same calls the Label Studio front end makes (project creation, import, local-files
storage, ML backend connection, "Retrieve predictions", smart-tool interactive annotation) and
fails loudly, with the response body, on any unexpected status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

JSON = dict[str, Any]


class LabelStudioError(RuntimeError):
    """Label Studio answered with an unexpected status; the message holds the method, path and body."""


class LabelStudioClient:
    """REST calls against one Label Studio, authenticated with a legacy token or an access token.

    ``authorization`` is the whole header value: ``"Token <legacy token>"`` or
    ``"Bearer <access token>"`` (a personal access token must first be exchanged with
    :meth:`refresh_access_token`).
    """

    def __init__(self, url: str, authorization: str, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = authorization

    @classmethod
    def with_legacy_token(cls, url: str, token: str) -> LabelStudioClient:
        return cls(url, f"Token {token}")

    def close(self) -> None:
        self.session.close()

    # -- transport -------------------------------------------------------------------------------

    def request(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        """Send ``method path`` and return the decoded JSON body (``None`` for an empty body)."""
        kwargs.setdefault("timeout", self.timeout_s)
        response = self.session.request(method, f"{self.url}{path}", **kwargs)
        if response.status_code not in expect:
            raise LabelStudioError(
                f"{method} {path} answered {response.status_code} (expected {expect}): {response.text[:2000]}"
            )
        if not response.content:
            return None
        return response.json()

    # -- users and tokens ------------------------------------------------------------------------

    def whoami(self) -> JSON:
        result: JSON = self.request("GET", "/api/current-user/whoami")
        return result

    def create_personal_access_token(self) -> str:
        """A new personal access token (a JWT refresh token) for the authenticated user."""
        result: JSON = self.request("POST", "/api/token/")
        token = result.get("token")
        if not isinstance(token, str) or not token:
            raise LabelStudioError(f"POST /api/token/ returned no token: {result}")
        return token

    def refresh_access_token(self, personal_access_token: str) -> str:
        """Exchange a personal access token for a short-lived access token (Bearer)."""
        response = requests.post(
            f"{self.url}/api/token/refresh/", json={"refresh": personal_access_token}, timeout=self.timeout_s
        )
        if response.status_code != 200:
            raise LabelStudioError(
                f"POST /api/token/refresh/ answered {response.status_code}: {response.text[:500]}"
            )
        access = response.json().get("access")
        if not isinstance(access, str):
            raise LabelStudioError(
                f"POST /api/token/refresh/ returned no access token: {response.text[:500]}"
            )
        return access

    # -- projects, tasks, import -----------------------------------------------------------------

    def create_project(self, title: str, label_config: str) -> int:
        result: JSON = self.request(
            "POST", "/api/projects", json={"title": title, "label_config": label_config}
        )
        return int(result["id"])

    def import_file(self, project_id: int, path: Path) -> list[int]:
        """Upload one file (multipart, as the "Import" dialog does); return the created task ids."""
        with path.open("rb") as handle:
            result: JSON = self.request(
                "POST",
                f"/api/projects/{project_id}/import",
                params={"return_task_ids": "true"},
                files={"file": (path.name, handle)},
            )
        if result.get("task_count") != 1:
            raise LabelStudioError(
                f"importing {path.name} created {result.get('task_count')} tasks: {result}"
            )
        task_ids = result.get("task_ids")
        if isinstance(task_ids, list) and task_ids:
            return [int(task_id) for task_id in task_ids]
        return []

    def add_local_files_storage(self, project_id: int, path: Path, regex_filter: str) -> int:
        """Connect a local-files source storage (``path`` must lie under the document root)."""
        result: JSON = self.request(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": project_id,
                "title": f"local {path.name}",
                "path": str(path),
                "regex_filter": regex_filter,
                "use_blob_urls": True,
            },
        )
        return int(result["id"])

    def sync_local_files_storage(self, storage_id: int) -> JSON:
        result: JSON = self.request("POST", f"/api/storages/localfiles/{storage_id}/sync")
        return result

    def list_tasks(self, project_id: int) -> list[JSON]:
        result = self.request("GET", "/api/tasks", params={"project": project_id, "page_size": 1000})
        tasks = result["tasks"] if isinstance(result, dict) else result
        return list(tasks)

    def get_task(self, task_id: int) -> JSON:
        """The task as the labelling view opens it (this triggers an automatic prediction)."""
        result: JSON = self.request("GET", f"/api/tasks/{task_id}")
        return result

    def list_predictions(self, task_id: int) -> list[JSON]:
        result = self.request("GET", "/api/predictions", params={"task": task_id})
        return list(result)

    # -- ML backend ------------------------------------------------------------------------------

    def connect_ml_backend(self, project_id: int, url: str, title: str, is_interactive: bool = True) -> JSON:
        """Add an ML backend to the project; Label Studio calls its /health and /setup first."""
        result: JSON = self.request(
            "POST",
            "/api/ml",
            json={"url": url, "project": project_id, "title": title, "is_interactive": is_interactive},
        )
        return result

    def get_ml_backend(self, ml_backend_id: int) -> JSON:
        result: JSON = self.request("GET", f"/api/ml/{ml_backend_id}")
        return result

    def retrieve_predictions(self, project_id: int) -> JSON:
        """The data manager's "Retrieve predictions" action on every task of the project."""
        result: JSON = self.request(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        return result

    def interactive_annotating(self, ml_backend_id: int, task_id: int, context: JSON) -> JSON:
        """What the front end sends when a smart tool is used; returns ``{"data": ...}`` or ``{"errors": ...}``."""
        result: JSON = self.request(
            "POST",
            f"/api/ml/{ml_backend_id}/interactive-annotating",
            json={"task": task_id, "context": context},
        )
        return result
