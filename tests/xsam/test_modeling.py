"""X-SAM modules against hand-computed values and the official implementation's recorded stages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from repo_paths import SHARED
from safetensors.torch import load_file

from xsam_backend.xsam.checkpoint import load_model
from xsam_backend.xsam.config import XSamConfig
from xsam_backend.xsam.modeling import (
    ChannelsFirstLayerNorm,
    PixelDecoderOutput,
    XSamModel,
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
def test_decoder_with_seg_is_bitwise_official_when_fed_recorded_inputs(tiny_model: XSamModel) -> None:
    expected = load_file(str(PARITY_DIR / "cases" / "refseg" / "expected.safetensors"))
    pixels = PixelDecoderOutput(
        expected["pixel_decoder.mask_features"],
        [expected[f"pixel_decoder.multi_scale_features{i}"] for i in range(3)],
    )
    with torch.no_grad():
        out = tiny_model.segmentor.decode_queries(pixels, expected["seg_embeds"], expected["cond_embeds"])
    assert torch.equal(out.mask_logits, expected["decoder.masks_queries_logits_lowres"])
    assert torch.equal(out.query_states, expected["decoder.last_query_states"])
    assert torch.equal(out.class_logits, expected["class_queries_logits"])


@needs_bundle
def test_image_stages_match_official_when_fed_recorded_pixels(tiny_model: XSamModel) -> None:
    expected = load_file(str(PARITY_DIR / "cases" / "intseg_box" / "expected.safetensors"))
    with torch.no_grad():
        features, stages = tiny_model.encode_image(
            expected["input.siglip_pixel_values"], expected["input.sam_pixel_values"], keep_stages=True
        )
        regions = tiny_model.region_embeddings(features, expected["sampler.points_yx_norm"])
    assert stages is not None
    assert torch.equal(stages.siglip_selected, expected["siglip.hidden_states_selected"])
    assert torch.equal(stages.visual_tokens, expected["visual_projector.out"])
    torch.testing.assert_close(
        torch.stack(stages.sam_states), expected["sam.hidden_states"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(stages.sam_tokens, expected["seg_projector.out"], atol=1e-6, rtol=0)
    for i, out in enumerate(stages.connector):
        torch.testing.assert_close(out, expected[f"seg_connector.out{i}"], atol=1e-5, rtol=0)
    torch.testing.assert_close(regions, expected["sampler.region_embeds"], atol=1e-6, rtol=0)
    # the connector fed the recorded SAM layers is exact
    states = list(expected["sam.hidden_states"])
    with torch.no_grad():
        fed = tiny_model.seg_connector([states[i] for i in tiny_model.config.seg_select_layers])
    for i, out in enumerate(fed):
        assert torch.equal(out, expected[f"seg_connector.out{i}"])


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
