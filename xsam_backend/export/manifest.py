"""The export's manifest: what was included, and why anything was left out.

* ``manifest.jsonl``: one line per task seen, written as the export goes: ``task_id``,
  ``status`` (``included`` / ``excluded``), ``reason`` (a code, for excluded tasks) and
  ``detail``, ``annotation_id``, ``split``, ``file_name``, ``source`` (the image URL),
  ``instances`` per label, ``skipped_regions`` and ``other_annotations`` as ``[id, reason]``
  pairs, and ``agreement_iou`` when the agreement filter ran;
* ``manifest.json``: the totals (tasks per status, exclusions per reason, images and instances
  per split and label, regions skipped), the export's options and the files written.

Exclusion codes: ``no_accepted_annotation``, ``no_selected_labels``, ``no_prediction``,
``low_agreement``, ``image_size_unknown``, ``image_unavailable``, ``image_size_mismatch``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ExclusionReason = Literal[
    "no_accepted_annotation",
    "no_selected_labels",
    "no_prediction",
    "low_agreement",
    "image_size_unknown",
    "image_unavailable",
    "image_size_mismatch",
]


@dataclass(frozen=True)
class ManifestEntry:
    """One task's line in ``manifest.jsonl``; ``reason`` is set exactly when ``status`` is excluded."""

    task_id: int
    status: Literal["included", "excluded"]
    source: str
    reason: ExclusionReason | None = None
    detail: str = ""
    annotation_id: int | None = None
    split: str | None = None
    file_name: str | None = None
    instances: dict[str, int] = field(default_factory=dict)
    skipped_regions: list[tuple[str, str]] = field(default_factory=list)
    other_annotations: list[tuple[int | None, str]] = field(default_factory=list)
    agreement_iou: float | None = None

    def __post_init__(self) -> None:
        if (self.status == "excluded") != (self.reason is not None):
            raise ValueError("an excluded task needs a reason, and only an excluded task has one")


class ManifestWriter:
    """Streams ``manifest.jsonl`` and keeps only the totals for ``manifest.json``."""

    def __init__(self, out_dir: Path, options: Mapping[str, Any]) -> None:
        self._out = out_dir
        self._options = dict(options)
        self._lines = (out_dir / "manifest.jsonl").open("w", encoding="utf-8")
        self.status: Counter[str] = Counter()
        self.excluded: Counter[str] = Counter()
        self.images: Counter[str] = Counter()
        self.instances: dict[str, Counter[str]] = {}
        self.skipped_regions = 0

    def record(self, entry: ManifestEntry) -> None:
        """Append one task's entry and count it."""
        self._lines.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
        self.status[entry.status] += 1
        self.skipped_regions += len(entry.skipped_regions)
        if entry.reason is not None:
            self.excluded[entry.reason] += 1
        if entry.status == "included" and entry.split is not None:
            self.images[entry.split] += 1
            self.instances.setdefault(entry.split, Counter()).update(entry.instances)

    def summary(self, files: list[Path]) -> dict[str, Any]:
        """The totals as ``manifest.json`` holds them; ``files`` relative to the output folder."""
        return {
            "options": self._options,
            "tasks": {"seen": sum(self.status.values()), **dict(self.status)},
            "excluded": dict(sorted(self.excluded.items())),
            "images": dict(sorted(self.images.items())),
            "instances": {split: dict(sorted(c.items())) for split, c in sorted(self.instances.items())},
            "skipped_regions": self.skipped_regions,
            "files": sorted(str(p.relative_to(self._out)) for p in files),
        }

    def discard(self) -> None:
        """Close ``manifest.jsonl`` as it stands, after a failed export; no ``manifest.json``."""
        self._lines.close()

    def close(self, files: list[Path]) -> dict[str, Any]:
        """Finish ``manifest.jsonl``, write ``manifest.json``; return the summary."""
        self._lines.close()
        summary = self.summary([*files, self._out / "manifest.jsonl", self._out / "manifest.json"])
        (self._out / "manifest.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
        return summary
