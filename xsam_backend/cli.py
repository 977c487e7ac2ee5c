"""``python -m xsam_backend serve|worker|convert-weights|check|export|train|versions|rollback``: the
command-line entry points.

Each sub-command reads :class:`Settings` once from the environment and imports what it needs
lazily, so ``serve`` never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from xsam_backend.settings import Settings, SettingsError


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.server.app import create_app

    if args.basic_auth_user or args.basic_auth_pass:
        settings = settings.with_changes(basic_auth_user=args.basic_auth_user, basic_auth_pass=args.basic_auth_pass)
    app = create_app(settings)
    app.run(host=args.host, port=args.port, debug=False, threaded=True)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.worker.main import run_worker

    run_worker(settings, queues=tuple(args.queues.split(",")), concurrency=args.concurrency, pool=args.pool)
    return 0


def _convert(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.xsam.convert import convert_weights

    out = convert_weights(Path(args.src), Path(args.dst))
    print(f"converted model written to {out}")
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.engines.factory import describe_engine

    description = describe_engine(settings)
    print(f"engine: {description.name}\nmodel version: {description.model_version}\nreason: {description.reason}")
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.errors import BackendError
    from xsam_backend.export.curation import AcceptancePolicy, CurationFilters
    from xsam_backend.export.runner import ExportOptions, run_export
    from xsam_backend.labelstudio.api import LabelStudioApi
    from xsam_backend.labelstudio.media import MediaFetcher

    try:
        options = ExportOptions(
            project_id=args.project,
            format=args.format,
            out_dir=Path(args.out),
            policy=AcceptancePolicy(args.accept.replace("-", "_")),
            filters=CurationFilters(
                labels=frozenset(args.label) if args.label else None,
                annotators=frozenset(args.annotator) if args.annotator else None,
                min_agreement_iou=args.min_agreement_iou,
                model_version=args.model_version,
            ),
            val_fraction=args.val_fraction,
            seed=args.seed,
            copy_images=args.copy_images,
        )
        fetcher = MediaFetcher(settings)
        summary = run_export(
            LabelStudioApi.from_settings(settings),
            options,
            images=lambda url, task_id: fetcher.fetch(url, task_id),
            progress=not args.no_progress,
        )
    except BackendError as exc:
        print(f"export failed: {exc.message}", file=sys.stderr)
        return 1
    tasks, excluded = summary["tasks"], summary["excluded"]
    print(
        f"exported {tasks.get('included', 0)} of {tasks['seen']} tasks to {args.out} "
        f"(images per split: {summary['images']}; excluded: {excluded or 'none'}); see manifest.json"
    )
    return 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.errors import BackendError
    from xsam_backend.training.job import run_training_job

    try:
        result = run_training_job(settings, args.project, "command line")
    except BackendError as exc:
        print(f"training failed: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(f"project {result.project}: {result.status}: {result.message}")
    return 0 if result.status in ("promoted", "rejected", "no_data") else 3


def _versions(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.errors import BadRequest
    from xsam_backend.training.versions import ProjectVersions

    try:
        versions = ProjectVersions(settings.projects_dir, args.project)
    except BadRequest as exc:
        print(exc.message, file=sys.stderr)
        return 2
    serving = versions.serving_name()
    print(f"project {versions.project}: serving {serving or 'base model'}")
    for version in versions.list():
        metrics = version.meta.get("metrics", {}).get("candidate", {})
        marker = "*" if version.name == serving else " "
        print(
            f"{marker} {version.name}  {version.meta.get('created_at', '?')}  "
            f"{'promoted' if version.meta.get('promoted') else 'not promoted'}  "
            f"mIoU {metrics.get('miou', float('nan')):.4f}  AP {metrics.get('ap', float('nan')):.4f}  "
            f"{version.model_version}"
        )
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from xsam_backend.errors import BadRequest
    from xsam_backend.training.versions import ProjectVersions

    try:
        versions = ProjectVersions(settings.projects_dir, args.project)
        target = None if args.version == "base" else args.version
        if target is None and args.version is None:
            current = versions.serving_name() or ""
            older = [v.name for v in versions.list() if v.meta.get("promoted") and v.name < current]
            target = older[-1] if older else None
        versions.set_serving(target)
    except BadRequest as exc:
        print(exc.message, file=sys.stderr)
        return 2
    print(f"project {versions.project}: now serving {target or 'the base model'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m xsam_backend``."""
    parser = argparse.ArgumentParser(prog="python -m xsam_backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web backend (Flask development server; use gunicorn in production)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("-p", "--port", type=int, default=9090)
    serve.add_argument("--basic-auth-user", default=None)
    serve.add_argument("--basic-auth-pass", default=None)
    serve.set_defaults(run=_serve)

    worker = sub.add_parser("worker", help="run a Celery worker (needs REDIS_URL)")
    worker.add_argument("--queues", default="interactive,prelabel,train", help="comma-separated queue names")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.set_defaults(run=_worker)

    convert = sub.add_parser("convert-weights", help="convert a released checkpoint or a parity bundle to safetensors")
    convert.add_argument("src", help="pytorch_model.bin, its folder, or a parity bundle directory")
    convert.add_argument("dst", help="output directory, e.g. model_weights/<name>")
    convert.set_defaults(run=_convert)

    check = sub.add_parser("check", help="print which engine would serve and why")
    check.set_defaults(run=_check)

    export = sub.add_parser(
        "export",
        help="export a project's accepted labels as COCO, YOLO-seg or PNG masks (reads Label Studio's API)",
    )
    export.add_argument("--project", type=int, required=True, help="Label Studio project id")
    export.add_argument("--format", required=True, choices=["coco", "yolo-seg", "masks"])
    export.add_argument("--out", required=True, help="output folder (new or empty)")
    export.add_argument(
        "--accept",
        default="submitted",
        choices=["submitted", "ground-truth", "reviewed"],
        help="which annotations count: submitted and not skipped (default), ground truth only, accepted in review",
    )
    export.add_argument("--label", action="append", help="keep only regions with this label (repeatable)")
    export.add_argument(
        "--annotator", type=int, action="append", help="keep only annotations by this user id (repeatable)"
    )
    export.add_argument(
        "--min-agreement-iou",
        type=float,
        default=None,
        help="keep tasks whose annotation and latest prediction agree with at least this IoU",
    )
    export.add_argument(
        "--model-version", default=None, help="with --min-agreement-iou: compare with this version"
    )
    export.add_argument("--val-fraction", type=float, default=0.2, help="share of tasks in the val split")
    export.add_argument("--seed", type=int, default=0, help="changes which tasks go to val")
    export.add_argument("--copy-images", action="store_true", help="write the images (EXIF applied) as PNG")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.set_defaults(run=_export)

    train = sub.add_parser(
        "train", help="fine-tune one project now, in this process (reads Label Studio's API)"
    )
    train.add_argument("--project", required=True, help="Label Studio project id")
    train.set_defaults(run=_train)

    versions = sub.add_parser("versions", help="list a project's trained versions and which one serves")
    versions.add_argument("--project", required=True, help="Label Studio project id")
    versions.set_defaults(run=_versions)

    rollback = sub.add_parser("rollback", help="serve an earlier version of a project (workers pick it up)")
    rollback.add_argument("--project", required=True, help="Label Studio project id")
    rollback.add_argument(
        "--version",
        default=None,
        help="version to serve (e.g. v0002) or 'base'; default: the promoted version before the serving one",
    )
    rollback.set_defaults(run=_rollback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), read settings, run the sub-command."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    return int(args.run(args, settings))
