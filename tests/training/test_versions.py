"""Per-project versions: atomic writes, the serving pointer, rollback through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xsam_backend import cli
from xsam_backend.errors import BadRequest
from xsam_backend.training import versions as versions_module
from xsam_backend.training.versions import (
    ProjectVersions,
    VersionError,
    check_project,
    load_delta,
    project_model_version,
)


def write(versions: ProjectVersions, promoted: bool = True, value: float = 1.0) -> str:
    name = versions.next_name()
    meta = {
        "model_version": project_model_version("xsam-base-1234", versions.project, name),
        "base_model_version": "xsam-base-1234",
        "promoted": promoted,
        "metrics": {"candidate": {"miou": 0.5, "ap": 0.25}},
    }
    versions.write(name, {"llm_projector.model.0.weight": torch.full((2, 3), value)}, meta)
    return name


def test_write_list_get_and_load(tmp_path: Path) -> None:
    versions = ProjectVersions(tmp_path, "7")
    assert versions.list() == [] and versions.serving() is None and versions.next_name() == "v0001"
    name = write(versions, value=2.5)
    info = versions.get(name)
    assert info.model_version == "xsam-base-1234+p7.v0001"
    assert sorted(p.name for p in info.path.iterdir()) == ["delta.safetensors", "meta.json"]
    assert torch.equal(load_delta(info)["llm_projector.model.0.weight"], torch.full((2, 3), 2.5))
    assert [v.name for v in versions.list()] == ["v0001"] and versions.next_name() == "v0002"
    with pytest.raises(VersionError, match="has no version 'v0009'"):
        versions.get("v0009")
    with pytest.raises(FileExistsError):
        versions.write("v0001", {}, {})


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = ProjectVersions(tmp_path, "7")
    write(versions)
    versions.set_serving("v0001")

    def crash(path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(versions_module, "_fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write(versions)
    monkeypatch.undo()
    assert [v.name for v in versions.list()] == ["v0001"]
    assert sorted(p.name for p in versions.dir.iterdir()) == ["serving.json", "v0001"]
    assert versions.serving_name() == "v0001"


def test_partial_directories_are_never_listed_and_are_removed(tmp_path: Path) -> None:
    versions = ProjectVersions(tmp_path, "7")
    write(versions)
    partial = versions.dir / ".tmp-v0002-deadbeef"
    partial.mkdir()
    (partial / "delta.safetensors").write_bytes(b"half")
    assert [v.name for v in versions.list()] == ["v0001"]
    assert versions.next_name() == "v0003"  # a killed writer's number is not reused
    assert versions.remove_partial() == 1 and not partial.exists()


def test_serving_pointer(tmp_path: Path) -> None:
    versions = ProjectVersions(tmp_path, "7")
    write(versions)
    versions.set_serving("v0001")
    assert json.loads((versions.dir / "serving.json").read_text()) == {"version": "v0001"}
    assert versions.serving() is not None
    versions.set_serving(None)
    assert versions.serving() is None
    with pytest.raises(VersionError):
        versions.set_serving("v0042")


def test_project_ids_are_path_safe() -> None:
    assert check_project(4) == "4" and check_project("4.1795316825") == "4"
    for bad in ("../x", "", None, "a/b"):
        with pytest.raises(BadRequest):
            check_project(bad)


def test_cli_versions_and_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL_WEIGHTS_ROOT", str(tmp_path))
    versions = ProjectVersions(tmp_path / "projects", "3")
    write(versions)  # v0001 promoted
    write(versions, promoted=False)  # v0002 rejected by the gate
    write(versions)  # v0003 promoted
    versions.set_serving("v0003")

    assert cli.main(["versions", "--project", "3"]) == 0
    out = capsys.readouterr().out
    assert "serving v0003" in out and "* v0003" in out and "not promoted" in out

    assert cli.main(["rollback", "--project", "3"]) == 0  # to the promoted version before v0003
    assert versions.serving_name() == "v0001"
    assert cli.main(["rollback", "--project", "3", "--version", "v0003"]) == 0
    assert versions.serving_name() == "v0003"
    assert cli.main(["rollback", "--project", "3", "--version", "base"]) == 0
    assert versions.serving_name() is None
    assert cli.main(["rollback", "--project", "3", "--version", "v0099"]) == 2
    assert "has no version 'v0099'" in capsys.readouterr().err
