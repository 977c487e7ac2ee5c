"""Curated dataset export: a Label Studio project's accepted labels as COCO, YOLO-seg or PNG masks.

* :mod:`~xsam_backend.export.curation`: which annotation of a task counts (``is_accepted``,
  shared with training), label / annotator / agreement filters, the train/val split;
* :mod:`~xsam_backend.export.regions`: Label Studio results to pixel-frame instances;
* :mod:`~xsam_backend.export.coco`, :mod:`~xsam_backend.export.yolo`,
  :mod:`~xsam_backend.export.png_masks`: the dataset writers, all streaming;
* :mod:`~xsam_backend.export.manifest`: what was included, and why anything was left out;
* :mod:`~xsam_backend.export.runner`: :func:`~xsam_backend.export.runner.run_export`, which ties
  them together (``python -m xsam_backend export``).
"""
