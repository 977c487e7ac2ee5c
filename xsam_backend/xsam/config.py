"""X-SAM configuration: frozen dataclasses read from one JSON layout.

One layout serves three files: the parity bundle's ``model/config.json``, the ``config.json`` that
:func:`xsam_backend.xsam.convert.convert_weights` writes next to ``model.safetensors``, and the
full-size release config shipped in ``model_weights/``. Its top-level keys:

* ``llm_config_phi3``, ``vision_config_siglip``, ``sam_vision_config``, ``mask2former_config``:
  plain dicts of the stock ``transformers`` configs (``Phi3Config``, ``SiglipVisionConfig``,
  ``SamVisionConfig``, ``Mask2FormerConfig``);
* ``xsam``: the X-SAM-level fields (projector sizes, connector, selected layers, token ids, ...);
* ``image_processors``: SigLIP and SAM pre-processing values (read by ``processing``).

Nothing here imports torch; building the ``transformers`` config objects is deferred to the
``*_config()`` methods.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Mask2FormerConfig, Phi3Config, SamVisionConfig, SiglipVisionConfig

IMAGE_TOKEN_INDEX = -200
REGION_TOKEN_INDEX = -300


class ConfigError(ValueError):
    """A model config file is missing a field or holds a value the model cannot use."""


@dataclass(frozen=True)
class ProjectorConfig:
    """``Linear(in, hidden) → GELU(erf) → Linear(hidden, out)``, optionally after a pixel unshuffle.

    ``downsample_ratio`` < 1 applies the X-SAM pixel shuffle with that factor first (0.5: a 2×2
    space-to-depth that multiplies the channels by 4); ``in_features`` counts channels after it.
    """

    in_features: int
    hidden_features: int
    out_features: int
    downsample_ratio: float = 1.0


@dataclass(frozen=True)
class ConnectorConfig:
    """The conv connector: one bottleneck per selected SAM layer, then an X-SAM pixel shuffle.

    Layer ``i`` maps ``in_channels[i]`` → ``hidden_channels`` → ``in_channels[i] * scale_factors[i]``
    channels, then shuffles by ``scale_factors[i]`` (2: depth-to-space, 0.5: space-to-depth).
    """

    in_channels: tuple[int, ...]
    hidden_channels: int
    scale_factors: tuple[float, ...]

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each connector output after the pixel shuffle."""
        return tuple(
            int(int(c * s) / (s * s)) if s != 1 else c for c, s in zip(self.in_channels, self.scale_factors)
        )


@dataclass(frozen=True)
class TokenIds:
    """Vocabulary ids the model and the prompt builder agree on."""

    seg: int
    p_start: int
    p_end: int
    bos: int
    eos: int
    end: int  # "<|end|>", the chat template's stop word
    image: int = IMAGE_TOKEN_INDEX
    region: int = REGION_TOKEN_INDEX


@dataclass(frozen=True)
class XSamConfig:
    """Everything needed to build :class:`xsam_backend.xsam.modeling.XSamModel` and its inputs.

    ``seg_select_layers`` are the SAM layers (1-based: ``i`` = output of encoder layer ``i``) fed
    to the connector, low stride first; ``seg_projector_layer`` indexes the same 0-based list of
    ``1 + num_layers`` states (``-2``: the second-to-last layer); ``visual_select_layer`` indexes
    SigLIP's ``hidden_states``.
    """

    llm: Mapping[str, Any]
    siglip: Mapping[str, Any]
    sam: Mapping[str, Any]
    mask2former: Mapping[str, Any]
    visual_projector: ProjectorConfig
    seg_projector: ProjectorConfig
    llm_projector: ProjectorConfig
    connector: ConnectorConfig
    token_ids: TokenIds
    seg_select_layers: tuple[int, ...]
    visual_select_layer: int = -2
    seg_projector_layer: int = -2
    num_sample_points: int = 256
    max_length: int = 2343
    max_new_tokens: int = 512
    image_processors: Mapping[str, Any] = field(default_factory=dict)

    # ---- derived sizes -------------------------------------------------------------------

    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def decoder_hidden_size(self) -> int:
        return int(self.mask2former["hidden_dim"])

    @property
    def num_queries(self) -> int:
        return int(self.mask2former["num_queries"])

    @property
    def sam_image_size(self) -> int:
        """Side of the padded square SAM frame in pixels (1024 for the release)."""
        return int(self.sam["image_size"])

    @property
    def num_siglip_tokens(self) -> int:
        return (int(self.siglip["image_size"]) // int(self.siglip["patch_size"])) ** 2

    @property
    def num_sam_tokens(self) -> int:
        grid = self.sam_image_size // int(self.sam["patch_size"])
        side = int(grid * self.seg_projector.downsample_ratio)
        return side * side

    @property
    def num_image_tokens(self) -> int:
        """LLM positions that replace the single ``<image>`` placeholder (1753 for the release)."""
        return self.num_siglip_tokens + self.num_sam_tokens

    # ---- transformers configs ------------------------------------------------------------

    def phi3_config(self, attn_implementation: str = "sdpa") -> Phi3Config:
        """The LLM config; ``use_cache`` on because the engine decodes with a KV cache."""
        from transformers import Phi3Config

        cfg = Phi3Config.from_dict({**self.llm, "use_cache": True})
        cfg._attn_implementation = attn_implementation
        return cfg

    def siglip_config(self, attn_implementation: str = "sdpa") -> SiglipVisionConfig:
        from transformers import SiglipVisionConfig

        cfg = SiglipVisionConfig.from_dict(dict(self.siglip))
        cfg._attn_implementation = attn_implementation
        return cfg

    def sam_config(self) -> SamVisionConfig:
        """SAM vision config with eager attention, as the official segmentor builds it."""
        from transformers import SamVisionConfig

        cfg = SamVisionConfig.from_dict(dict(self.sam))
        cfg._attn_implementation = "eager"
        return cfg

    def mask2former_config(self) -> Mask2FormerConfig:
        from transformers import Mask2FormerConfig

        keep = {k: v for k, v in self.mask2former.items() if k not in _M2F_NON_HF_FIELDS}
        cfg = Mask2FormerConfig.from_dict({**keep, "use_pretrained_backbone": False})
        return cfg

    # ---- (de)serialisation ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> XSamConfig:
        """Read the JSON layout described in the module docstring; raises :class:`ConfigError`."""
        try:
            llm = dict(data["llm_config_phi3"])
            siglip = dict(data["vision_config_siglip"])
            sam = dict(data["sam_vision_config"])
            m2f = dict(data["mask2former_config"])
            x = data["xsam"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"model config lacks the section {exc}; expected llm_config_phi3, "
                "vision_config_siglip, sam_vision_config, mask2former_config, xsam"
            ) from None
        try:
            ids = x["special_token_ids"]
            chat = x["chat_token_ids"]
            vp, sp, lp, conn = (
                x["visual_projector"],
                x["seg_projector"],
                x["llm_projector"],
                x["seg_connector"],
            )
            feature_channels = tuple(int(c) for c in m2f["feature_channels"])
            config = cls(
                llm=llm,
                siglip=siglip,
                sam=sam,
                mask2former=m2f,
                visual_projector=ProjectorConfig(int(vp["in"]), int(vp["hidden"]), int(vp["out"])),
                seg_projector=ProjectorConfig(
                    int(sp["in"]), int(sp["hidden"]), int(sp["out"]), float(sp.get("downsample_ratio", 0.5))
                ),
                llm_projector=ProjectorConfig(int(lp["in"]), int(lp["hidden"]), int(lp["out"])),
                connector=ConnectorConfig(
                    in_channels=tuple(int(c) for c in conn["in_channels"]),
                    hidden_channels=int(conn["hidden_channels"]),
                    scale_factors=tuple(float(s) for s in conn["scale_factors"]),
                ),
                token_ids=TokenIds(
                    seg=int(ids["<SEG>"]),
                    p_start=int(ids["<p>"]),
                    p_end=int(ids["</p>"]),
                    bos=int(x.get("bos_token_id", chat.get("<s>", 1))),
                    eos=int(x["eos_token_id"]),
                    end=int(chat["<|end|>"]),
                    image=int(x.get("image_token_index", IMAGE_TOKEN_INDEX)),
                    region=int(x.get("region_token_index", REGION_TOKEN_INDEX)),
                ),
                seg_select_layers=tuple(int(i) for i in x["seg_select_layers_used"]),
                visual_select_layer=int(x.get("visual_select_layer", -2)),
                seg_projector_layer=int(x.get("seg_projector_input_hidden_state_index", -2)),
                num_sample_points=int(x.get("vision_sampler", {}).get("num_sample_point", 256)),
                max_length=int(x.get("max_length", 2343)),
                max_new_tokens=int(x.get("generation_config", {}).get("max_new_tokens", 512)),
                image_processors=dict(data.get("image_processors", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"model config 'xsam' section is incomplete or malformed: {exc!r}") from None
        if config.connector.out_channels != feature_channels:
            raise ConfigError(
                f"connector outputs {config.connector.out_channels} channels but the pixel decoder "
                f"expects feature_channels {feature_channels}"
            )
        if len(config.seg_select_layers) != len(config.connector.in_channels):
            raise ConfigError("seg_select_layers_used and seg_connector.in_channels differ in length")
        return config

    @classmethod
    def from_file(cls, path: Path) -> XSamConfig:
        """Read ``config.json`` (a file, or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no model config at {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


# Fields of X-SAM's vendored Mask2FormerConfig that stock transformers does not know; kept in the
# JSON for provenance and dropped when the stock config is built.
_M2F_NON_HF_FIELDS = frozenset(
    {
        "use_backbone",
        "image_size",
        "feature_channels",
        "num_feature_levels",
        "use_sample_point",
        "use_nolabel_cls_loss",
        "loss_cls_type",
        "alpha",
        "gamma",
        "backbone",
        "backbone_config",
        "backbone_kwargs",
        "use_timm_backbone",
    }
)
