"""A whole training job on the tiny model against an HTTP server answering like Label Studio.

The job reads the project through the real ``LabelStudioApi`` (paginated tasks) and downloads the
images through the real ``MediaFetcher``; only Label Studio itself is stood in for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from repo_paths import REPO_ROOT
from shapes_project import CONFIG, LS, PROJECT, labelled_task, png, shapes_server
from training_scenes import CLASSES, scene

from xsam_backend.dispatch import InlineDispatcher
from xsam_backend.server.app import create_app
from xsam_backend.settings import Settings
from xsam_backend.training.coordination import DiskCoordinator
from xsam_backend.training.job import run_training_job
from xsam_backend.training.versions import ProjectVersions


@pytest.fixture
def server() -> Iterator[Any]:
    srv = shapes_server(5)
    srv.api_projects[5] = {"id": 5, "title": "skipped only", "label_config": CONFIG}
    srv.api_tasks[5] = [labelled_task(1, cancelled=True)[0]]
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def settings(tmp_path: Path, server: Any, tiny_model_dir: Path) -> Settings:
    return Settings(
        label_studio_url=server.base_url,
        label_studio_api_key=LS.LEGACY_TOKEN,
        media_cache_dir=tmp_path / "cache",
        model_dir=tiny_model_dir,
        weights_root=tmp_path / "weights",
        device="cpu",
        train_steps=30,
        train_learning_rate=3e-3,
        train_holdout_fraction=0.25,
    )


@pytest.mark.timeout(600)
def test_job_trains_versions_promotes_and_the_web_reports_it(settings: Settings) -> None:
    statuses: list[dict[str, Any]] = []
    result = run_training_job(settings, PROJECT, "test", progress=statuses.append)

    versions = ProjectVersions(settings.projects_dir, PROJECT)
    assert result.status == "promoted", result.message
    assert result.version == "v0001" and versions.serving_name() == "v0001"
    meta = versions.get("v0001").meta
    assert meta["model_version"] == result.model_version and result.model_version.endswith("+p4.v0001")
    assert meta["base_model_version"].startswith("xsam-xsam-tiny-") and len(meta["base_checksum"]) == 64
    assert meta["classes"] == list(CLASSES)
    assert (
        len(meta["holdout_task_ids"]) >= 1
        and len(meta["annotation_ids"]) + len(meta["holdout_task_ids"]) == 5
    )
    candidate, serving = meta["metrics"]["candidate"], meta["metrics"]["serving"]
    assert meta["metrics"]["set"] == "holdout" and candidate["miou"] > serving["miou"]
    assert meta["train"]["loss_last"] < meta["train"]["loss_first"]
    # progress: states in order, percentages rising to 100
    states = [s["state"] for s in statuses]
    assert states[0] == "started" and "training" in states and states[-1] == "promoted"
    percents = [s["percent"] for s in statuses]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert DiskCoordinator(settings.projects_dir).status("4")["state"] == "promoted"

    app = create_app(settings, dispatcher=InlineDispatcher(settings))
    client = app.test_client()
    setup = client.post("/setup", json={"project": "4.1795316825", "schema": CONFIG}).get_json()
    assert setup["model_version"] == result.model_version
    other = client.post("/setup", json={"project": "9.1795316825", "schema": CONFIG}).get_json()
    assert other["model_version"] == meta["base_model_version"]
    listed = client.get("/versions", json={"project": "4.1795316825"}).get_json()
    assert listed["model_version"] == result.model_version
    assert listed["versions"] == [meta["base_model_version"], result.model_version]
    assert listed["training"]["state"] == "promoted" and listed["details"][0]["promoted"] is True

    # the next job continues from the serving version and writes v0002
    again = run_training_job(settings, PROJECT, "test")
    assert again.version == "v0002"
    assert versions.get("v0002").meta["started_from"] == "v0001"
    assert versions.serving_name() == ("v0002" if again.status == "promoted" else "v0001")


def test_broken_images_are_skipped_with_a_warning_and_the_rest_still_trains(
    settings: Settings, server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Tasks 1-5 are good (the fixture). Tasks 6-8 are annotated like them (96 x 128) but their
    # image is unusable: bytes that are no image, a PNG cut in half, a PNG of another size.
    good = list(range(1, 6))
    broken: dict[int, bytes] = {}
    for task_id in (6, 7, 8):
        task, body = labelled_task(task_id)
        server.api_tasks[PROJECT].append(task)
        broken[task_id] = body
    broken[6] = b"<html><body>this is not an image</body></html>"
    broken[7] = broken[7][: len(broken[7]) // 2]
    broken[8] = png(scene(8)[0][:64])  # 64 x 128, the annotation says 96 x 128
    for task_id, body in broken.items():
        server.routes[f"/data/upload/{PROJECT}/{task_id}.png"] = LS.Route(
            body=body, content_type="image/png", protected=True
        )

    statuses: list[dict[str, Any]] = []
    with caplog.at_level(logging.WARNING, logger="xsam_backend.training.job"):
        result = run_training_job(
            dataclasses.replace(settings, train_steps=5), PROJECT, "test", progress=statuses.append
        )

    # the job went on and wrote a version
    assert result.status in ("promoted", "rejected"), result.message
    versions = ProjectVersions(settings.projects_dir, PROJECT)
    assert result.version == "v0001" and [v.name for v in versions.list()] == ["v0001"]
    assert versions.serving_name() == ("v0001" if result.status == "promoted" else None)

    # one warning per broken task, naming it and why
    skipped = {
        int(r.getMessage().split(":", 1)[0].removeprefix("task ")): r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and ": image skipped: " in r.getMessage()
    }
    assert sorted(skipped) == [6, 7, 8], caplog.text
    assert "cannot decode image" in skipped[6] and "cannot decode image" in skipped[7]
    assert "(64, 128)" in skipped[8] and "(96, 128)" in skipped[8]

    # all eight were split (the deterministic split holds out task 8 and a good one) ...
    loading = [s["message"] for s in statuses if s["state"] == "loading"]
    assert loading and loading[0].startswith("6 training and 2 hold-out images"), loading
    # ... but the version records only the images it used
    meta = versions.get("v0001").meta
    assert sorted(meta["task_ids"] + meta["holdout_task_ids"]) == good
    assert not set(meta["task_ids"] + meta["holdout_task_ids"]) & set(broken)
    assert meta["annotation_ids"] == [100 + t for t in meta["task_ids"]]
    assert meta["num_annotations"] == len(meta["task_ids"]) >= 1 and meta["holdout_task_ids"]
    assert meta["metrics"]["set"] == "holdout"


def test_a_job_with_an_llm_adapter_stores_it_and_the_worker_serves_it(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from xsam_backend.engines.xsam_engine import XSamEngine
    from xsam_backend.prompt import Prompt, Task
    from xsam_backend.training.evaluation import ImageTruth, evaluate
    from xsam_backend.training.features import extract_features
    from xsam_backend.training.lora import LoraSpec, is_lora_parameter, use_lora
    from xsam_backend.training.trainer import apply_delta, predict_instances
    from xsam_backend.training.versions import load_delta
    from xsam_backend.xsam.pipeline import XSamPipeline

    with_adapter = dataclasses.replace(
        settings, train_steps=8, train_lora_rank=4, train_lora_alpha=8, train_lora_dropout=0.0
    )
    result = run_training_job(with_adapter, PROJECT, "test")
    assert result.status in ("promoted", "rejected"), result.message
    versions = ProjectVersions(settings.projects_dir, PROJECT)
    version = versions.get("v0001")
    assert LoraSpec.from_json(version.meta["lora"]) == LoraSpec(4, 8, 0.0)
    assert version.summary()["lora"] == version.meta["lora"]  # what /versions and the CLI list
    delta = load_delta(version)
    adapter = {n: t for n, t in delta.items() if is_lora_parameter(n)}
    assert adapter and any(bool(t.any()) for n, t in adapter.items() if ".lora_B." in n)
    versions.set_serving("v0001")  # serve it whatever the gate said

    engine = XSamEngine.from_dir(settings.model_dir, settings)
    prompt = Prompt(task=Task.GENERIC, classes=CLASSES, mode="instance")
    image = scene(1)[0]
    assert engine.predict(image, prompt, project=str(PROJECT)).model_version == version.model_version
    assert engine.predict(image, prompt).model_version == version.meta["base_model_version"]

    # the adapter is continued only when the settings ask for one of the same shape
    with caplog.at_level(logging.WARNING, logger="xsam_backend.training.job"):
        again = run_training_job(dataclasses.replace(settings, train_steps=3), PROJECT, "test")
    assert again.version == "v0002" and versions.get("v0002").meta["lora"] is None
    assert not any(is_lora_parameter(n) for n in load_delta(versions.get("v0002")))
    assert "LLM adapter of v0001" in caplog.text and "has none" in caplog.text

    # the recorded metrics are what each version gives when served from a freshly loaded model
    v1, v2 = version.meta, versions.get("v0002").meta
    assert v2["metrics"]["serving"] == v1["metrics"]["candidate"]
    holdout = v1["holdout_task_ids"]
    truths = [ImageTruth(scene(t)[1], tuple(CLASSES[c] for c in scene(t)[2])) for t in holdout]
    for meta, delta_of in ((v1, versions.get("v0001")), (v2, versions.get("v0002"))):
        fresh = XSamPipeline.from_dir(settings.model_dir)
        use_lora(fresh.model, LoraSpec.from_json(meta["lora"]))
        apply_delta(fresh.model, load_delta(delta_of))
        features = [extract_features(fresh, scene(t)[0], CLASSES, llm_inputs=True) for t in holdout]
        served = evaluate([predict_instances(fresh.model, f, CLASSES) for f in features], truths)
        assert served.miou == pytest.approx(meta["metrics"]["candidate"]["miou"], abs=1e-6), meta["version"]
        assert served.ap == pytest.approx(meta["metrics"]["candidate"]["ap"], abs=1e-6), meta["version"]


def test_a_second_job_for_a_busy_project_is_skipped(settings: Settings) -> None:
    coordinator = DiskCoordinator(settings.projects_dir)
    with coordinator.job_lock("4") as held:
        assert held
        result = run_training_job(settings, PROJECT, coordinator=coordinator)
    assert result.status == "skipped" and "already running" in result.message
    assert ProjectVersions(settings.projects_dir, PROJECT).list() == []


def test_nothing_accepted_means_no_data(settings: Settings) -> None:
    result = run_training_job(settings, 5)
    assert result.status == "no_data" and result.version is None


def test_a_job_killed_mid_training_leaves_no_version_and_the_serving_one_untouched(
    settings: Settings,
) -> None:
    versions = ProjectVersions(settings.projects_dir, PROJECT)
    import torch

    versions.write(
        "v0001", {"bg_embeds.weight": torch.zeros(1, 32)}, {"model_version": "x", "promoted": True}
    )
    versions.set_serving("v0001")
    serving_before = (versions.dir / "serving.json").read_bytes()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": str(settings.label_studio_url),
        "LABEL_STUDIO_API_KEY": LS.LEGACY_TOKEN,
        "MEDIA_CACHE_DIR": str(settings.media_cache_dir),
        "XSAM_MODEL_DIR": str(settings.model_dir),
        "MODEL_WEIGHTS_ROOT": str(settings.weights_root),
        "XSAM_DEVICE": "cpu",
        "TRAIN_STEPS": "100000",
        "PYTHONPATH": str(REPO_ROOT),
    }
    log_file = settings.weights_root / "train.log"
    with log_file.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "xsam_backend", "train", "--project", str(PROJECT)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    status_file = settings.projects_dir / "4" / "state" / "status.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            if status.get("state") == "training" and status.get("step", 0) >= 1:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the training process never reached step 1: {log_file.read_text()[-2000:]}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert [v.name for v in versions.list()] == ["v0001"]
    assert (versions.dir / "serving.json").read_bytes() == serving_before
    assert not [p for p in versions.dir.iterdir() if p.name.startswith(".tmp-")]
    with DiskCoordinator(settings.projects_dir).job_lock("4") as free:
        assert free  # the dead process's lock went with it
