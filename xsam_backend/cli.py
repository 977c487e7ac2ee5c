"""``python -m xsam_backend serve|worker|convert-weights|check``: the command-line entry points.

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
