"""Fixtures for the end-to-end tests: a real Label Studio, the backend (inline or Celery), a project.

Session scope: Label Studio 1.23.2 (installed into ``<repo>/.ls-venv`` on first use) with a fresh
data directory, and the sample images. Module scope, parametrised: the backend in one of two
deployments, each with its own Label Studio project:

* ``inline``: the web process runs the engine itself; Label Studio's legacy token; the backend reads
  uploads and local files straight from disk (``LABEL_STUDIO_MEDIA_DIR``, ``LOCAL_FILES_DOCUMENT_ROOT``).
* ``celery``: the web process enqueues on the real Redis and a real worker answers; a personal
  access token (the backend exchanges it for access tokens itself); every image is downloaded
  from Label Studio over HTTP.

On a failure the logs of every server started here are attached to the report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis
from deployment import Backend, Project, SampleImages, create_connected_project
from labelstudio import LabelStudioClient
from labelstudio_server import REPO_ROOT, LabelStudioServer, start_label_studio
from processes import ManagedProcess, free_port, start_process, stop_process, wait_for_http, wait_for_log_line
from sample_images import write_coins_crop_rgb_png, write_coins_jpeg, write_coins_png

# A database of its own keeps other Celery workers on this Redis (other test runs) off our queues.
REDIS_URL = os.environ.get("XSAM_E2E_REDIS_URL", "redis://127.0.0.1:6379/13")
BACKEND_START_TIMEOUT_S = 60.0
WORKER_START_TIMEOUT_S = 90.0

_STARTED: list[ManagedProcess] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and item.get_closest_marker("e2e") is not None:
        for process in _STARTED:
            report.sections.append((f"{process.name} log", process.log_tail()))
    return report


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def label_studio(e2e_dir: Path) -> Iterator[LabelStudioServer]:
    server = start_label_studio(e2e_dir / "label-studio")
    _STARTED.append(server.process)
    try:
        yield server
    finally:
        stop_process(server.process)


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer) -> Iterator[LabelStudioClient]:
    client = LabelStudioClient.with_legacy_token(label_studio.url, label_studio.legacy_token)
    yield client
    client.close()


@pytest.fixture(scope="session")
def sample_images(e2e_dir: Path, label_studio: LabelStudioServer) -> SampleImages:
    local_dir = label_studio.files_root / "images"
    local = [
        write_coins_png(local_dir / "coins.png"),
        write_coins_crop_rgb_png(local_dir / "coins_crop_rgb.png"),
    ]
    return SampleImages(
        upload=write_coins_jpeg(e2e_dir / "to-upload" / "coins_upload.jpg"),
        local={image.path.name: image for image in local},
        local_dir=local_dir,
    )


def _backend_env(mode: str, label_studio: LabelStudioServer, api_key: str, workdir: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "XSAM_ENGINE": "fallback",
        "XSAM_DEVICE": "cpu",
        "MODEL_WEIGHTS_ROOT": str(workdir / "model_weights"),
        "MEDIA_CACHE_DIR": str(workdir / "media-cache"),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": api_key,
    }
    if mode == "inline":
        env["LOCAL_FILES_DOCUMENT_ROOT"] = str(label_studio.files_root)
        env["LABEL_STUDIO_MEDIA_DIR"] = str(label_studio.media_dir)
    else:
        env["REDIS_URL"] = REDIS_URL
    return env


def _redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module", params=["inline", "celery"])
def backend(
    request: pytest.FixtureRequest,
    label_studio: LabelStudioServer,
    ls_client: LabelStudioClient,
    e2e_dir: Path,
) -> Iterator[Backend]:
    mode: str = request.param
    if mode == "celery" and not _redis_reachable(REDIS_URL):
        pytest.skip(f"no Redis answers at {REDIS_URL} (set XSAM_E2E_REDIS_URL)")
    workdir = e2e_dir / f"backend-{mode}"
    workdir.mkdir(exist_ok=True)
    api_key = label_studio.legacy_token if mode == "inline" else ls_client.create_personal_access_token()
    env = _backend_env(mode, label_studio, api_key, workdir)
    started: list[ManagedProcess] = []
    label_studio_log_start = len(label_studio.process.log_text())
    try:
        worker = None
        if mode == "celery":
            redis.Redis.from_url(REDIS_URL).flushdb()
            worker = start_process(
                "celery worker",
                [
                    sys.executable,
                    "-m",
                    "xsam_backend",
                    "worker",
                    "--queues",
                    "interactive,prelabel",
                    "--concurrency",
                    "1",
                ],
                env,
                workdir / "worker.log",
                cwd=REPO_ROOT,
            )
            started.append(worker)
            _STARTED.append(worker)
            wait_for_log_line(worker, " ready.", WORKER_START_TIMEOUT_S)
        port = free_port()
        web = start_process(
            f"backend ({mode})",
            [sys.executable, "_wsgi.py", "--host", "127.0.0.1", "--port", str(port)],
            env,
            workdir / "web.log",
            cwd=REPO_ROOT,
        )
        started.append(web)
        _STARTED.append(web)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(web, f"{url}/health", BACKEND_START_TIMEOUT_S)
        yield Backend(
            mode=mode, url=url, web=web, worker=worker, label_studio_log_start=label_studio_log_start
        )
    finally:
        for process in reversed(started):
            stop_process(process)
            _STARTED.remove(process)


@pytest.fixture(scope="module")
def brush_project(ls_client: LabelStudioClient, backend: Backend, sample_images: SampleImages) -> Project:
    return create_connected_project(
        ls_client,
        backend,
        sample_images,
        REPO_ROOT / "label_config" / "interactive_brush.xml",
        f"brush {backend.mode}",
    )


@pytest.fixture(scope="module")
def polygon_project(ls_client: LabelStudioClient, backend: Backend, sample_images: SampleImages) -> Project:
    return create_connected_project(
        ls_client,
        backend,
        sample_images,
        REPO_ROOT / "label_config" / "interactive_polygon.xml",
        f"polygon {backend.mode}",
    )
