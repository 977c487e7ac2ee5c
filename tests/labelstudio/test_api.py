"""LabelStudioApi (label-studio-sdk) against a real HTTP server on 127.0.0.1 with paginated tasks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ls_http_server import LEGACY_TOKEN, LabelStudioTestServer, make_jwt

from xsam_backend.export.curation import latest_prediction
from xsam_backend.labelstudio.api import LabelledTask, LabelStudioApi, LabelStudioApiError
from xsam_backend.settings import Settings

CONFIG = '<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image"/></View>'


def annotation(annotation_id: int, *, cancelled: bool = False) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "result": [{"from_name": "b", "to_name": "image", "type": "brushlabels", "value": {"rle": [1, 2]}}],
        "was_cancelled": cancelled,
        "ground_truth": False,
    }


@pytest.fixture
def server() -> Iterator[LabelStudioTestServer]:
    srv = LabelStudioTestServer()
    srv.api_projects[7] = {"id": 7, "title": "cells", "label_config": CONFIG}
    srv.api_tasks[7] = [
        {
            "id": i,
            "data": {"image": f"/data/upload/7/{i}.png"},
            "annotations": [annotation(100 + i)] if i % 3 else [annotation(100 + i, cancelled=True)],
            "predictions": [
                {
                    "id": 500 + i,
                    "result": [],
                    "model_version": "xsam-test",
                    "score": 0.5,
                    "created_at": "2026-11-01T10:00:00.123456Z",
                    "task": i,
                }
            ]
            if i == 1
            else [],
        }
        for i in range(1, 12)
    ]
    srv.start()
    yield srv
    srv.stop()


def test_label_config(server: LabelStudioTestServer) -> None:
    api = LabelStudioApi(server.base_url, LEGACY_TOKEN, max_retries=0)
    assert api.label_config(7) == CONFIG
    assert server.requests[-1].authorization == f"Token {LEGACY_TOKEN}"


def test_iter_tasks_streams_all_pages_and_drops_cancelled(server: LabelStudioTestServer) -> None:
    api = LabelStudioApi(server.base_url, LEGACY_TOKEN, max_retries=0)
    tasks = list(api.iter_tasks(7, page_size=4))
    # Tasks 3, 6 and 9 have only a skipped annotation.
    assert [t.id for t in tasks] == [1, 2, 4, 5, 7, 8, 10, 11]
    assert all(isinstance(t, LabelledTask) for t in tasks)
    assert tasks[0].data == {"image": "/data/upload/7/1.png"}
    assert [a["id"] for a in tasks[0].annotations] == [101]
    assert tasks[0].annotations[0]["result"][0]["value"] == {"rle": [1, 2]}
    # the predictions come with the task (the export's agreement filter needs no request per task)
    (prediction,) = tasks[0].predictions
    assert (prediction["id"], prediction["model_version"], prediction["result"]) == (501, "xsam-test", [])
    assert latest_prediction(tasks[0].predictions) is prediction and tasks[1].predictions == ()
    pages = [r.path for r in server.requests if r.path.startswith("/api/tasks/")]
    assert len(pages) == 4  # 3 pages of 4, then the 404 that ends paging
    assert all("page_size=4" in p and "fields=all" in p for p in pages)


def test_iter_tasks_streams_lazily(server: LabelStudioTestServer) -> None:
    api = LabelStudioApi(server.base_url, LEGACY_TOKEN, max_retries=0)
    first = next(iter(api.iter_tasks(7, page_size=2)))
    assert first.id == 1
    assert server.count("/api/tasks/") == 1


def test_iter_tasks_with_cancelled_and_unannotated(server: LabelStudioTestServer) -> None:
    server.api_tasks[7].append({"id": 50, "data": {"image": "x"}, "annotations": []})
    api = LabelStudioApi(server.base_url, LEGACY_TOKEN, max_retries=0)
    everything = list(api.iter_tasks(7, only_annotated=False, include_cancelled=True, page_size=5))
    assert [t.id for t in everything] == [*range(1, 12), 50]
    assert everything[2].annotations[0]["was_cancelled"] is True
    assert everything[-1].annotations == ()


def test_personal_access_token_is_exchanged(server: LabelStudioTestServer) -> None:
    api = LabelStudioApi(server.base_url, server.pat, max_retries=0)
    assert len(list(api.iter_tasks(7, page_size=100))) == 8
    assert server.refresh_calls == 1
    assert all(
        r.authorization and r.authorization.startswith("Bearer ")
        for r in server.requests
        if r.path.startswith("/api/p")
    )


def test_errors_name_the_endpoint_not_the_token(server: LabelStudioTestServer) -> None:
    wrong = "e" * 40
    with pytest.raises(LabelStudioApiError, match="HTTP 401.*LABEL_STUDIO_API_KEY") as info:
        LabelStudioApi(server.base_url, wrong, max_retries=0).label_config(7)
    assert wrong not in info.value.message
    api = LabelStudioApi(server.base_url, LEGACY_TOKEN, max_retries=0)
    with pytest.raises(LabelStudioApiError, match="project id"):
        list(api.iter_tasks(99))
    with pytest.raises(LabelStudioApiError, match="expired"):
        LabelStudioApi(server.base_url, make_jwt({"token_type": "refresh", "exp": 1}))


def test_unreachable_server(server: LabelStudioTestServer) -> None:
    base = server.base_url
    server.stop()
    with pytest.raises(LabelStudioApiError, match="cannot reach Label Studio"):
        LabelStudioApi(base, LEGACY_TOKEN, max_retries=0, timeout_s=2).label_config(7)
    server.start()


def test_from_settings_needs_url_and_key() -> None:
    with pytest.raises(LabelStudioApiError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        LabelStudioApi.from_settings(Settings(label_studio_url="http://127.0.0.1:1"))
    assert isinstance(
        LabelStudioApi.from_settings(
            Settings(label_studio_url="http://127.0.0.1:1", label_studio_api_key="k" * 40)
        ),
        LabelStudioApi,
    )
