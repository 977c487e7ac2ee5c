from __future__ import annotations

import numpy as np

from xsam_backend.engines.frame import fit_prompt, fit_result
from xsam_backend.masks import decode_compact_rle, encode_compact_rle
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.segment import EngineResult, Segment


def test_prompt_in_the_same_frame_is_unchanged():
    prompt = Prompt(Task.INTERACTIVE, regions=(VisualRegion("point", (3.0, 4.0)),), image_size=(10, 20))
    assert fit_prompt(prompt, (10, 20)) is prompt


def test_prompt_is_scaled_into_the_decoded_image():
    scribble = np.zeros((10, 20), bool)
    scribble[2:4, 5:15] = True
    prompt = Prompt(
        Task.INTERACTIVE,
        regions=(VisualRegion("point", (10.0, 5.0)), VisualRegion("box", (0.0, 0.0, 20.0, 10.0)),
                 VisualRegion("scribble", mask=encode_compact_rle(scribble))),
        negative_points=((2.0, 8.0),),
        image_size=(10, 20),
    )
    fitted = fit_prompt(prompt, (20, 60))
    assert fitted.image_size == (20, 60)
    assert fitted.regions[0].coords == (30.0, 10.0)
    assert fitted.regions[1].coords == (0.0, 0.0, 60.0, 20.0)
    assert fitted.negative_points == ((6.0, 16.0),)
    big = decode_compact_rle(fitted.regions[2].mask)
    assert big.shape == (20, 60) and big[4:8, 15:45].all() and big.sum() == 4 * 30


def test_result_masks_go_back_to_label_studio_frame():
    mask = np.zeros((20, 60), bool)
    mask[:10, :30] = True
    result = EngineResult((Segment(mask, "a", 0.5),), "v", "e")
    back = fit_result(result, (10, 20))
    assert back.segments[0].mask.shape == (10, 20)
    assert back.segments[0].mask[:5, :10].all() and back.segments[0].mask.sum() == 50
    assert fit_result(result, None) is result
