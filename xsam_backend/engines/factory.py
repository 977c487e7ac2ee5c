"""Choose and build the serving engine from settings.

``describe_engine`` answers without importing torch (the web process uses it for ``/health`` and
``/setup``); ``build_engine`` builds the engine in the process that runs the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from xsam_backend.engines.base import Engine
from xsam_backend.settings import Settings

log = logging.getLogger(__name__)

FALLBACK_VERSION = "fallback-opencv-1"


@dataclass(frozen=True)
class EngineDescription:
    """Which engine serves, its model version, and why (a sentence for logs and ``/health``)."""

    name: str
    model_version: str
    reason: str


def weights_present(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a converted X-SAM model (``config.json`` + ``model.safetensors``)."""
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()


def xsam_model_version(model_dir: Path) -> str:
    """``xsam-<dir name>-<8 hex>``: the hash of the converted model's ``checksums.json`` (or config)."""
    source = model_dir / "checksums.json"
    if not source.is_file():
        source = model_dir / "config.json"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    return f"xsam-{model_dir.name}-{digest}"


def describe_engine(settings: Settings) -> EngineDescription:
    """Decide the engine from ``settings.engine`` and what is on disk; cheap, torch-free."""
    has_weights = weights_present(settings.model_dir)
    if settings.engine == "fallback":
        return EngineDescription("fallback", FALLBACK_VERSION, "XSAM_ENGINE=fallback")
    if has_weights:
        return EngineDescription(
            "xsam", xsam_model_version(settings.model_dir), f"X-SAM weights found in {settings.model_dir}"
        )
    reason = (
        f"no X-SAM weights in {settings.model_dir} (expected config.json and model.safetensors; "
        "see model_weights/README.md); serving the weight-free fallback engine: point, box and "
        "scribble prompts only"
    )
    if settings.engine == "xsam":
        raise FileNotFoundError(f"XSAM_ENGINE=xsam but {reason.split(';')[0]}")
    return EngineDescription("fallback", FALLBACK_VERSION, reason)


def build_engine(settings: Settings) -> Engine:
    """Build the engine :func:`describe_engine` chooses (imports torch only for X-SAM)."""
    description = describe_engine(settings)
    log.info("engine: %s (model version %s): %s", description.name, description.model_version, description.reason)
    if description.name == "xsam":
        from xsam_backend.engines.xsam_engine import XSamEngine

        return XSamEngine.from_dir(settings.model_dir, settings)
    from xsam_backend.engines.fallback import FallbackEngine

    return FallbackEngine()


def read_model_config(model_dir: Path) -> dict[str, object]:
    """The converted model's ``config.json`` as a dict."""
    data = json.loads((model_dir / "config.json").read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{model_dir / 'config.json'} must hold a JSON object")
    return data
