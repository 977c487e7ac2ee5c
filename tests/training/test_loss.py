"""The Mask2Former set loss: matching finds the right pairs, and the loss trains."""

from __future__ import annotations

import torch

from xsam_backend.training.loss import (
    LossWeights,
    deep_supervision_loss,
    hungarian_match,
    mask2former_loss,
    point_sample,
    uncertain_points,
)

WEIGHTS = LossWeights(num_points=2048)


def targets() -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(2, 32, 32)
    masks[0, :16, :16] = 1
    masks[1, 16:, 8:30] = 1
    return torch.tensor([1, 0]), masks


def logits_for(masks: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Confident mask logits at ``size``² for ``masks``."""
    small = torch.nn.functional.interpolate(masks[:, None], size=(size, size), mode="nearest")[:, 0]
    return (small * 2 - 1) * 12


def test_point_sample_reads_the_padded_frame() -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 3] = 1.0  # top-right cell
    points = torch.tensor([[[0.875, 0.125], [0.125, 0.875]]])  # centres of (row 0, col 3) and (row 3, col 0)
    assert point_sample(maps, points).tolist() == [[1.0, 0.0]]
    drawn = uncertain_points(torch.randn(3, 8, 8), WEIGHTS, torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 2048, 2) and bool(((drawn >= 0) & (drawn <= 1)).all())


def test_matching_pairs_each_instance_with_its_query() -> None:
    classes, masks = targets()
    mask_logits = torch.full((5, 16, 16), -12.0)
    mask_logits[3] = logits_for(masks)[0]
    mask_logits[1] = logits_for(masks)[1]
    class_logits = torch.zeros(5, 3)
    class_logits[3, 1] = class_logits[1, 0] = 8.0
    queries, instances = hungarian_match(
        class_logits, mask_logits, classes, masks, WEIGHTS, torch.Generator().manual_seed(0)
    )
    assert dict(zip(instances.tolist(), queries.tolist())) == {0: 3, 1: 1}


def test_right_answer_costs_less_than_a_swapped_one() -> None:
    classes, masks = targets()
    mask_logits = torch.full((4, 16, 16), -12.0)
    mask_logits[:2] = logits_for(masks)
    class_logits = torch.full((4, 3), -4.0)
    class_logits[0, 1] = class_logits[1, 0] = 8.0
    class_logits[2:, 2] = 8.0  # the other queries say background
    good = mask2former_loss(
        class_logits, mask_logits, classes, masks, WEIGHTS, torch.Generator().manual_seed(0)
    )
    wrong_class = class_logits.clone()
    wrong_class[0, 1], wrong_class[0, 0] = -4.0, 8.0
    bad = mask2former_loss(
        wrong_class, mask_logits, classes, masks, WEIGHTS, torch.Generator().manual_seed(0)
    )
    assert good.cls < 0.01 and good.dice < 0.2
    assert bad.cls > 1.0 and bad.total > good.total + 2.0


def test_no_instance_pushes_every_query_to_background() -> None:
    class_logits = torch.zeros(4, 3, requires_grad=True)
    terms = mask2former_loss(
        class_logits, torch.zeros(4, 8, 8), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 32, 32), WEIGHTS
    )
    terms.total.backward()
    assert terms.mask == 0.0 and terms.dice == 0.0
    assert class_logits.grad is not None and bool((class_logits.grad[:, 2] < 0).all())


def test_gradient_descent_on_free_logits_reduces_the_loss() -> None:
    classes, masks = targets()
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.zeros(6, 3, requires_grad=True)
    mask_logits = torch.zeros(6, 16, 16, requires_grad=True)
    optimizer = torch.optim.Adam([class_logits, mask_logits], lr=0.1)
    losses = []
    for _ in range(60):
        terms = mask2former_loss(class_logits, mask_logits, classes, masks, WEIGHTS, generator)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(float(terms.total.detach()))
    assert losses[-1] < 0.2 * losses[0]


def test_deep_supervision_adds_every_intermediate_prediction_matched_on_its_own() -> None:
    classes, masks = targets()
    gen = torch.Generator().manual_seed(3)
    predictions = [(torch.randn(6, 3, generator=gen), torch.randn(6, 16, 16, generator=gen)) for _ in range(4)]
    # the final prediction is right: its own matching must find that, whatever the earlier ones say
    predictions[-1][1][:2] = logits_for(masks)
    deep = deep_supervision_loss(predictions, classes, masks, WEIGHTS, torch.Generator().manual_seed(0))
    replay = torch.Generator().manual_seed(0)
    parts = [mask2former_loss(c, m, classes, masks, WEIGHTS, replay) for c, m in predictions]
    assert deep.layers == 4
    torch.testing.assert_close(deep.total, sum(p.total for p in parts))
    assert (deep.cls, deep.mask, deep.dice) == (parts[-1].cls, parts[-1].mask, parts[-1].dice)

    final_only = LossWeights(num_points=2048, auxiliary=False)
    last = deep_supervision_loss(predictions, classes, masks, final_only, torch.Generator().manual_seed(0))
    alone = mask2former_loss(*predictions[-1], classes, masks, final_only, torch.Generator().manual_seed(0))
    assert last.layers == 1
    torch.testing.assert_close(last.total, alone.total)
    assert LossWeights.from_config({"use_auxiliary_loss": False}).auxiliary is False
    assert LossWeights.from_config({}).auxiliary is True
