"""Fixtures of the reliability tests: a document root of test images, the app on the inline path, request counts.

The fuzz tests (marker ``fuzz``) drive the Flask app in-process through its WSGI interface; the
fault tests (marker ``celery``) use the real Redis and real worker processes (fixtures in
``tests/worker/conftest.py``, re-exported here).
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import write_test_images


def _load_worker_fixtures() -> object:
    # Loaded under its own name: importing it as ``conftest`` would clash with the other conftests.
    path = Path(__file__).resolve().parents[1] / "worker" / "conftest.py"
    spec = importlib.util.spec_from_file_location("worker_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_worker = _load_worker_fixtures()
# The worker tests' fixtures: private Redis databases, a media server, real worker processes.
disk = _worker.disk  # type: ignore[attr-defined]
image_root = _worker.image_root  # type: ignore[attr-defined]
media_server = _worker.media_server  # type: ignore[attr-defined]
redis_client = _worker.redis_client  # type: ignore[attr-defined]
redis_dbs = _worker.redis_dbs  # type: ignore[attr-defined]
start_worker = _worker.start_worker  # type: ignore[attr-defined]
url_of_db = _worker.url_of_db  # type: ignore[attr-defined]

FUZZ_REQUESTS: Counter[str] = Counter()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_REQUESTS:
        terminalreporter.write_sep("-", "generated HTTP requests")
        for name, count in sorted(FUZZ_REQUESTS.items()):
            terminalreporter.write_line(f"{count:7d}  {name}")
        terminalreporter.write_line(f"{sum(FUZZ_REQUESTS.values()):7d}  in total")


@pytest.fixture(scope="session")
def fuzz_counter() -> Counter[str]:
    """Generated requests per fuzz test, printed in the terminal summary."""
    return FUZZ_REQUESTS


@pytest.fixture(scope="session")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``LOCAL_FILES_DOCUMENT_ROOT`` holding the images of :func:`write_test_images`."""
    root = tmp_path_factory.mktemp("fuzz-root")
    write_test_images(root)
    yield root
