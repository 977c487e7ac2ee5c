"""X-SAM modules against hand-computed values and the official implementation's recorded stages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from repo_paths import SHARED
from safetensors.torch import load_file
from transformers.models.mask2former.modeling_mask2former import Mask2FormerMaskedAttentionDecoderOutput

from xsam_backend.xsam.checkpoint import load_model
from xsam_backend.xsam.config import XSamConfig
from xsam_backend.xsam.modeling import (
    ChannelsFirstLayerNorm,
    DecoderOutput,
    ImageFeatures,
    PixelDecoderOutput,
    XSamModel,
    XSegmentor,
    index_mean,
    pixel_shuffle,
    sample_region_embeddings,
)

PARITY_DIR = Path(os.environ.get("XSAM_PARITY_DIR", SHARED / "xsam_parity"))
needs_bundle = pytest.mark.skipif(
    not (PARITY_DIR / "model").is_dir(), reason=f"no parity bundle at {PARITY_DIR}"
)


def test_space_to_depth_puts_patch_element_dy_dx_in_block_2dy_plus_dx() -> None:
    x = torch.arange(4.0).reshape(1, 2, 2, 1)  # value = 2 * row + col
    out = pixel_shuffle(x, 0.5)
    assert out.shape == (1, 1, 1, 4)
    assert out.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]  # block 2*dy+dx holds element (dy, dx)


def test_depth_to_space_reads_block_2dx_plus_dy() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 1, 4)
    out = pixel_shuffle(x, 2)[0, :, :, 0]
    # (dy, dx) takes block 2*dx + dy: (0,1) <- block 2, (1,0) <- block 1
    assert out.tolist() == [[0.0, 2.0], [1.0, 3.0]]


def test_x_sam_shuffle_is_not_torch_pixel_unshuffle() -> None:
    x = torch.randn(1, 4, 4, 3)
    ours = pixel_shuffle(x, 0.5).permute(0, 3, 1, 2)
    theirs = F.pixel_unshuffle(x.permute(0, 3, 1, 2), 2)
    assert ours.shape == theirs.shape
    assert not torch.equal(ours, theirs)


def test_channels_first_layout_matches_channels_last() -> None:
    x = torch.randn(2, 8, 6, 4)
    a = pixel_shuffle(x, 0.5, channels_last=False)
    b = pixel_shuffle(x.permute(0, 2, 3, 1), 0.5).permute(0, 3, 1, 2)
    assert torch.equal(a, b)
    assert pixel_shuffle(x, 1) is x
    with pytest.raises(ValueError, match="0.5, 1 and 2"):
        pixel_shuffle(x, 4)


def test_space_to_depth_pads_odd_sizes() -> None:
    assert pixel_shuffle(torch.ones(1, 3, 5, 2), 0.5).shape == (1, 2, 3, 8)


def test_layer_norm_normalises_in_fp32_and_returns_input_dtype() -> None:
    norm = ChannelsFirstLayerNorm(4)
    x = torch.randn(1, 4, 3, 3) * 100 + 7
    y = norm(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(1, 3, 3), atol=1e-5, rtol=0)
    assert norm.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_sampler_takes_the_max_over_points() -> None:
    token_map = torch.zeros(3, 3, 2)
    token_map[1, 2] = torch.tensor([5.0, -1.0])
    # align_corners=True: pixel row/col r / S maps to feature index r / S * (side - 1)
    points = torch.tensor([[[0.5, 1.0], [0.0, 0.0]]])
    out = sample_region_embeddings(token_map, points)
    assert out.tolist() == [[5.0, 0.0]]


def test_index_mean_groups_by_id_in_ascending_order() -> None:
    embeds = torch.tensor([[1.0], [3.0], [10.0], [20.0]])
    ids = torch.tensor([1, 1, 0, -1])
    assert index_mean(embeds, ids).flatten().tolist() == [10.0, 2.0]
    assert index_mean(embeds, torch.full((4,), -1)).shape == (0, 1)


@pytest.fixture(scope="module")
def tiny_model() -> XSamModel:
    config = XSamConfig.from_file(PARITY_DIR / "model")
    return load_model(config, PARITY_DIR / "model")


@needs_bundle
def test_decoder_with_seg_matches_official_when_fed_recorded_inputs(tiny_model: XSamModel) -> None:
    """Against the official outputs recorded on another machine: equal up to the CPU's kernels
    (bitwise where they are the same; about 5e-6 apart on AVX-512). The same-machine comparison
    with the stock decoder below stays bitwise."""
    expected = load_file(str(PARITY_DIR / "cases" / "refseg" / "expected.safetensors"))
    pixels = PixelDecoderOutput(
        expected["pixel_decoder.mask_features"],
        [expected[f"pixel_decoder.multi_scale_features{i}"] for i in range(3)],
    )
    with torch.no_grad():
        out = tiny_model.segmentor.decode_queries(pixels, expected["seg_embeds"], expected["cond_embeds"])
    exact = {"atol": 2e-5, "rtol": 1e-5}
    torch.testing.assert_close(out.mask_logits, expected["decoder.masks_queries_logits_lowres"], **exact)
    torch.testing.assert_close(out.query_states, expected["decoder.last_query_states"], **exact)
    torch.testing.assert_close(out.class_logits, expected["class_queries_logits"], **exact)


@needs_bundle
def test_image_stages_match_official_when_fed_recorded_pixels(tiny_model: XSamModel) -> None:
    expected = load_file(str(PARITY_DIR / "cases" / "intseg_box" / "expected.safetensors"))
    with torch.no_grad():
        features, stages = tiny_model.encode_image(
            expected["input.siglip_pixel_values"], expected["input.sam_pixel_values"], keep_stages=True
        )
        regions = tiny_model.region_embeddings(features, expected["sampler.points_yx_norm"])
    assert stages is not None
    # recorded on another machine: equal up to the CPU's kernels (bitwise where they are the same)
    torch.testing.assert_close(
        stages.siglip_selected, expected["siglip.hidden_states_selected"], atol=2e-5, rtol=1e-5
    )
    torch.testing.assert_close(stages.visual_tokens, expected["visual_projector.out"], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(
        torch.stack(stages.sam_states), expected["sam.hidden_states"], atol=2e-5, rtol=1e-5
    )
    torch.testing.assert_close(stages.sam_tokens, expected["seg_projector.out"], atol=2e-5, rtol=1e-5)
    for i, out in enumerate(stages.connector):
        torch.testing.assert_close(out, expected[f"seg_connector.out{i}"], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(regions, expected["sampler.region_embeds"], atol=2e-5, rtol=1e-5)
    # the connector fed the recorded SAM layers
    states = list(expected["sam.hidden_states"])
    with torch.no_grad():
        fed = tiny_model.seg_connector([states[i] for i in tiny_model.config.seg_select_layers])
    for i, out in enumerate(fed):
        torch.testing.assert_close(out, expected[f"seg_connector.out{i}"], atol=2e-5, rtol=1e-5)


@needs_bundle
def test_a_model_built_without_weights_holds_no_leftover_memory() -> None:
    """The stock pixel decoder's level_embed comes uninitialised; X-SAM's init zeroes it (a
    random-weight model computed NaN masks on some runs before)."""
    config = XSamConfig.from_file(PARITY_DIR / "model")
    for _ in range(3):
        model = XSamModel(config)
        assert torch.equal(
            model.segmentor.pixel_decoder.level_embed,
            torch.zeros_like(model.segmentor.pixel_decoder.level_embed),
        )
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@needs_bundle
def test_embed_ids_splices_image_and_regions(tiny_model: XSamModel) -> None:
    ids = tiny_model.config.token_ids
    image_tokens = torch.randn(1, tiny_model.config.num_image_tokens, tiny_model.config.llm_hidden_size)
    regions = torch.randn(2, tiny_model.config.llm_hidden_size)
    input_ids = torch.tensor([ids.bos, ids.image, 5, ids.region, ids.region, 7])
    with torch.no_grad():
        out = tiny_model.embed_ids(input_ids, image_tokens, regions)[0]
        table = tiny_model.llm.get_input_embeddings().weight
    n = image_tokens.shape[1]
    assert out.shape[0] == 5 + n
    assert torch.equal(out[1 : 1 + n], image_tokens[0])
    assert torch.equal(out[1 + n], table[5])
    assert torch.equal(out[2 + n : 4 + n], regions)
    with pytest.raises(ValueError, match="more <region>"):
        tiny_model.embed_ids(input_ids, image_tokens, regions[:1])
    with pytest.raises(ValueError, match="no image tokens"):
        tiny_model.embed_ids(input_ids, None, regions)


def _stock_decode(
    model: XSamModel | XSegmentor, pixels: PixelDecoderOutput, seg_embeds: torch.Tensor
) -> DecoderOutput:
    """The decoder as the stock ``Mask2FormerTransformerModule.forward`` runs it, plus ``<SEG>``."""
    out = _stock_decoder_output(model, pixels, seg_embeds)
    states = out.intermediate_hidden_states[-1].transpose(0, 1)
    return DecoderOutput(states.new_zeros(0), out.masks_queries_logits[-1], states)


def _stock_decoder_output(
    model: XSamModel | XSegmentor, pixels: PixelDecoderOutput, seg_embeds: torch.Tensor
) -> Mask2FormerMaskedAttentionDecoderOutput:
    """The stock ``Mask2FormerMaskedAttentionDecoder`` output (every intermediate state and mask)."""
    tm = (model.segmentor if isinstance(model, XSamModel) else model).decoder
    multi_scale, positions, sizes = [], [], []
    for i, feature in enumerate(pixels.multi_scale):
        sizes.append(feature.shape[-2:])
        pos = tm.position_embedder(feature.shape, feature.device, feature.dtype, None).flatten(2)
        positions.append(pos.permute(2, 0, 1))
        proj = tm.input_projections[i](feature).flatten(2) + tm.level_embed.weight[i][None, :, None]
        multi_scale.append(proj.permute(2, 0, 1))
    batch = multi_scale[0].shape[1]
    query_position = tm.queries_embedder.weight.unsqueeze(1).repeat(1, batch, 1)
    query_features = tm.queries_features.weight.unsqueeze(1).repeat(1, batch, 1) + seg_embeds.transpose(0, 1)
    out = tm.decoder(
        inputs_embeds=query_features,
        multi_stage_positional_embeddings=positions,
        pixel_embeddings=pixels.mask_features,
        encoder_hidden_states=multi_scale,
        query_position_embeddings=query_position,
        feature_size_list=sizes,
        return_dict=True,
    )
    return out


def _random_pixels(
    model: XSamModel | XSegmentor, batch: int, seed: int, side: int = 128
) -> PixelDecoderOutput:
    """Random pixel decoder output: mask features at ``side``, the levels at side/4, /2, /1."""
    gen = torch.Generator().manual_seed(seed)
    dim = (model.segmentor if isinstance(model, XSamModel) else model).decoder.queries_features.weight.shape[
        1
    ]
    multi_scale = [torch.randn(batch, dim, side // s, side // s, generator=gen) for s in (4, 2, 1)]
    return PixelDecoderOutput(torch.randn(batch, dim, side, side, generator=gen), multi_scale)


@needs_bundle
@pytest.mark.parametrize("batch", [1, 2])
def test_prepared_decoder_state_decodes_bitwise_as_the_stock_decoder(
    tiny_model: XSamModel, batch: int
) -> None:
    dim = tiny_model.segmentor.decoder.queries_features.weight.shape[1]
    pixels = _random_pixels(tiny_model, batch, seed=batch)
    seg = torch.randn(batch, 1, dim, generator=torch.Generator().manual_seed(7)) * 3
    conds = torch.randn(batch, 3, dim)
    with torch.no_grad():
        want = _stock_decode(tiny_model, pixels, seg)
        state = tiny_model.segmentor.prepare_decoder(pixels)
        got = tiny_model.segmentor.decode_queries(state, seg, conds)
        again = tiny_model.segmentor.decode_queries(state, seg, conds)
        direct = tiny_model.segmentor.decode_queries(pixels, seg, conds)
    assert torch.equal(got.mask_logits, want.mask_logits)
    assert torch.equal(got.query_states, want.query_states)
    assert torch.equal(again.mask_logits, got.mask_logits)  # the state is read, never written
    assert torch.equal(direct.class_logits, got.class_logits)
    assert torch.equal(got.class_logits, tiny_model.segmentor.classify(want.query_states, conds))


@needs_bundle
def test_auxiliary_predictions_are_the_stock_intermediate_ones(tiny_model: XSamModel) -> None:
    """Deep supervision reads every intermediate prediction of the stock decoder (the initial one
    and one per layer but the last), classified by the same open-vocabulary head."""
    dim = tiny_model.segmentor.decoder.queries_features.weight.shape[1]
    pixels = _random_pixels(tiny_model, 1, seed=11)
    seg = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(5)) * 3
    conds = torch.randn(1, 4, dim)
    tm = tiny_model.segmentor.decoder
    with torch.no_grad():
        plain = tiny_model.segmentor.decode_queries(pixels, seg, conds)
        deep = tiny_model.segmentor.decode_queries(pixels, seg, conds, auxiliary=True)
        stock = _stock_decoder_output(tiny_model, pixels, seg)
    assert plain.auxiliary == ()
    layers = len(tm.decoder.layers)
    assert len(deep.auxiliary) == layers == len(stock.masks_queries_logits) - 1
    assert torch.equal(deep.mask_logits, plain.mask_logits)
    assert torch.equal(deep.class_logits, plain.class_logits)
    for (classes, masks), states, want in zip(
        deep.auxiliary, stock.intermediate_hidden_states, stock.masks_queries_logits
    ):
        torch.testing.assert_close(masks, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            classes, tiny_model.segmentor.classify(states.transpose(0, 1), conds), atol=1e-5, rtol=1e-5
        )


@needs_bundle
def test_decoder_state_holds_one_key_and_value_per_layer_at_its_level(tiny_model: XSamModel) -> None:
    pixels = _random_pixels(tiny_model, 1, seed=3)
    with torch.no_grad():
        state = tiny_model.prepare_decoder(ImageFeatures(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), pixels))
    layers = tiny_model.segmentor.decoder.decoder.layers
    heads = tiny_model.segmentor.decoder.decoder.layers[0].cross_attn.num_heads
    dim = pixels.mask_features.shape[1]
    assert state.sizes == [tuple(f.shape[-2:]) for f in pixels.multi_scale]
    assert len(state.keys) == len(state.values) == len(layers)
    for idx, (k, v) in enumerate(zip(state.keys, state.values)):
        h, w = state.sizes[idx % 3]
        assert k.shape == v.shape == (heads, h * w, dim // heads)
    elements = sum(2 * h * w * dim for h, w in (state.sizes[i % 3] for i in range(len(layers))))
    assert state.nbytes() == elements * 4


@needs_bundle
def test_a_query_masked_everywhere_attends_everywhere(tiny_model: XSamModel) -> None:
    """The stock rule: a query whose predicted mask is empty at a level is not masked at all."""
    pixels = _random_pixels(tiny_model, 1, seed=5)
    dim = pixels.mask_features.shape[1]
    seg = torch.randn(1, 1, dim)
    tm = tiny_model.segmentor.decoder
    with torch.no_grad():
        normed = tm.decoder.layernorm(tm.queries_features.weight + seg[0])
        first_logits = tm.decoder.mask_predictor.mask_embedder(normed).sum(-1)  # (Q,) per unit feature
        # Constant pixel embeddings give every query a constant first mask; the sign is chosen so
        # that the first query's logit is negative: it is masked at every position.
        sign = -1.0 if first_logits[0] > 0 else 1.0
        pixels.mask_features = torch.full_like(pixels.mask_features, sign)
        want = _stock_decode(tiny_model, pixels, seg)
        got = tiny_model.segmentor.decode_queries(pixels, seg, torch.randn(1, 2, dim))
    assert sign * first_logits[0] < 0
    assert torch.isfinite(got.query_states).all()
    assert torch.equal(got.mask_logits, want.mask_logits)
    assert torch.equal(got.query_states, want.query_states)


@needs_bundle
def test_decoder_trains_through_the_prepared_state_like_the_stock_decoder(tiny_model: XSamModel) -> None:
    """Fine-tuning backpropagates through the keys and values into the decoder and the pixels."""
    dim = tiny_model.segmentor.decoder.queries_features.weight.shape[1]
    seg = torch.randn(1, 1, dim)
    grads = []
    for decode in (
        lambda p: tiny_model.segmentor.decode_queries(p, seg, torch.randn(1, 2, dim)),
        lambda p: _stock_decode(tiny_model, p, seg),
    ):
        pixels = _random_pixels(tiny_model, 1, seed=11)
        for t in (pixels.mask_features, *pixels.multi_scale):
            t.requires_grad_(True)
        tiny_model.segmentor.decoder.zero_grad()
        decode(pixels).mask_logits.square().mean().backward()
        cross = tiny_model.segmentor.decoder.decoder.layers[-1].cross_attn
        assert cross.in_proj_weight.grad is not None and pixels.multi_scale[0].grad is not None
        grads.append((cross.in_proj_weight.grad.clone(), pixels.multi_scale[0].grad.clone()))
    tiny_model.segmentor.decoder.zero_grad()
    for ours, stock in zip(*grads):
        assert ours.abs().sum() > 0
        torch.testing.assert_close(ours, stock, atol=1e-6, rtol=1e-5)


@needs_bundle
def test_release_width_decoder_is_bitwise_the_stock_decoder() -> None:
    """The release's decoder shape (256 wide, 8 heads, 200 queries, 9 layers) on small maps."""
    data = json.loads((PARITY_DIR / "model" / "config.json").read_text())
    data["mask2former_config"].update(
        feature_size=256,
        mask_feature_size=256,
        hidden_dim=256,
        num_attention_heads=8,
        num_queries=200,
        decoder_layers=10,
        dim_feedforward=2048,
    )
    torch.manual_seed(0)
    segmentor = XSegmentor(XSamConfig.from_dict(data)).eval()
    pixels = _random_pixels(segmentor, 1, seed=2, side=32)
    seg = torch.randn(1, 1, 256)
    with torch.no_grad():
        want = _stock_decode(segmentor, pixels, seg)
        got = segmentor.decode_queries(pixels, seg, torch.randn(1, 4, 256))
    assert got.mask_logits.shape == (1, 200, 32, 32)
    assert torch.equal(got.mask_logits, want.mask_logits)
    assert torch.equal(got.query_states, want.query_states)
