"""Security through the HTTP app end to end: SSRF, path traversal, basic auth, limits, secrets in logs.

``tests/labelstudio/test_media.py`` checks the media guard function by function; here the same
attacks arrive as Label Studio tasks at ``/predict`` and must come back as a clear 403 (or a 413),
with no request reaching the target. Loopback servers stand in for internal services.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from reliability_support import (
    CanaryServer,
    assert_clear_error,
    closed_port,
    hostile_images,
    keypoint,
    make_app,
    predict_body,
)
from repo_paths import label_config

BRUSH = label_config("interactive_brush")
CLICK = {"result": [keypoint(25, 20)]}
TOKEN = "0123456789abcdef0123456789abcdef01234567"
PASSWORD = "s3cret-pass-ZQ9"


def _predict_one(app: Flask, image_url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    body = {
        "tasks": [{"id": 1, "data": {"image": image_url}}],
        "label_config": BRUSH,
        "params": {"context": CLICK},
    }
    response = app.test_client().post("/predict", json=body, headers=headers or {})
    return response.status_code, response.get_json()


@pytest.fixture
def canary() -> Iterator[CanaryServer]:
    with CanaryServer() as server:
        yield server


# -- SSRF --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # cloud metadata (link-local)
        "http://[fd00::1]/x.png",  # unique local IPv6
        "http://10.0.0.7/x.png",  # private
        "http://[::ffff:127.0.0.1]/x.png",  # IPv4-mapped loopback
        "http://0.0.0.0/x.png",
    ],
)
def test_ssrf_to_internal_addresses_is_refused(fuzz_root: Path, url: str) -> None:
    # Even allow-listing every host does not open internal addresses.
    app = make_app(fuzz_root, media_allowed_hosts=("*",))
    status, body = _predict_one(app, url)
    assert status == 403, body
    assert_clear_error(status, json.dumps(body).encode())
    assert "non-public address" in body["message"]


def test_ssrf_to_a_loopback_service_never_connects(fuzz_root: Path, canary: CanaryServer) -> None:
    canary.files["/x.png"] = hostile_images()["disk.png"]
    not_listed = make_app(fuzz_root)
    status, body = _predict_one(not_listed, f"{canary.url}/x.png")
    assert status == 403 and "MEDIA_ALLOWED_HOSTS" in body["message"]
    # A DNS name that resolves to loopback, even when allow-listed by name.
    listed = make_app(fuzz_root, media_allowed_hosts=("localhost",))
    status, body = _predict_one(listed, f"{canary.url.replace('127.0.0.1', 'localhost')}/x.png")
    assert status == 403 and "non-public address 127.0.0.1" in body["message"], body
    assert canary.hits == []


def test_redirects_from_label_studio_into_internal_addresses_are_refused(
    fuzz_root: Path, canary: CanaryServer
) -> None:
    with CanaryServer() as label_studio:
        label_studio.redirects["/data/upload/1/meta.png"] = "http://169.254.169.254/latest/meta-data/"
        label_studio.redirects["/data/upload/1/loop.png"] = f"{canary.url}/secret"
        label_studio.redirects["/data/upload/1/ftp.png"] = "file:///etc/passwd"
        app = make_app(
            fuzz_root, label_studio_url=label_studio.url, label_studio_api_key=TOKEN, media_timeout_s=3.0
        )
        for name in ("meta", "loop", "ftp"):
            status, body = _predict_one(app, f"/data/upload/1/{name}.png")
            assert status == 403, (name, body)
            assert_clear_error(status, json.dumps(body).encode(), name)
        assert len(label_studio.hits) == 3
        assert all(auth == f"Token {TOKEN}" for auth in label_studio.authorization)
    assert canary.hits == []  # the redirect target on loopback was never contacted


def test_task_urls_cannot_reach_other_label_studio_endpoints(fuzz_root: Path) -> None:
    with CanaryServer() as label_studio:
        app = make_app(fuzz_root, label_studio_url=label_studio.url, label_studio_api_key=TOKEN)
        for url in (
            "/api/projects/",
            f"{label_studio.url}/api/current-user/whoami",
            "/data/upload/../../api/users",
        ):
            status, body = _predict_one(app, url)
            assert status == 403, (url, body)
        assert label_studio.hits == []  # the token never went to a non-media route


# -- path traversal ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "images/../../../etc/passwd",
        "images/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "images/escape.png",  # a symlink inside the root pointing outside it
    ],
)
def test_path_traversal_through_local_files_is_refused(fuzz_root: Path, tmp_path: Path, path: str) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(hostile_images()["disk.png"])
    link = fuzz_root / "images" / "escape.png"
    if not link.is_symlink():
        os.symlink(outside, link)
    status, body = _predict_one(make_app(fuzz_root), f"/data/local-files/?d={path}")
    assert status == 403, body
    assert "leaves the directory configured by LOCAL_FILES_DOCUMENT_ROOT" in body["message"]
    assert str(fuzz_root) not in body["message"]  # server paths are not disclosed


def test_upload_traversal_through_the_media_dir_is_refused(fuzz_root: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "upload" / "1").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(hostile_images()["disk.png"])
    app = make_app(fuzz_root, label_studio_media_dir=media)
    status, body = _predict_one(app, "/data/upload/1/../../../secret.png")
    assert status == 403, body


# -- basic auth --------------------------------------------------------------------------------------


def test_basic_auth_guards_every_route_but_health(fuzz_root: Path) -> None:
    app = make_app(fuzz_root, basic_auth_user="ann", basic_auth_pass=PASSWORD)
    client = app.test_client()
    good = {"Authorization": "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode()}
    attempts = [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"ann:wrong").decode()},
        {"Authorization": "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": f"Bearer {PASSWORD}"},
        {"Authorization": "Basic " + base64.b64encode(f"ann:{PASSWORD}x".encode()).decode()},
    ]
    routes = [
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in sorted(rule.methods or ())
        if method not in ("HEAD", "OPTIONS")
    ]
    assert len(routes) >= 8
    for path, method in routes:
        for headers in attempts:
            response = client.open(path, method=method, json={}, headers=headers)
            if path == "/health":
                assert response.status_code == 200
                continue
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Basic")
            assert_clear_error(401, response.get_data(), path)
        assert client.open(path, method=method, json={}, headers=good).status_code != 401, path
    # Unknown routes are behind auth too: their existence is not disclosed to strangers.
    assert client.get("/admin").status_code == 401


# -- size and count limits ---------------------------------------------------------------------------


def test_request_body_over_the_limit_is_refused_before_parsing(fuzz_root: Path) -> None:
    app = make_app(fuzz_root, max_request_bytes=10_000)
    client = app.test_client()
    big = b'{"tasks": [' + b"1," * 20_000 + b"1]}"
    for path in ("/predict", "/setup", "/webhook"):
        response = client.post(path, data=big, content_type="application/json")
        payload = assert_clear_error(response.status_code, response.get_data(), path)
        assert response.status_code == 413 and "MAX_REQUEST_BYTES" in payload["message"]


def test_prompt_region_and_task_limits(fuzz_root: Path) -> None:
    app = make_app(fuzz_root, max_prompt_regions=4, max_tasks_per_request=3)
    client = app.test_client()
    clicks = {"result": [keypoint(20 + i, 20) for i in range(5)]}
    response = client.post("/predict", json=predict_body(BRUSH, ["images/disk.png"], clicks))
    payload = assert_clear_error(response.status_code, response.get_data())
    assert response.status_code == 413 and "5 regions; at most 4" in payload["message"]
    response = client.post("/predict", json=predict_body(BRUSH, ["images/disk.png"] * 4, CLICK))
    payload = assert_clear_error(response.status_code, response.get_data())
    assert response.status_code == 413 and "4 tasks in one request; at most 3" in payload["message"]
    ok = client.post(
        "/predict", json=predict_body(BRUSH, ["images/disk.png"] * 3, {"result": clicks["result"][:4]})
    )
    assert ok.status_code == 200 and len(ok.get_json()["results"]) == 3


def test_decompression_bomb_through_the_server_is_refused(fuzz_root: Path) -> None:
    status, body = _predict_one(make_app(fuzz_root), "/data/local-files/?d=images/bomb.png")
    assert status == 413 and "pixels" in body["message"], body


# -- secrets stay out of logs ------------------------------------------------------------------------


def test_no_secret_reaches_the_logs(fuzz_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    redis_password = "redis-pw-77x"
    with CanaryServer() as label_studio:
        label_studio.files["/data/upload/1/disk.png"] = hostile_images()["disk.png"]
        label_studio.redirects["/data/upload/1/away.png"] = "http://169.254.169.254/x"
        app = make_app(
            fuzz_root,
            label_studio_url=label_studio.url,
            label_studio_api_key=TOKEN,
            basic_auth_user="ann",
            basic_auth_pass=PASSWORD,
            media_timeout_s=3.0,
        )
        good = {"Authorization": "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode()}
        wrong = {"Authorization": "Basic " + base64.b64encode(f"ann:{PASSWORD}-typo".encode()).decode()}
        with caplog.at_level(logging.DEBUG):
            client = app.test_client()
            for url in ("/data/upload/1/disk.png", "/data/upload/1/away.png", "/data/upload/1/missing.png"):
                _predict_one(app, url, good)
            _predict_one(app, "/data/upload/1/disk.png", wrong)
            client.post("/setup", json={"schema": BRUSH, "access_token": TOKEN}, headers=good)
            client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}, headers=good)
            client.get("/versions", headers=wrong)
            client.get("/health")
        assert any(auth == f"Token {TOKEN}" for auth in label_studio.authorization)  # the token was used
        # A broker URL with a password: the web process names the broker in /health and logs.
        from xsam_backend.dispatch import CeleryDispatcher
        from xsam_backend.settings import Settings

        with caplog.at_level(logging.DEBUG):
            broker = f"redis://:{redis_password}@127.0.0.1:{closed_port()}/0"
            dispatcher = CeleryDispatcher(Settings(redis_url=broker, broker_check_timeout_s=0.5))
            celery_app = make_app(fuzz_root, dispatcher=dispatcher, redis_url=broker)
            health = celery_app.test_client().get("/health").get_data(as_text=True)
            status, body = _predict_one(celery_app, "/data/local-files/?d=images/disk.png")
            dispatcher.close()
    assert status == 503
    text = caplog.text + health + str(body)
    assert len(caplog.records) > 10
    encoded = base64.b64encode(f"ann:{PASSWORD}".encode()).decode()
    for secret in (TOKEN, PASSWORD, encoded, redis_password):
        assert secret not in text, secret
