"""The X-SAM network, top to bottom, on stock ``transformers`` building blocks.

Data flow for one image (release sizes; the parity bundle's tiny model in brackets)::

    SigLIP pixels (1, 3, 384, 384) ─ SiglipVisionModel ─ hidden_states[-2] (1, 729, 1152)
        ─ visual_projector ──────────────────────────────────────────────▶ (1, 729, 3072)  ┐ image
    SAM pixels (1, 3, 1024, 1024) ─ SamVisionEncoder layers ─ states[i] (1, 64, 64, 1024)   │ tokens
        states[-2] ─ pixel-unshuffle 2×2 ─ seg_projector ─────────────────▶ (1, 1024, 3072) ┘ (1753)
        states[12, 18, 24] ─ seg_connector ─ 512@128², 1024@64², 2048@32²
        ─ Mask2FormerPixelDecoder ─ mask_features 256@128², multi-scale 256@{32², 64², 128²}
    prompt ids with <image>/<region> ─ splice ─ Phi-3 ─ last hidden (1, L, 3072)
        ─ llm_projector ─ E (1, L, 256) ─ conds = mean of E over each <p>…</p> span (+ bg_embeds),
                                           seg = E at <SEG>
    Mask2FormerTransformerModule with queries_features + seg ─ 200 queries
        ─ class logits = clamp(exp(logit_scale)·cos(query, cond), ±500)   (1, 200, C + 1)
        ─ mask logits at stride 8                                          (1, 200, 128, 128)

Frames: the SAM branch, the sampler's points and all mask logits live in the **padded SAM frame**
(the resized image in the top-left ``scaled_size`` corner of an ``S × S`` square, ``S`` = 1024);
cropping and resizing back to the original image is post-processing (``processing``).

Reuse: the decoder's level projections, position embeddings and the cross-attention keys and
values of all its layers depend on the image alone; :meth:`XSegmentor.prepare_decoder` computes
them once per image (:class:`DecoderImageState`) and every prompt then runs only the query side.
The result is bitwise that of the stock ``Mask2FormerTransformerModule`` (same operations, same
order, same memory layouts).

Precision: everything runs in the module dtype (fp32 on CPU, bf16 on CUDA) except where the
official code upcasts to fp32: the channels-first LayerNorm statistics, the sampler's
``grid_sample`` and the deformable attention; for the last, the engine keeps the pixel decoder in
fp32 altogether (it runs once per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Phi3ForCausalLM, SiglipVisionModel
from transformers.cache_utils import Cache
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerPixelDecoder,
    Mask2FormerTransformerModule,
)
from transformers.models.sam.modeling_sam import SamVisionEncoder

from xsam_backend.xsam.config import ConnectorConfig, ProjectorConfig, XSamConfig

# ---------------------------------------------------------------------------------------------
# X-SAM pixel shuffle
# ---------------------------------------------------------------------------------------------


def pixel_shuffle(x: torch.Tensor, scale_factor: float, channels_last: bool = True) -> torch.Tensor:
    """X-SAM's pixel shuffle; **not** ``F.pixel_shuffle``: its channel block orders differ.

    ``x``: ``(B, H, W, C)`` when ``channels_last`` else ``(B, C, H, W)``; same layout out.

    * ``scale_factor=0.5`` (space-to-depth): ``(B, H, W, C) → (B, H/2, W/2, 4C)``; the element
      ``(dy, dx)`` of each 2×2 patch goes to channel block ``2·dy + dx``. Odd ``H``/``W`` are
      zero-padded at the bottom/right first.
    * ``scale_factor=2`` (depth-to-space): ``(B, H, W, 4C) → (B, 2H, 2W, C)``; channel block
      ``2·dx + dy`` goes to ``(dy, dx)``: the transpose of the other direction's order.
    * ``scale_factor=1``: identity.
    """
    if scale_factor == 1:
        return x
    if not channels_last:
        return pixel_shuffle(x.permute(0, 2, 3, 1), scale_factor).permute(0, 3, 1, 2)
    b, h, w, c = x.shape
    if scale_factor == 0.5:
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h // 2, w // 2, 4 * c)
    if scale_factor == 2:
        x = x.reshape(b, h, w, 2, 2, c // 4).permute(0, 1, 4, 2, 3, 5)
        return x.reshape(b, 2 * h, 2 * w, c // 4)
    raise ValueError(f"X-SAM pixel shuffle supports scale factors 0.5, 1 and 2; got {scale_factor}")


# ---------------------------------------------------------------------------------------------
# Small X-SAM modules: projectors, connector, sampler
# ---------------------------------------------------------------------------------------------


class XSamProjector(nn.Module):
    """``Linear → GELU → Linear`` (state-dict keys ``model.0``, ``model.2``), after an optional
    X-SAM pixel unshuffle.

    Input ``(B, N, in)``, or ``(B, H, W, C)`` channels-last when ``downsample_ratio`` < 1
    (then ``in = C / downsample_ratio²`` and ``N = H·W·downsample_ratio²``); output ``(B, N, out)``.
    """

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.downsample_ratio = config.downsample_ratio
        self.model = nn.Sequential(
            nn.Linear(config.in_features, config.hidden_features),
            nn.GELU(),
            nn.Linear(config.hidden_features, config.out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample_ratio != 1:
            x = pixel_shuffle(x, self.downsample_ratio).flatten(1, 2)
        return self.model(x)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, H, W)``, statistics in fp32.

    The normalised tensor is cast back to the input dtype *before* the affine transform, as the
    official SAM LayerNorm does (matters in bf16 only).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = ((x - mean) / torch.sqrt(var + self.eps)).to(dtype)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConnectorLayer(nn.Module):
    """Bottleneck ``1×1 → LN → 3×3 → LN → 1×1 → LN`` (no conv bias), then the pixel shuffle.

    Input: one SAM layer output ``(B, H, W, C)`` channels-last. Output ``(B, C', H', W')``
    channels-first with ``(C', H', W') = (C·s / s², H·s, W·s)`` for scale factor ``s``.
    """

    def __init__(self, in_channels: int, hidden_channels: int, scale_factor: float) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        out_channels = int(in_channels * scale_factor)
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            ChannelsFirstLayerNorm(hidden_channels),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, padding=1, bias=False),
            ChannelsFirstLayerNorm(hidden_channels),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1, bias=False),
            ChannelsFirstLayerNorm(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if self.scale_factor < 1 and (h % 2 or w % 2):
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Convolutions on the permuted (non-contiguous) view differ by ~1e-6 on CPU.
        x = self.model(x.permute(0, 3, 1, 2).contiguous())
        return pixel_shuffle(x, self.scale_factor, channels_last=False)


class SegConnector(nn.Module):
    """Turns the selected SAM layers into the pixel decoder's three maps (strides 8, 16, 32)."""

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__()
        self.model = nn.ModuleList(
            ConnectorLayer(c, config.hidden_channels, s)
            for c, s in zip(config.in_channels, config.scale_factors)
        )

    def forward(self, layer_outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``layer_outputs[i]``: ``(B, H, W, C_i)``; returns ``[(B, C'_i, H'_i, W'_i)]``, high
        resolution first (512@128², 1024@64², 2048@32² for the release)."""
        return [layer(x) for layer, x in zip(self.model, layer_outputs)]


def sample_region_embeddings(token_map: torch.Tensor, points_yx: torch.Tensor) -> torch.Tensor:
    """The visual-prompt sampler: bilinear samples at the prompt's points, max-pooled.

    ``token_map``: ``(side, side, D)``, the seg-projected SAM tokens of one image reshaped to
    their grid. ``points_yx``: ``(N, P, 2)`` float, ``(row / S, col / S)`` in the padded SAM frame
    (``S`` = its side). Returns ``(N, D)`` in ``token_map``'s dtype. Sampling is
    ``grid_sample(align_corners=True)`` in fp32, as the official ``point_sample``: pixel column
    ``c`` lands on feature column ``c / S · (side − 1)``.
    """
    n = points_yx.shape[0]
    feature = token_map.permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1).float()
    grid = (points_yx.flip(-1).float() * 2 - 1).unsqueeze(2)  # (N, P, 1, 2) as (x, y)
    sampled = F.grid_sample(feature, grid, mode="bilinear", align_corners=True)  # (N, D, P, 1)
    return sampled.squeeze(-1).amax(dim=-1).to(token_map.dtype)


# ---------------------------------------------------------------------------------------------
# The segmentor: SAM encoder + Mask2Former pixel decoder + SEG-conditioned decoder + class head
# ---------------------------------------------------------------------------------------------


class SharedImageEmbedding(nn.Module):
    """SAM's random Fourier matrix ``(2, num_pos_feats)``: saved in the checkpoint, never used."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_embedding", torch.zeros(2, num_pos_feats))


@dataclass
class PixelDecoderOutput:
    """Image-only decoder inputs. ``mask_features``: ``(B, D, S/8, S/8)``; ``multi_scale``: three
    ``(B, D, h, w)`` maps, low resolution first (strides 32, 16, 8)."""

    mask_features: torch.Tensor
    multi_scale: list[torch.Tensor]


@dataclass
class DecoderImageState:
    """What the masked-attention decoder computes from the image alone, once per image.

    ``mask_features``: ``(B, D, S/8, S/8)``, the pixel embeddings the mask head projects on.
    ``sizes``: ``(h, w)`` of each level, low resolution first (strides 32, 16, 8).
    ``keys`` / ``values``: per decoder layer ``(B·heads, h·w, D/heads)``: the cross-attention key
    ``W_k·(feature + position) + b_k`` and value ``W_v·feature + b_v`` of that layer's level, where
    ``feature`` is the level's input projection plus its level embedding and ``position`` its sine
    embedding. Views with the memory layout ``nn.MultiheadAttention`` gives them, so that the
    attention products are bitwise those of the stock layer. They depend on the decoder weights:
    a state is only valid for the weights it was built with.
    """

    mask_features: torch.Tensor
    sizes: list[tuple[int, int]]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def nbytes(self) -> int:
        """Bytes of the keys and values (``mask_features`` belongs to the pixel decoder output)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class DecoderOutput:
    """One decoder pass. ``class_logits``: ``(B, Q, C + 1)``, last column background.
    ``mask_logits``: ``(B, Q, S/8, S/8)``, last layer only, padded SAM frame at stride 8.
    ``query_states``: ``(B, Q, D)``, the LayerNorm-ed last query states.
    ``auxiliary``: only when asked for (training's deep supervision), the earlier predictions,
    initial then after each layer but the last, each ``(class_logits, mask_logits)`` shaped as
    the final pair."""

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    query_states: torch.Tensor
    auxiliary: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


def _cross_attention(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocked: torch.Tensor,
) -> torch.Tensor:
    """``nn.MultiheadAttention`` (sequence first, ``need_weights`` path) on projected keys/values.

    ``query``: ``(Q, B, D)`` with its position embedding added; ``key``/``value``:
    ``(B·heads, N, D/heads)`` from :class:`DecoderImageState`; ``blocked``: ``(B, Q, N)`` bool,
    the positions each query may not attend (the same for every head). Returns ``(Q, B, D)``.

    The stock layer turns the mask into a float ``(B·heads, Q, N)`` tensor of 0 and −inf and adds
    it in ``baddbmm``; adding 0 leaves a score unchanged and adding −inf makes it −inf, so filling
    −inf into the plain product is bitwise the same, without the per-head float mask. The averaged
    attention weights, which nobody reads, are not computed.
    """
    tgt_len, batch, embed_dim = query.shape
    heads = attn.num_heads
    w_q = attn.in_proj_weight[:embed_dim]
    b_q = attn.in_proj_bias[:embed_dim] if attn.in_proj_bias is not None else None
    q = F.linear(query, w_q, b_q).view(tgt_len, batch * heads, embed_dim // heads).transpose(0, 1)
    q_scaled = q * math.sqrt(1.0 / float(q.shape[-1]))
    scores = torch.bmm(q_scaled, key.transpose(-2, -1))  # (B·heads, Q, N)
    scores.view(batch, heads, tgt_len, -1).masked_fill_(blocked.unsqueeze(1), float("-inf"))
    weights = scores.softmax(dim=-1)
    if attn.training and attn.dropout > 0.0:
        weights = F.dropout(weights, p=attn.dropout)
    out = torch.bmm(weights, value).transpose(0, 1).reshape(tgt_len * batch, embed_dim)
    out = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    return out.view(tgt_len, batch, embed_dim)


def _decoder_layer(
    layer: Mask2FormerMaskedAttentionDecoderLayer,
    hidden: torch.Tensor,
    query_position: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocked: torch.Tensor,
) -> torch.Tensor:
    """``Mask2FormerMaskedAttentionDecoderLayer.forward_post`` on cached keys/values.

    ``hidden``/``query_position``: ``(Q, B, D)``; ``key``/``value``/``blocked`` as
    :func:`_cross_attention`. Returns the new query states ``(Q, B, D)``.
    """
    p = layer.dropout if layer.training else 0.0
    query = hidden + query_position
    attended = _cross_attention(layer.cross_attn, query, key, value, blocked)
    hidden = layer.cross_attn_layer_norm(hidden + F.dropout(attended, p=p, training=layer.training))
    attended, _ = layer.self_attn(hidden_states=hidden, position_embeddings=query_position)
    hidden = layer.self_attn_layer_norm(hidden + F.dropout(attended, p=p, training=layer.training))
    ffn = F.dropout(layer.activation_fn(layer.fc1(hidden)), p=p, training=layer.training)
    ffn = F.dropout(layer.fc2(ffn), p=p, training=layer.training)
    return layer.final_layer_norm(hidden + ffn)


def _unblock_empty_rows(blocked: torch.Tensor) -> torch.Tensor:
    """``blocked`` ``(B, Q, N)`` bool with the stock decoder's rule applied: a query blocked at
    every position attends everywhere."""
    return blocked & (blocked.sum(-1) != blocked.shape[-1]).unsqueeze(-1)


def _decoder_layers(module: Mask2FormerTransformerModule) -> list[Mask2FormerMaskedAttentionDecoderLayer]:
    return cast(list[Mask2FormerMaskedAttentionDecoderLayer], list(module.decoder.layers))


class XSegmentor(nn.Module):
    """SAM ViT encoder, Mask2Former pixel decoder and masked-attention decoder, open-vocabulary head."""

    def __init__(self, config: XSamConfig) -> None:
        super().__init__()
        m2f = config.mask2former_config()
        self.encoder = SamVisionEncoder(config.sam_config())
        self.shared_image_embedding = SharedImageEmbedding(int(config.sam.get("num_pos_feats", 128)))
        self.pixel_decoder = Mask2FormerPixelDecoder(
            m2f, feature_channels=list(config.connector.out_channels)
        )
        # The stock pixel decoder allocates level_embed uninitialised (legacy constructor) and
        # leaves it to the official _init_weights, which zeroes it. A checkpoint overwrites it; a
        # model built without one (random weights) must not compute on leftover memory.
        with torch.no_grad():
            self.pixel_decoder.level_embed.zero_()
        self.decoder = Mask2FormerTransformerModule(in_features=m2f.feature_size, config=m2f)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / 0.07)]))

    def encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """SAM states, the official (transformers 4.48) way: ``[embeddings, layer 1, …, layer N]``.

        ``pixel_values``: ``(B, 3, S, S)`` normalised, padded SAM frame. Each state is
        ``(B, S/16, S/16, hidden)`` channels-last. The neck is not run: X-SAM does not use it.
        """
        enc = self.encoder
        hidden = enc.patch_embed(pixel_values)
        if enc.pos_embed is not None:
            hidden = hidden + enc.pos_embed
        states = [hidden]
        for layer in enc.layers:
            hidden = layer(hidden)
            states.append(hidden)
        return states

    def decode_pixels(self, features: list[torch.Tensor]) -> PixelDecoderOutput:
        """Run the pixel decoder on the connector maps (high resolution first)."""
        out = self.pixel_decoder(features, output_hidden_states=False, return_dict=True)
        return PixelDecoderOutput(out.mask_features, list(out.multi_scale_features))

    def prepare_decoder(self, pixels: PixelDecoderOutput) -> DecoderImageState:
        """The decoder's image-only work: level projections, position embeddings and every layer's
        cross-attention keys and values (see :class:`DecoderImageState`). Differentiable."""
        tm = self.decoder
        levels = []
        for i, feature in enumerate(pixels.multi_scale[: tm.num_feature_levels]):
            pos = tm.position_embedder(feature.shape, feature.device, feature.dtype, None).flatten(2)
            proj = tm.input_projections[i](feature).flatten(2) + tm.level_embed.weight[i][None, :, None]
            # (B, D, h·w) → (h·w, B, D), the sequence-first layout of the stock decoder
            levels.append((proj.permute(2, 0, 1), pos.permute(2, 0, 1)))
        keyed = [proj + pos for proj, pos in levels]
        keys, values = [], []
        for idx, layer in enumerate(_decoder_layers(tm)):
            level = idx % tm.decoder.num_feature_levels
            attn = layer.cross_attn
            _, w_k, w_v = attn.in_proj_weight.chunk(3)
            _, b_k, b_v = attn.in_proj_bias.chunk(3)
            n, batch, dim = keyed[level].shape
            head_shape = (n, batch * attn.num_heads, dim // attn.num_heads)
            keys.append(F.linear(keyed[level], w_k, b_k).view(head_shape).transpose(0, 1))
            values.append(F.linear(levels[level][0], w_v, b_v).view(head_shape).transpose(0, 1))
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in pixels.multi_scale[: tm.num_feature_levels]]
        return DecoderImageState(pixels.mask_features, sizes, keys, values)

    def decode_queries(
        self,
        pixels: PixelDecoderOutput | DecoderImageState,
        seg_embeds: torch.Tensor,
        cond_embeds: torch.Tensor,
        auxiliary: bool = False,
    ) -> DecoderOutput:
        """The masked-attention decoder with ``<SEG>`` added to every learnable query feature.

        ``pixels``: the pixel decoder output, or the :meth:`prepare_decoder` state of it (what a
        cached image passes: then no image-only work is repeated). ``seg_embeds``: ``(B, 1, D)``;
        ``cond_embeds``: ``(B, C + 1, D)`` (background last). ``auxiliary``: also return the
        intermediate predictions (the initial one and one per layer but the last), each classified
        by the same open-vocabulary head, as the official training loss reads them.

        Computes what the stock
        ``Mask2FormerTransformerModule.forward`` does plus the ``<SEG>`` term, bitwise, with the
        per-layer attention mask kept once per query instead of once per head, and without the
        attention mask of the last mask prediction (no layer reads it).
        """
        state = pixels if isinstance(pixels, DecoderImageState) else self.prepare_decoder(pixels)
        tm = self.decoder
        dec = tm.decoder
        batch = state.mask_features.shape[0]
        query_position = tm.queries_embedder.weight.unsqueeze(1).repeat(1, batch, 1)
        hidden = tm.queries_features.weight.unsqueeze(1).repeat(1, batch, 1)
        hidden = hidden + seg_embeds.transpose(0, 1).to(hidden.dtype)
        normed = dec.layernorm(hidden)
        mask_logits, blocked = self._predict_masks(normed, state.mask_features, state.sizes[0])
        earlier: list[tuple[torch.Tensor, torch.Tensor]] = []
        layers = _decoder_layers(tm)
        last = len(layers) - 1
        for idx, layer in enumerate(layers):
            if self.training and dec.layerdrop > 0 and torch.rand([]) < dec.layerdrop:
                continue
            if auxiliary:
                earlier.append((self.classify(normed.transpose(0, 1), cond_embeds), mask_logits))
            assert blocked is not None
            hidden = _decoder_layer(
                layer,
                hidden,
                query_position,
                state.keys[idx],
                state.values[idx],
                _unblock_empty_rows(blocked),
            )
            normed = dec.layernorm(hidden)
            target = None if idx == last else state.sizes[(idx + 1) % dec.num_feature_levels]
            mask_logits, blocked = self._predict_masks(normed, state.mask_features, target)
        query_states = normed.transpose(0, 1)
        return DecoderOutput(
            class_logits=self.classify(query_states, cond_embeds),
            mask_logits=mask_logits,
            query_states=query_states,
            auxiliary=tuple(earlier),
        )

    def _predict_masks(
        self, normed: torch.Tensor, mask_features: torch.Tensor, target: tuple[int, int] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Mask2FormerMaskPredictor`` without the per-head copies of its attention mask.

        ``normed``: ``(Q, B, D)`` LayerNorm-ed query states; ``mask_features``: ``(B, D, h, w)``.
        Returns the mask logits ``(B, Q, h, w)`` and, for a ``target`` level size, where the
        queries may not attend: ``(B, Q, h'·w')`` bool, ``sigmoid(resized logits) < 0.5``.
        """
        embedded = self.decoder.decoder.mask_predictor.mask_embedder(normed.transpose(0, 1))
        logits = torch.einsum("bqc, bchw -> bqhw", embedded, mask_features)
        if target is None:
            return logits, None
        if tuple(logits.shape[-2:]) == target:
            resized = logits  # what a same-size bilinear resize returns: a copy
        else:
            resized = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
        return logits, (resized.sigmoid().flatten(2) < 0.5).detach()

    def classify(self, query_states: torch.Tensor, cond_embeds: torch.Tensor) -> torch.Tensor:
        """Open-vocabulary logits ``clamp(exp(logit_scale)·cos(q, c), ±500)``: ``(B, Q, C + 1)``."""
        q = F.normalize(query_states, dim=-1)
        c = F.normalize(cond_embeds.to(q.dtype), dim=-1)
        logits = self.logit_scale.exp() * torch.einsum("bqd,bcd->bqc", q, c)
        return logits.clamp(min=-500, max=500)


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageFeatures:
    """Everything X-SAM computes from the image alone (what the engine caches per image).

    ``image_tokens``: ``(1, Ns + Nm, D_llm)``: projected SigLIP then SAM tokens, the LLM inputs
    that replace ``<image>``. ``token_map``: ``(side, side, D_llm)``: the SAM tokens on their grid,
    for the visual-prompt sampler. ``pixels``: the pixel decoder outputs.
    """

    image_tokens: torch.Tensor
    token_map: torch.Tensor
    pixels: PixelDecoderOutput

    def nbytes(self) -> int:
        """Bytes held by the tensors (``token_map`` is a view of ``image_tokens``)."""
        tensors = [self.image_tokens, self.pixels.mask_features, *self.pixels.multi_scale]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class StageOutputs:
    """Intermediate tensors of :meth:`XSamModel.encode_image`, for parity checks and benchmarks."""

    siglip_selected: torch.Tensor
    visual_tokens: torch.Tensor
    sam_states: list[torch.Tensor]
    sam_tokens: torch.Tensor
    connector: list[torch.Tensor]


class XSamModel(nn.Module):
    """X-SAM. Attribute names equal the official state-dict prefixes (release naming)."""

    def __init__(self, config: XSamConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.llm = Phi3ForCausalLM(config.phi3_config(attn_implementation))
        self.visual_encoder = SiglipVisionModel(config.siglip_config())
        self.segmentor = XSegmentor(config)
        self.visual_projector = XSamProjector(config.visual_projector)
        self.seg_projector = XSamProjector(config.seg_projector)
        self.llm_projector = XSamProjector(config.llm_projector)
        self.seg_connector = SegConnector(config.connector)
        self.bg_embeds = nn.Embedding(1, config.llm_projector.out_features)

    # ---- image branch ----------------------------------------------------------------------

    def encode_image(
        self, siglip_pixels: torch.Tensor, sam_pixels: torch.Tensor, keep_stages: bool = False
    ) -> tuple[ImageFeatures, StageOutputs | None]:
        """Both encoders, projectors, connector and pixel decoder for one image.

        ``siglip_pixels``: ``(1, 3, s, s)`` (384² release); ``sam_pixels``: ``(1, 3, S, S)``
        padded SAM frame (1024²). Both normalised, in the model dtype. With ``keep_stages`` the
        intermediate tensors are returned too.
        """
        siglip = self.visual_encoder(siglip_pixels, output_hidden_states=True)
        selected = siglip.hidden_states[self.config.visual_select_layer]
        visual_tokens = self.visual_projector(selected)

        states = self.segmentor.encode(sam_pixels)
        sam_tokens = self.seg_projector(states[self.config.seg_projector_layer])
        connector = self.seg_connector([states[i] for i in self.config.seg_select_layers])
        decoder_dtype = self.segmentor.pixel_decoder.mask_projection.weight.dtype
        pixels = self.segmentor.decode_pixels([c.to(decoder_dtype) for c in connector])

        side = math.isqrt(sam_tokens.shape[1])
        features = ImageFeatures(
            image_tokens=torch.cat([visual_tokens, sam_tokens], dim=1),
            token_map=sam_tokens[0].reshape(side, side, -1),
            pixels=pixels,
        )
        stages = StageOutputs(selected, visual_tokens, states, sam_tokens, connector) if keep_stages else None
        return features, stages

    def region_embeddings(self, features: ImageFeatures, points_yx: torch.Tensor) -> torch.Tensor:
        """``<region>`` embeddings ``(N, D_llm)`` from sampled prompt points ``(N, P, 2)``
        (``(row, col) / S``, padded SAM frame): see :func:`sample_region_embeddings`."""
        return sample_region_embeddings(features.token_map, points_yx.to(features.token_map.device))

    # ---- language branch --------------------------------------------------------------------

    def embed_ids(
        self,
        input_ids: torch.Tensor,
        image_tokens: torch.Tensor | None,
        region_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LLM input embeddings for ``input_ids`` ``(T,)`` (int64, one sequence).

        Each ``<image>`` id (−200) becomes the ``(Ns + Nm)`` rows of ``image_tokens[0]`` and the
        k-th ``<region>`` id (−300) becomes ``region_embeds[k]``; other ids go through the
        embedding table. Returns ``(1, L, D_llm)``, ``L = T + n_image·(Ns + Nm − 1)``.
        """
        ids = self.config.token_ids
        table = self.llm.get_input_embeddings()
        text = table(input_ids.clamp(min=0))
        parts: list[torch.Tensor] = []
        region_index = 0
        start = 0
        special = ((input_ids == ids.image) | (input_ids == ids.region)).nonzero().flatten().tolist()
        for pos in special:
            parts.append(text[start:pos])
            if int(input_ids[pos]) == ids.image:
                if image_tokens is None:
                    raise ValueError("the prompt has an <image> placeholder but no image tokens were given")
                parts.append(image_tokens[0].to(text.dtype))
            else:
                if region_embeds is None or region_index >= region_embeds.shape[0]:
                    raise ValueError("the prompt has more <region> placeholders than region embeddings")
                parts.append(region_embeds[region_index : region_index + 1].to(text.dtype))
                region_index += 1
            start = pos + 1
        parts.append(text[start:])
        return torch.cat(parts, dim=0).unsqueeze(0)

    def run_llm(self, inputs_embeds: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """Phi-3 over ``inputs_embeds`` ``(1, L, D_llm)``, continuing ``cache`` (which it extends).

        Returns the last hidden state after the final RMSNorm, ``(1, L, D_llm)``.
        """
        out = self.llm.model(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``E = llm_projector(hidden)``: ``(…, D_llm) → (…, D)`` in the decoder's dtype."""
        return self.llm_projector(hidden)

    # ---- decoder ----------------------------------------------------------------------------

    def with_background(self, cond_embeds: torch.Tensor) -> torch.Tensor:
        """Append ``bg_embeds`` as the last class: ``(C, D) → (1, C + 1, D)``."""
        bg = self.bg_embeds.weight.to(cond_embeds.dtype)
        return torch.cat([cond_embeds, bg], dim=0).unsqueeze(0)

    def prepare_decoder(self, features: ImageFeatures) -> DecoderImageState:
        """The decoder's image-only state (cross-attention keys and values of every layer):
        computed once per image, valid while the decoder weights are unchanged."""
        return self.segmentor.prepare_decoder(features.pixels)

    def decode(
        self,
        image: ImageFeatures | DecoderImageState,
        seg_embed: torch.Tensor,
        cond_embeds: torch.Tensor,
    ) -> DecoderOutput:
        """One decoder pass: ``seg_embed`` ``(D,)``, ``cond_embeds`` ``(C + 1, D)`` incl. background.

        ``image``: the image features, or their :meth:`prepare_decoder` state (a cached click)."""
        pixels = image.pixels if isinstance(image, ImageFeatures) else image
        dtype = pixels.mask_features.dtype
        return self.segmentor.decode_queries(
            pixels, seg_embed.reshape(1, 1, -1).to(dtype), cond_embeds.unsqueeze(0).to(dtype)
        )


def upsample_mask_logits(mask_logits: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (``align_corners=False``) resize of ``(B, Q, h, w)`` logits to ``(B, Q, size, size)``,
    the padded SAM frame, in fp32."""
    return F.interpolate(mask_logits.float(), size=(size, size), mode="bilinear", align_corners=False)


def index_mean(embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``embeds`` ``(L, D)`` over the positions sharing each id ``≥ 0`` of ``ids`` ``(L,)``,
    in ascending id order: ``(K, D)`` (``K = 0`` when no id is set)."""
    values = sorted({int(i) for i in ids.tolist() if i >= 0})
    if not values:
        return embeds.new_zeros((0, embeds.shape[-1]))
    return torch.stack([embeds[ids == v].mean(dim=0) for v in values])
