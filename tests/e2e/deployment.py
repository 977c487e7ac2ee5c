"""What the end-to-end fixtures hand to the tests: images, a running backend, a connected project."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labelstudio import LabelStudioClient
from processes import ManagedProcess
from sample_images import SampleImage


@dataclass(frozen=True)
class SampleImages:
    """``upload`` is imported by upload; ``local`` by local-files storage (keyed by file name)."""

    upload: SampleImage
    local: dict[str, SampleImage]
    local_dir: Path

    def by_file_name(self) -> dict[str, SampleImage]:
        return {self.upload.path.name: self.upload, **self.local}


@dataclass(frozen=True)
class Backend:
    """A running backend (and its worker in Celery mode) and how Label Studio reaches it."""

    mode: str
    url: str
    web: ManagedProcess
    worker: ManagedProcess | None
    label_studio_log_start: int

    def logs(self) -> str:
        """Web and worker logs together (where a task's reason is logged depends on the mode)."""
        return self.web.log_text() + (self.worker.log_text() if self.worker else "")


@dataclass(frozen=True)
class Project:
    """A Label Studio project connected to the backend.

    ``tasks`` maps image file name → task id; ``image_urls`` image file name → the task's image URL.
    """

    id: int
    ml_backend_id: int
    model_version: str
    tasks: dict[str, int]
    image_urls: dict[str, str]


def create_connected_project(
    client: LabelStudioClient, backend: Backend, images: SampleImages, label_config: Path, title: str
) -> Project:
    """Create a project, import the images (one upload, two local files), connect the backend."""
    project_id = client.create_project(title, label_config.read_text())
    client.import_file(project_id, images.upload.path)
    storage_id = client.add_local_files_storage(project_id, images.local_dir, r".*\.png")
    client.sync_local_files_storage(storage_id)
    tasks: dict[str, int] = {}
    image_urls: dict[str, str] = {}
    for task in client.list_tasks(project_id):
        url = str(task["data"]["image"])
        matches = [name for name in images.by_file_name() if url.endswith(name)]
        assert len(matches) == 1, f"task {task['id']} image {url!r} matches {matches}"
        tasks[matches[0]] = int(task["id"])
        image_urls[matches[0]] = url
    assert sorted(tasks) == sorted(images.by_file_name()), f"tasks created: {tasks}"
    ml_backend = client.connect_ml_backend(project_id, backend.url, title=f"xsam-{backend.mode}")
    assert ml_backend.get("state") == "CO", f"backend not connected: {ml_backend}"
    return Project(
        id=project_id,
        ml_backend_id=int(ml_backend["id"]),
        model_version=str(ml_backend["model_version"]),
        tasks=tasks,
        image_urls=image_urls,
    )
