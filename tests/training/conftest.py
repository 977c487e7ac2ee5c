"""Fixtures for the training tests: the tiny random-weight X-SAM converted once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_scenes import PARITY_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parity bundle's tiny random-weight model, converted to the served layout."""
    if not (PARITY_DIR / "model").is_dir():
        pytest.skip(f"no parity bundle at {PARITY_DIR}")
    from xsam_backend.xsam.convert import convert_weights

    return convert_weights(PARITY_DIR, tmp_path_factory.mktemp("tiny") / "xsam-tiny")
