"""Paths the tests share: the repository, the label configs, the shared reference data."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The reference data (parity bundle, full-size manifest, captured payloads) sits beside the
# repository; XSAM_SHARED_DIR points elsewhere. XSAM_PARITY_DIR / XSAM_PROMPT_CASES override parts.
SHARED = Path(os.environ.get("XSAM_SHARED_DIR", REPO_ROOT.parent / "shared"))
LABEL_CONFIGS = REPO_ROOT / "label_config"


def label_config(name: str) -> str:
    """The XML of ``label_config/<name>.xml``."""
    return (LABEL_CONFIGS / f"{name}.xml").read_text()
