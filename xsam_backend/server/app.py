"""Flask app factory: Label Studio's ML backend protocol.

Routes: ``GET /health`` (and ``GET /``), ``POST /setup``, ``POST /predict``, ``POST /webhook``,
``GET /versions``, ``GET /metrics``, ``GET /openapi.json`` (:mod:`.openapi`). Every answer is JSON
(``/metrics``: Prometheus text). Errors are ``{"status", "code", "message"}`` with the status of
:mod:`xsam_backend.errors`; a 5xx never carries a traceback (it is logged with the request id,
which the answer names).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from xsam_backend.dispatch import Dispatcher, PredictJob, make_dispatcher
from xsam_backend.engines.factory import EngineDescription, describe_engine
from xsam_backend.errors import BackendError, BadRequest, PayloadTooLarge, Unauthorized
from xsam_backend.labelstudio.config import LabelSpec, parse_label_config
from xsam_backend.labelstudio.context import build_prompt
from xsam_backend.labelstudio.render import render_prediction
from xsam_backend.prompt import Prompt, Task
from xsam_backend.server.auth import basic_auth_ok
from xsam_backend.server.metrics import Metrics
from xsam_backend.server.openapi import openapi_document
from xsam_backend.settings import Settings
from xsam_backend.training.triggers import make_training_trigger
from xsam_backend.training.versions import ProjectVersions

log = logging.getLogger(__name__)

_OPEN_ROUTES = frozenset({"health"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Label Studio uses this data key for plain file uploads when the config's variable does not match.
_UNDEFINED_DATA_KEY = "$undefined$"


def _describe(value: Any) -> str:
    """A short description of what arrived, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def _json_object() -> dict[str, Any]:
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # ``silent`` only covers ValueError; deep nesting exhausts the parser's stack
        raise BadRequest("the JSON body is nested too deeply to parse") from None
    if not isinstance(body, dict):
        raw = request.get_data(cache=True)[:80]
        got = "an empty body" if not raw else (_describe(body) if body is not None else f"non-JSON bytes {raw!r}")
        raise BadRequest(f"expected a JSON object body; got {got}")
    return body


def _image_url(task: Mapping[str, Any], spec: LabelSpec) -> str:
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise BadRequest(f"task {task.get('id')!r}: expected 'data' to be an object; got {_describe(data)}")
    url = data.get(spec.image_key, data.get(_UNDEFINED_DATA_KEY))
    if not isinstance(url, str) or not url:
        raise BadRequest(
            f"task {task.get('id')!r}: expected data.{spec.image_key} to hold the image URL "
            f"(from <Image value=\"${spec.image_key}\">); got keys {sorted(data)[:10]}"
        )
    return url


def _tasks(body: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise BadRequest(f"expected 'tasks' to be a non-empty list of task objects; got {_describe(tasks)}")
    if len(tasks) > limit:
        raise PayloadTooLarge(f"{len(tasks)} tasks in one request; at most {limit} are accepted")
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise BadRequest(f"tasks[{index}]: expected a task object; got {_describe(task)}")
        task_id = task.get("id")
        if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
            raise BadRequest(f"tasks[{index}].id: expected an integer; got {_describe(task_id)}")
    return tasks


def _project(body: Mapping[str, Any]) -> str | None:
    """Label Studio sends ``"<id>.<created timestamp>"``; the id is the part before the dot."""
    project = body.get("project")
    if project is None:
        return None
    if isinstance(project, Mapping):
        project = project.get("id")
    return str(project).split(".", 1)[0]


def create_app(
    settings: Settings,
    *,
    dispatcher: Dispatcher | None = None,
    engine_description: EngineDescription | None = None,
) -> Flask:
    """Build the web app.

    ``dispatcher`` defaults to :func:`make_dispatcher` (inline, or Celery when ``REDIS_URL`` is
    set); ``engine_description`` to what :func:`describe_engine` finds on disk. Tests inject both.
    """
    app = Flask("xsam_backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    description = engine_description or describe_engine(settings)
    runner = dispatcher or make_dispatcher(settings)
    metrics = Metrics()
    metrics.info.labels(description.name, description.model_version, runner.name).set(1)
    log.info(
        "serving with the %s engine (model version %s) through the %s dispatcher: %s",
        description.name,
        description.model_version,
        runner.name,
        description.reason,
    )

    @app.before_request
    def _start() -> None:
        # The id is echoed and logged: take a caller's only when it cannot forge log lines or bloat answers.
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:12]
        g.started = time.perf_counter()
        if settings.basic_auth_enabled and request.endpoint not in _OPEN_ROUTES:
            assert settings.basic_auth_user is not None and settings.basic_auth_pass is not None
            if not basic_auth_ok(request, settings.basic_auth_user, settings.basic_auth_pass):
                raise Unauthorized("basic auth required: send Authorization: Basic <base64 user:password>")

    @app.after_request
    def _finish(response: Response) -> Response:
        route = request.endpoint or "unknown"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(elapsed)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="xsam-backend"'
        if route != "health":
            log.info("%s %s -> %d in %.1f ms [%s]", request.method, request.path, response.status_code, elapsed * 1e3, g.get("request_id"))
        return response

    @app.errorhandler(BackendError)
    def _backend_error(exc: BackendError) -> tuple[Response, int]:
        if exc.status >= 500:
            log.error("%s: %s [%s]", exc.code, exc.message, g.get("request_id"))
        return jsonify(exc.to_json()), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = f"the request body is over the limit of {settings.max_request_bytes} bytes (MAX_REQUEST_BYTES)"
        if status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        if status == 404:
            message = f"no route {request.path}; see GET /openapi.json for the endpoints"
        return jsonify({"status": status, "code": exc.name.lower().replace(" ", "_"), "message": message}), status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        request_id = g.get("request_id", "-")
        log.exception("unexpected error [%s]", request_id)
        body = {"status": 500, "code": "internal_error", "message": f"internal error; see the backend log for request {request_id}"}
        return jsonify(body), 500

    @app.get("/health")
    @app.get("/", endpoint="root")
    def health() -> Response:
        state = runner.health()
        healthy = state.get("broker", "ok") == "ok"
        return jsonify(
            {
                "status": "UP" if healthy else "DEGRADED",
                "model_class": "XSamBackend",
                "engine": description.name,
                "model_version": description.model_version,
                "engine_reason": description.reason,
                **state,
            }
        )

    @app.post("/setup")
    def setup() -> Response:
        body = _json_object()
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise BadRequest(f"expected 'schema' to be the label config XML string; got {_describe(schema)}")
        spec = parse_label_config(schema)
        project = _project(body)
        log.info(
            "setup project %s: outputs %s, prompts %s",
            project,
            [o.name for o in spec.outputs],
            [p.name for p in spec.prompts],
        )
        return jsonify({"model_version": _serving_version(project)})

    def _serving_version(project: str | None) -> str:
        """The model version serving ``project``: its promoted trained version if it was trained on
        the base model that serves now, else the base model's."""
        if project is None or description.name != "xsam":
            return description.model_version
        try:
            serving = ProjectVersions(settings.projects_dir, project).serving()
        except (BadRequest, OSError, ValueError) as exc:
            log.warning("project %s: cannot read its trained versions: %s", project, exc)
            return description.model_version
        if serving is None or serving.base_model_version != description.model_version:
            return description.model_version
        return serving.model_version

    @app.post("/predict")
    def predict() -> Response:
        body = _json_object()
        tasks = _tasks(body, settings.max_tasks_per_request)
        config = body.get("label_config")
        if not isinstance(config, str):
            raise BadRequest(f"expected 'label_config' to be the label config XML string; got {_describe(config)}")
        params = body.get("params")
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise BadRequest(f"expected 'params' to be an object; got {_describe(params)}")
        spec = parse_label_config(config)
        prompt = build_prompt(spec, params.get("context"), max_regions=settings.max_prompt_regions)
        return jsonify({"results": _predict(spec, prompt, tasks, _project(body))})

    def _predict(spec: LabelSpec, prompt: Prompt, tasks: list[dict[str, Any]], project: str | None) -> list[dict[str, Any]]:
        interactive = prompt.task is not Task.GENERIC
        kind = "interactive" if interactive else "prelabel"
        single = len(tasks) == 1
        jobs: list[PredictJob] = []
        failures: dict[int, BackendError] = {}
        for index, task in enumerate(tasks):
            try:
                jobs.append(PredictJob(_image_url(task, spec), task.get("id"), prompt, project, None))
            except BadRequest as exc:
                if single:
                    raise
                failures[index] = exc
        outcomes = iter(runner.predict(jobs, "interactive" if interactive else "prelabel") if jobs else [])
        results: list[dict[str, Any]] = []
        notes: dict[str, int] = {}
        for index in range(len(tasks)):
            error = failures.get(index)
            outcome = None if error else next(outcomes)
            if outcome is not None and outcome.error is not None:
                error = outcome.error
            if error is not None or outcome is None or outcome.result is None:
                error = error or BackendError("the worker returned neither a result nor an error")
                metrics.tasks.labels(kind, error.code).inc()
                if single and interactive:
                    raise error
                notes[f"{error.code}: {error.message}"] = notes.get(f"{error.code}: {error.message}", 0) + 1
                results.append({"result": [], "score": 0.0, "model_version": description.model_version})
                continue
            prediction = render_prediction(
                spec,
                outcome.result,
                prompt,
                tolerance_px=settings.polygon_tolerance_px,
                min_area_px=settings.min_region_area_px,
            )
            metrics.tasks.labels(kind, "ok").inc()
            metrics.regions.inc(len(prediction["result"]))
            if outcome.result.note:
                notes[outcome.result.note] = notes.get(outcome.result.note, 0) + 1
            results.append(prediction)
        for note, count in notes.items():
            log.warning("project %s: %d of %d tasks got an empty %s prediction: %s", project, count, len(tasks), kind, note)
        return results

    training = make_training_trigger(settings)

    @app.post("/webhook")
    def webhook() -> tuple[Response, int]:
        body = _json_object()
        action = body.get("action")
        if not isinstance(action, str):
            raise BadRequest(f"expected 'action' to be the event name string; got {_describe(action)}")
        decision = training.handle(body)
        log.info("webhook %s for project %s: %s", action, decision.project, decision.reason)
        return jsonify({"status": "ok", **decision.to_json()}), 200

    @app.post("/train")
    def train() -> tuple[Response, int]:
        # What Label Studio calls for "Start training" when its training-webhook flag is off: the
        # body carries every annotated task, but the job reads the project through the API (the
        # same acceptance rule as automatic training), so only the project id is used here.
        body = _json_object()
        project = _project(body)
        if project is None or not project.isdigit():
            raise BadRequest(
                f"expected 'project' to be the Label Studio project (\"<id>.<timestamp>\" or an id); "
                f"got {_describe(body.get('project'))}"
            )
        decision = training.handle({"action": "START_TRAINING", "project": project})
        log.info("train request for project %s: %s", decision.project, decision.reason)
        return jsonify({"status": "ok", **decision.to_json()}), 201

    @app.get("/versions")
    def versions() -> Response:
        # Label Studio sends the project in a JSON body on this GET; an empty body is fine here.
        body = _json_object() if request.get_data(cache=True).strip() else None
        project = _project(body) if body is not None else request.args.get("project")
        if project is None:
            return jsonify({"versions": [description.model_version], "model_version": description.model_version})
        project_versions = ProjectVersions(settings.projects_dir, project)
        trained = [
            v for v in project_versions.list() if v.base_model_version == description.model_version
        ]
        serving = _serving_version(project)
        return jsonify(
            {
                "versions": [description.model_version, *(v.model_version for v in trained)],
                "model_version": serving,
                "project": project_versions.project,
                "details": [v.summary() for v in trained],
                "training": training.status(project_versions.project),
            }
        )

    @app.get("/metrics")
    def metrics_text() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document(settings))

    app.extensions["xsam_dispatcher"] = runner
    app.extensions["xsam_training"] = training
    return app
