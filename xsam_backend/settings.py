"""Settings: the only module that reads the environment, once, at the composition root.

``Settings.from_env()`` is called by ``_wsgi.py`` and the CLI; everything else receives the frozen
object (or the parts it needs). Every variable is listed in the README's configuration table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

EngineChoice = Literal["auto", "xsam", "fallback"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
AcceptChoice = Literal["submitted", "ground_truth", "reviewed"]

DEFAULT_MODEL_NAME = "xsam-s3-phi3-mini-siglip2-sam-large"


class SettingsError(ValueError):
    """An environment variable has a value the backend cannot use."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be a boolean (true/false); got {raw!r}")


def _int(name: str, raw: str) -> int:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name} must be an integer; got {raw!r}") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number; got {raw!r}") from None


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Backend configuration. Field ``env`` metadata names the variable that sets it."""

    # Label Studio connection (media download, API for training/export)
    label_studio_url: str | None = field(default=None, metadata={"env": "LABEL_STUDIO_URL"})
    label_studio_api_key: str | None = field(default=None, metadata={"env": "LABEL_STUDIO_API_KEY"})
    local_files_document_root: Path | None = field(default=None, metadata={"env": "LOCAL_FILES_DOCUMENT_ROOT"})
    label_studio_media_dir: Path | None = field(default=None, metadata={"env": "LABEL_STUDIO_MEDIA_DIR"})
    media_allowed_hosts: tuple[str, ...] = field(default=(), metadata={"env": "MEDIA_ALLOWED_HOSTS"})
    media_timeout_s: float = field(default=20.0, metadata={"env": "MEDIA_TIMEOUT_S"})
    max_image_pixels: int = field(default=100_000_000, metadata={"env": "MAX_IMAGE_PIXELS"})
    max_image_bytes: int = field(default=200_000_000, metadata={"env": "MAX_IMAGE_BYTES"})
    media_cache_dir: Path = field(
        default=Path.home() / ".cache" / "xsam-backend" / "media", metadata={"env": "MEDIA_CACHE_DIR"}
    )
    media_cache_disk_bytes: int = field(default=2_000_000_000, metadata={"env": "MEDIA_CACHE_DISK_BYTES"})
    media_cache_memory_bytes: int = field(default=256_000_000, metadata={"env": "MEDIA_CACHE_MEMORY_BYTES"})

    # HTTP server
    basic_auth_user: str | None = field(default=None, metadata={"env": "BASIC_AUTH_USER"})
    basic_auth_pass: str | None = field(default=None, metadata={"env": "BASIC_AUTH_PASS"})
    max_request_bytes: int = field(default=64_000_000, metadata={"env": "MAX_REQUEST_BYTES"})
    max_prompt_regions: int = field(default=64, metadata={"env": "MAX_PROMPT_REGIONS"})
    max_tasks_per_request: int = field(default=1000, metadata={"env": "MAX_TASKS_PER_REQUEST"})
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL"})

    # Dispatch
    redis_url: str | None = field(default=None, metadata={"env": "REDIS_URL"})
    interactive_timeout_s: float = field(default=30.0, metadata={"env": "INTERACTIVE_TIMEOUT_S"})
    prelabel_timeout_s: float = field(default=95.0, metadata={"env": "PRELABEL_TIMEOUT_S"})
    broker_check_timeout_s: float = field(default=1.5, metadata={"env": "BROKER_CHECK_TIMEOUT_S"})

    # Model
    engine: EngineChoice = field(default="auto", metadata={"env": "XSAM_ENGINE"})
    model_dir: Path = field(
        default=Path("model_weights") / DEFAULT_MODEL_NAME, metadata={"env": "XSAM_MODEL_DIR"}
    )
    weights_root: Path = field(default=Path("model_weights"), metadata={"env": "MODEL_WEIGHTS_ROOT"})
    device: DeviceChoice = field(default="auto", metadata={"env": "XSAM_DEVICE"})
    feature_cache_bytes: int = field(default=2_000_000_000, metadata={"env": "XSAM_FEATURE_CACHE_BYTES"})

    # Output geometry
    polygon_tolerance_px: float = field(default=1.0, metadata={"env": "POLYGON_TOLERANCE_PX"})
    min_region_area_px: int = field(default=16, metadata={"env": "MIN_REGION_AREA_PX"})

    # Training (active learning)
    train_every_n_annotations: int = field(default=10, metadata={"env": "TRAIN_EVERY_N_ANNOTATIONS"})
    train_accept: AcceptChoice = field(default="submitted", metadata={"env": "TRAIN_ACCEPT"})
    train_holdout_fraction: float = field(default=0.2, metadata={"env": "TRAIN_HOLDOUT_FRACTION"})
    train_steps: int = field(default=300, metadata={"env": "TRAIN_STEPS"})
    train_learning_rate: float = field(default=1e-4, metadata={"env": "TRAIN_LEARNING_RATE"})
    train_promote_margin: float = field(default=0.0, metadata={"env": "TRAIN_PROMOTE_MARGIN"})
    train_seed: int = field(default=0, metadata={"env": "TRAIN_SEED"})
    train_lora_rank: int = field(default=0, metadata={"env": "TRAIN_LORA_RANK"})
    train_lora_alpha: int = field(default=32, metadata={"env": "TRAIN_LORA_ALPHA"})
    train_lora_dropout: float = field(default=0.05, metadata={"env": "TRAIN_LORA_DROPOUT"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); unknown variables are ignored.

        Raises :class:`SettingsError` naming the variable when a value cannot be parsed.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, name, raw, f.default)
        if "weights_root" in values and "model_dir" not in values:
            values["model_dir"] = values["weights_root"] / DEFAULT_MODEL_NAME
        if values.get("engine", "auto") not in ("auto", "xsam", "fallback"):
            raise SettingsError(f"XSAM_ENGINE must be auto, xsam or fallback; got {values['engine']!r}")
        if values.get("device", "auto") not in ("auto", "cpu", "cuda"):
            raise SettingsError(f"XSAM_DEVICE must be auto, cpu or cuda; got {values['device']!r}")
        if values.get("train_accept", "submitted") not in ("submitted", "ground_truth", "reviewed"):
            raise SettingsError(
                f"TRAIN_ACCEPT must be submitted, ground_truth or reviewed; got {values['train_accept']!r}"
            )
        if values.get("train_lora_rank", 0) < 0 or values.get("train_lora_alpha", 1) < 1:
            raise SettingsError("TRAIN_LORA_RANK must be 0 (off) or more, and TRAIN_LORA_ALPHA at least 1")
        if not 0.0 <= values.get("train_lora_dropout", 0.0) < 1.0:
            raise SettingsError(f"TRAIN_LORA_DROPOUT must be in [0, 1); got {values['train_lora_dropout']}")
        if ("basic_auth_user" in values) != ("basic_auth_pass" in values):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if "label_studio_url" in values:
            url = values["label_studio_url"].rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"LABEL_STUDIO_URL must start with http:// or https://; got {url!r}")
            values["label_studio_url"] = url
        return cls(**values)

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (tests, CLI flags)."""
        return replace(self, **changes)

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def projects_dir(self) -> Path:
        """Per-project trained versions and training state: ``<MODEL_WEIGHTS_ROOT>/projects``."""
        return self.weights_root / "projects"


def _parse(attr: str, name: str, raw: str, default: Any) -> Any:
    if attr in ("local_files_document_root", "label_studio_media_dir", "media_cache_dir", "model_dir", "weights_root"):
        return Path(raw).expanduser()
    if isinstance(default, bool):
        return _bool(name, raw)
    if isinstance(default, int):
        return _int(name, raw)
    if isinstance(default, float):
        return _float(name, raw)
    if isinstance(default, tuple):
        return _list(raw)
    return raw
