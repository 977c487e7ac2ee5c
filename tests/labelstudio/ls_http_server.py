"""A real HTTP server on 127.0.0.1 that answers like Label Studio's media and token endpoints.

Used by the media, auth and API tests. It serves registered files (optionally behind Label
Studio's authorization: ``Token <legacy>`` or ``Bearer <access token it issued>``), redirects,
fixed statuses, slow answers, ``POST /api/token/refresh/`` (exchanges its personal access token
for JWT-shaped access tokens with an ``exp`` claim), ``/tasks/<id>/presign/?fileuri=...`` and the
two API routes the client reads. Every request is recorded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped token (header.payload.signature); the signature is not checked by anyone here."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@dataclass
class Recorded:
    method: str
    path: str  # path and query
    authorization: str | None


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    protected: bool = False  # needs Label Studio authorization
    location: str | None = None  # for redirects
    delay_s: float = 0.0
    send_length: bool = True  # False: no Content-Length, body ends when the connection closes


@dataclass
class LabelStudioTestServer:
    pat: str = field(
        default_factory=lambda: make_jwt({"token_type": "refresh", "exp": int(time.time()) + 10**8})
    )
    access_lifetime_s: int = 300
    routes: dict[str, Route] = field(default_factory=dict)
    presign_target: Callable[[int, str], str] | None = None  # (task id, uri) -> redirect URL; None: proxy
    api_tasks: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # project -> tasks
    api_projects: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    refresh_calls: int = 0
    issued: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def count(self, path_prefix: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    def revoke_access_tokens(self) -> None:
        with self._lock:
            self.issued.clear()

    # -- request handling ------------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if header == f"Token {LEGACY_TOKEN}":
            return True
        if header and header.startswith("Bearer "):
            with self._lock:
                return header[len("Bearer ") :] in self.issued
        return False

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        auth = handler.headers.get("Authorization")
        with self._lock:
            self.requests.append(Recorded(method, handler.path, auth))
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        if method == "POST" and parts.path == "/api/token/refresh/":
            length = int(handler.headers.get("Content-Length", "0"))
            payload = json.loads(handler.rfile.read(length) or b"{}")
            with self._lock:
                self.refresh_calls += 1
            if payload.get("refresh") != self.pat:
                return self._json(handler, 401, {"detail": "Token is invalid or expired"})
            with self._lock:
                access = make_jwt(
                    {
                        "token_type": "access",
                        "exp": int(time.time()) + self.access_lifetime_s,
                        "jti": self.refresh_calls,
                    }
                )
                self.issued.add(access)
            return self._json(handler, 200, {"access": access})
        if parts.path.startswith("/tasks/") and parts.path.endswith("/presign/"):
            if not self._authorized(auth):
                return self._json(handler, 401, {"detail": "Authentication credentials were not provided."})
            task_id = int(parts.path.split("/")[2])
            uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()
            if self.presign_target is None:
                route = self.routes.get(f"/proxy/{uri}")
                return self._send(handler, route or Route(status=404))
            return self._send(handler, Route(status=302, location=self.presign_target(task_id, uri)))
        if parts.path.startswith("/api/"):
            if not self._authorized(auth):
                return self._json(handler, 401, {"detail": "Authentication credentials were not provided."})
            return self._api(handler, parts.path, query)
        route = self.routes.get(handler.path) or self.routes.get(parts.path)
        if route is None:
            return self._send(handler, Route(status=404, body=b"not found"))
        if route.protected and not self._authorized(auth):
            return self._json(handler, 401, {"detail": "Authentication credentials were not provided."})
        return self._send(handler, route)

    def _api(self, handler: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]) -> None:
        if path.startswith("/api/projects/"):
            project_id = int(path.strip("/").split("/")[2])
            project = self.api_projects.get(project_id)
            if project is None:
                return self._json(handler, 404, {"detail": "Not found."})
            return self._json(handler, 200, project)
        if path == "/api/tasks/":
            tasks = self.api_tasks.get(int(query["project"][0]), [])
            page = int(query.get("page", ["1"])[0])
            size = int(query.get("page_size", ["100"])[0])
            chunk = tasks[(page - 1) * size : page * size]
            if page > 1 and not chunk:
                return self._json(
                    handler, 404, {"detail": "Invalid page."}
                )  # Django REST's page-number paging
            return self._json(
                handler,
                200,
                {"tasks": chunk, "total": len(tasks), "total_annotations": 0, "total_predictions": 0},
            )
        return self._json(handler, 404, {"detail": "Not found."})

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
        LabelStudioTestServer._send(
            handler, Route(status=status, body=json.dumps(obj).encode(), content_type="application/json")
        )

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, route: Route) -> None:
        if route.delay_s:
            time.sleep(route.delay_s)
        handler.send_response(route.status)
        handler.send_header("Content-Type", route.content_type)
        if route.location is not None:
            handler.send_header("Location", route.location)
        if route.send_length:
            handler.send_header("Content-Length", str(len(route.body)))
        else:
            handler.close_connection = True
        handler.end_headers()
        # The client may have given up (time-out or size cap), which some tests provoke.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.wfile.write(route.body)
