"""Shared fixtures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from repo_paths import SHARED


@pytest.fixture(scope="session")
def captured_payloads() -> dict[str, Any]:
    """Payloads captured from Label Studio 1.23.2 (``../shared/docs/labelstudio-payloads.json``)."""
    path = SHARED / "docs" / "labelstudio-payloads.json"
    if not path.is_file():
        pytest.skip(f"captured payloads not found at {path}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
