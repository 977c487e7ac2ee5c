"""Run an export: stream a project's tasks, curate them, write one dataset format and the manifest.

Memory holds one page of tasks (the client's ``page_size``) and one task's masks at a time;
every writer streams to disk. Per task:

1. choose the accepted annotation (:func:`~xsam_backend.export.curation.choose_annotation`);
2. turn its regions into instances (:func:`~xsam_backend.export.regions.parse_result`), keeping
   the selected labels and dropping empty masks;
3. take the image size from the regions (after EXIF orientation); read the image only when no
   region states a size, or when images are copied;
4. with the agreement filter, compare with the latest of the predictions listed with the task;
5. assign the split by hashing the task id; write the image's labels, and its copy.

Every task seen gets a manifest line, included or excluded with a reason.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from xsam_backend.errors import BadRequest, MediaError
from xsam_backend.export.coco import CocoWriter
from xsam_backend.export.curation import (
    AcceptancePolicy,
    CurationFilters,
    agreement_iou,
    choose_annotation,
    latest_prediction,
    split_of,
)
from xsam_backend.export.dataset import DatasetWriter, ImageEntry, image_stem, source_extension
from xsam_backend.export.manifest import ManifestEntry, ManifestWriter
from xsam_backend.export.png_masks import PngMaskWriter
from xsam_backend.export.regions import Instance, categories_of, parse_result
from xsam_backend.export.yolo import YoloWriter
from xsam_backend.labelstudio.api import LabelledTask
from xsam_backend.labelstudio.config import parse_label_config

ExportFormat = Literal["coco", "yolo-seg", "masks"]
FORMATS: tuple[ExportFormat, ...] = ("coco", "yolo-seg", "masks")

ImageReader = Callable[[str, int], np.ndarray]
"""``(image URL, task id)`` → ``(H, W, 3)`` uint8 RGB after EXIF orientation (``MediaFetcher.fetch``)."""

class TaskSource(Protocol):
    """Where tasks come from: :class:`~xsam_backend.labelstudio.api.LabelStudioApi`, or a fake."""

    def label_config(self, project_id: int) -> str: ...

    def iter_tasks(
        self,
        project_id: int,
        *,
        only_annotated: bool = True,
        include_cancelled: bool = False,
        page_size: int = 100,
    ) -> Iterator[LabelledTask]: ...


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how.

    ``val_fraction``: the share of tasks in the ``val`` split (0 writes ``train`` only);
    ``seed``: changes which tasks those are; ``copy_images``: write each image, EXIF
    orientation applied, as ``images/<split>/<stem>.png`` (lossless, so pixels match the labels).
    """

    project_id: int
    format: ExportFormat
    out_dir: Path
    policy: AcceptancePolicy = field(default_factory=AcceptancePolicy)
    filters: CurationFilters = field(default_factory=CurationFilters)
    val_fraction: float = 0.2
    seed: int = 0
    copy_images: bool = False
    page_size: int = 100

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise BadRequest(f"export format must be one of {', '.join(FORMATS)}; got {self.format!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise BadRequest(f"val_fraction must lie in [0, 1); got {self.val_fraction}")

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "val") if self.val_fraction > 0 else ("train",)

    def describe(self) -> dict[str, Any]:
        """The options as JSON-safe values, for the manifest and COCO's ``info``."""
        filters = asdict(self.filters)
        for key in ("labels", "annotators"):
            if filters[key] is not None:
                filters[key] = sorted(filters[key])
        return {
            "project_id": self.project_id,
            "format": self.format,
            "acceptance": self.policy.rule,
            **filters,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "copy_images": self.copy_images,
        }


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BadRequest(f"the output folder {out_dir} exists and is not empty; choose a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)


def _writer(options: ExportOptions, categories: Sequence[str]) -> DatasetWriter:
    out, splits = options.out_dir, options.splits
    if options.format == "coco":
        info = {
            "description": f"Label Studio project {options.project_id}",
            "export_options": options.describe(),
        }
        return CocoWriter(out, categories, info, splits)
    if options.format == "yolo-seg":
        return YoloWriter(out, categories, splits)
    return PngMaskWriter(out, categories, splits)


def _reasons(pairs: Sequence[tuple[Any, str]]) -> str:
    counts = Counter(reason for _, reason in pairs)
    return (
        "; ".join(f"{reason} (x{n})" if n > 1 else reason for reason, n in counts.items()) or "no annotations"
    )


class _Exporter:
    """One export's state: the writers, the selected labels and the collaborators."""

    def __init__(
        self,
        options: ExportOptions,
        categories: Sequence[str],
        image_key: str,
        images: ImageReader | None,
    ) -> None:
        self.options = options
        self.image_key = image_key
        self.categories = tuple(categories)
        self.selected = frozenset(categories)
        self.images = images
        self.writer = _writer(options, categories)
        self.manifest = ManifestWriter(options.out_dir, options.describe())

    def _instances(
        self, result: Sequence[Mapping[str, Any]], all_labels: Sequence[str]
    ) -> tuple[list[Instance], list[tuple[str, str]], tuple[int, int] | None]:
        parsed = parse_result(result, all_labels)
        kept, skipped = [], list(parsed.skipped)
        for instance in parsed.instances:
            if instance.label not in self.selected:
                skipped.append((instance.region_id, f"label {instance.label!r} not selected"))
            elif not instance.mask.any():
                skipped.append((instance.region_id, "empty mask (nothing inside the image)"))
            else:
                kept.append(instance)
        return kept, skipped, parsed.size

    def export_task(self, task: LabelledTask, all_labels: Sequence[str]) -> ManifestEntry:
        opts, filters = self.options, self.options.filters
        url = str(task.data.get(self.image_key, ""))
        choice = choose_annotation(task.annotations, opts.policy, filters.annotators)
        if choice.annotation is None:
            return ManifestEntry(
                task.id,
                "excluded",
                url,
                "no_accepted_annotation",
                _reasons(choice.rejected),
                other_annotations=list(choice.rejected),
            )
        annotation = choice.annotation
        base: dict[str, Any] = {
            "annotation_id": annotation.get("id") if isinstance(annotation.get("id"), int) else None,
            "other_annotations": list(choice.rejected),
        }
        instances, skipped, size = self._instances(annotation["result"], all_labels)
        base["skipped_regions"] = skipped

        def excluded(reason: Any, detail: str, **extra: Any) -> ManifestEntry:
            return ManifestEntry(task.id, "excluded", url, reason, detail, **base, **extra)

        if filters.labels is not None and not instances:
            return excluded("no_selected_labels", f"no region labelled {sorted(self.selected)}")
        image: np.ndarray | None = None
        if size is None or opts.copy_images:
            if self.images is None:
                return excluded(
                    "image_size_unknown", "no region states the image size and images are not read"
                )
            try:
                image = self.images(url, task.id)
            except MediaError as exc:
                return excluded("image_unavailable", exc.message)
            image_size = (int(image.shape[0]), int(image.shape[1]))
            if size is not None and image_size != size:
                return excluded(
                    "image_size_mismatch",
                    f"regions are on a {size[1]}x{size[0]} image, the image is {image_size[1]}x{image_size[0]}",
                )
            size = image_size
        agreement = None
        if filters.min_agreement_iou is not None:
            prediction = latest_prediction(task.predictions, filters.model_version)
            if prediction is None:
                version = f" of model version {filters.model_version!r}" if filters.model_version else ""
                return excluded("no_prediction", f"the task has no prediction{version}")
            predicted, _, _ = self._instances(prediction["result"], all_labels)
            agreement = round(agreement_iou(instances, predicted), 6)
            if agreement < filters.min_agreement_iou:
                return excluded(
                    "low_agreement",
                    f"IoU {agreement:.3f} with prediction {prediction.get('id')} is below {filters.min_agreement_iou}",
                    agreement_iou=agreement,
                )
        split = split_of(task.id, opts.val_fraction, opts.seed)
        stem = image_stem(task.id, url)
        file_name = f"{stem}.png" if opts.copy_images else f"{stem}{source_extension(url)}"
        if image is not None and opts.copy_images:
            path = opts.out_dir / "images" / split / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])):
                raise OSError(f"could not write {path}")
        entry = ImageEntry(task.id, split, stem, file_name, size[1], size[0], url)
        self.writer.add(entry, instances)
        return ManifestEntry(
            task.id,
            "included",
            url,
            split=split,
            file_name=file_name,
            instances=dict(Counter(i.label for i in instances)),
            agreement_iou=agreement,
            **base,
        )


def run_export(
    source: TaskSource,
    options: ExportOptions,
    *,
    images: ImageReader | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export project ``options.project_id`` into ``options.out_dir``; return the manifest summary.

    ``images`` reads a task's image (needed to copy images, and for tasks whose annotation has
    no region stating the image size). The agreement filter reads the predictions the task list
    carries (no request per task). The output folder must be new or empty. Raises :class:`BadRequest` for
    unusable options and :class:`~xsam_backend.errors.LabelStudioApiError` when Label Studio
    fails; the partial output is left for inspection, without the temporary files.
    """
    filters = options.filters
    if options.copy_images and images is None:
        raise BadRequest("copying images needs a way to read them")
    spec = parse_label_config(source.label_config(options.project_id))
    all_labels = categories_of(spec)
    if filters.labels is not None:
        unknown = sorted(filters.labels - set(all_labels))
        if unknown:
            raise BadRequest(
                f"labels {unknown} are not in the label config; its labels are {list(all_labels)}"
            )
    categories = [label for label in all_labels if filters.labels is None or label in filters.labels]
    _prepare_out_dir(options.out_dir)
    exporter = _Exporter(options, categories, spec.image_key, images)
    tasks = source.iter_tasks(
        options.project_id, only_annotated=True, include_cancelled=True, page_size=options.page_size
    )
    bar = tqdm(tasks, desc=f"project {options.project_id}", unit="task", disable=not progress)
    try:
        for task in bar:
            entry = exporter.export_task(task, all_labels)
            exporter.manifest.record(entry)
            bar.set_postfix(included=exporter.manifest.status["included"], refresh=False)
        files = exporter.writer.close()
    except BaseException:
        exporter.manifest.discard()
        raise
    finally:
        bar.close()
        shutil.rmtree(options.out_dir / ".partial", ignore_errors=True)
    return exporter.manifest.close(files)
