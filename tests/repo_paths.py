"""Paths the tests share: the repository, the label configs, the shared reference data."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
LABEL_CONFIGS = REPO_ROOT / "label_config"


def label_config(name: str) -> str:
    """The XML of ``label_config/<name>.xml``."""
    return (LABEL_CONFIGS / f"{name}.xml").read_text()
