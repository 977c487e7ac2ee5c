"""Composition root: ``Settings.from_env()`` → the Flask app.

* ``python _wsgi.py --host 0.0.0.0 --port 9090`` runs the development server (Label Studio's
  convention for ML backends);
* ``gunicorn _wsgi:app`` serves it in production: ``app`` is built on first access, so importing
  this module reads nothing and starts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from xsam_backend.settings import Settings

_app: Any = None


def create_wsgi_app() -> Any:
    """Read settings from the environment once, configure logging, build the app."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    from xsam_backend.server.app import create_app

    return create_app(settings)


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            _app = create_wsgi_app()
        return _app
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="X-SAM Label Studio ML backend (development server)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("PORT", "9090")))
    parser.add_argument("--log-level", default=None, help="overrides LOG_LEVEL")
    parser.add_argument("--basic-auth-user", default=None, help="overrides BASIC_AUTH_USER")
    parser.add_argument("--basic-auth-pass", default=None, help="overrides BASIC_AUTH_PASS")
    args = parser.parse_args(argv)
    forwarded = ["serve", "--host", args.host, "--port", str(args.port)]
    if args.basic_auth_user:
        forwarded += ["--basic-auth-user", args.basic_auth_user]
    if args.basic_auth_pass:
        forwarded += ["--basic-auth-pass", args.basic_auth_pass]
    if args.log_level:
        os.environ["LOG_LEVEL"] = args.log_level
    from xsam_backend.cli import main as cli_main

    return cli_main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
