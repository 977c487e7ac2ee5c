"""Score calibration (Platt scaling on hold-out hits) and the per-project serving resolution."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from xsam_backend.training.evaluation import ImagePrediction, ImageTruth
from xsam_backend.training.scores import ScoreCalibration, fit_calibration, match_hits
from xsam_backend.training.serving import ServingVersions
from xsam_backend.training.versions import ProjectVersions


def box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((20, 20), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_match_hits_counts_each_annotation_once() -> None:
    truth = ImageTruth(np.stack([box(0, 0, 10, 10)]), ("cat",))
    pred = ImagePrediction(
        np.stack([box(0, 0, 10, 10), box(0, 0, 10, 9), box(10, 10, 20, 20), box(0, 0, 10, 10)]),
        ("cat", "cat", "cat", "dog"),
        np.array([0.9, 0.8, 0.7, 0.95]),
    )
    scores, hits = match_hits([pred], [truth])
    assert scores.tolist() == [0.95, 0.9, 0.8, 0.7]
    assert hits.tolist() == [False, True, False, False]  # the duplicate and the wrong label miss


def test_fit_recovers_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.05, 0.95, 4000)
    # the truth: a hit is much rarer than the raw score says (true logit = logit(raw) / 2 - 1)
    true_p = 1 / (1 + np.exp(-(np.log(raw / (1 - raw)) / 2 - 1)))
    hits = rng.uniform(size=raw.shape) < true_p
    calibration = fit_calibration(raw, hits)
    assert calibration.a == pytest.approx(0.5, abs=0.1) and calibration.b == pytest.approx(-1.0, abs=0.15)
    assert calibration.apply(0.9) < 0.9 and calibration.apply(0.2) < calibration.apply(0.3)  # monotone
    round_trip = ScoreCalibration.from_json(calibration.to_json())
    assert round_trip.apply(0.7) == pytest.approx(calibration.apply(0.7))


def test_too_little_data_keeps_the_raw_score() -> None:
    assert fit_calibration(np.array([0.2, 0.9]), np.array([False, True])).is_identity
    assert fit_calibration(np.full(50, 0.5), np.ones(50, bool)).is_identity
    assert ScoreCalibration().apply(0.37) == 0.37
    assert ScoreCalibration.from_json(None).is_identity


def write_version(versions: ProjectVersions, base: str, calibration: dict[str, float] | None = None) -> str:
    name = versions.next_name()
    meta = {
        "model_version": f"{base}+p{versions.project}.{name}",
        "base_model_version": base,
        "score_calibration": calibration or {"a": 1.0, "b": 0.0, "samples": 0},
    }
    versions.write(name, {"bg_embeds.weight": torch.zeros(1, 4)}, meta)
    return name


def test_serving_versions_follow_the_pointer(tmp_path: Path) -> None:
    resolver = ServingVersions(tmp_path, "xsam-base-1")
    assert resolver.choice(None).version is None and resolver.choice("4").model_version == "xsam-base-1"
    assert resolver.choice("../etc").version is None
    versions = ProjectVersions(tmp_path, "4")
    first = write_version(versions, "xsam-base-1", {"a": 0.5, "b": -1.0, "samples": 40})
    assert resolver.choice("4").version is None  # written, not promoted
    versions.set_serving(first)
    choice = resolver.choice("4.1795316825")
    assert choice.version is not None and choice.model_version == "xsam-base-1+p4.v0001"
    assert choice.calibration.a == 0.5
    second = write_version(versions, "xsam-base-1")
    versions.set_serving(second)
    os.utime(versions.dir / "serving.json", ns=(1, 1))  # a rewrite within the same clock tick
    assert resolver.choice("4").model_version == "xsam-base-1+p4.v0002"
    versions.set_serving(None)
    assert resolver.choice("4").version is None


def test_a_version_of_another_base_model_is_not_served(tmp_path: Path) -> None:
    versions = ProjectVersions(tmp_path, "4")
    versions.set_serving(write_version(versions, "xsam-other-9"))
    assert ServingVersions(tmp_path, "xsam-base-1").choice("4").model_version == "xsam-base-1"
