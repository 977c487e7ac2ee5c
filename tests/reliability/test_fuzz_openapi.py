"""Schema-driven fuzzing: schemathesis generates requests from our own ``/openapi.json``.

Positive mode sends bodies that match the document (checked against the documented statuses and
response schemas); negative mode sends bodies that violate it (wrong types, missing fields, lists
over the limits). Every request goes through the Flask app's WSGI interface in-process. No answer
may be a 5xx, and every 4xx must carry a message that names the problem.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from reliability_support import assert_clear_error, make_app
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

pytestmark = pytest.mark.fuzz

# Examples per (operation, mode); operations without inputs have a single possible request.
EXAMPLES = {"POST /predict": 100, "POST /setup": 160, "POST /webhook": 160}


@pytest.fixture(scope="module")
def app(fuzz_root: Path) -> Flask:
    # Small limits, so negative examples over them are cheap to generate.
    return make_app(fuzz_root, max_tasks_per_request=20, max_prompt_regions=8)


@pytest.fixture(scope="module")
def schema(app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def test_document_lists_every_route_of_the_app(app: Flask, schema: Any) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    served = {
        (rule.rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented
    assert document["paths"]["/health"]["get"]["security"] == []
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert {"POST /predict", "POST /setup", "POST /webhook", "GET /health"} <= labels


def test_document_requires_basic_auth_when_configured(fuzz_root: Path) -> None:
    app = make_app(fuzz_root, basic_auth_user="ann", basic_auth_pass="pw")
    client = app.test_client()
    assert client.get("/openapi.json").status_code == 401
    document = client.get("/openapi.json", headers={"Authorization": "Basic YW5uOnB3"}).get_json()
    assert document["security"] == [{"basicAuth": []}]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "PATCH /api/webhooks" in document["components"]["securitySchemes"]["basicAuth"]["description"]


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz_operation(
    app: Flask, operation: Any, mode: GenerationMode, checks: list[Any], counts: Counter[str]
) -> None:
    """Send ``EXAMPLES[operation]`` generated requests for one operation and check every answer."""

    @settings(
        max_examples=EXAMPLES.get(operation.label, 1),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(app=app)
        counts[operation.label] += 1
        case.validate_response(response, checks=checks)
        if response.status_code >= 400:
            assert_clear_error(response.status_code, response.content, f"{operation.label} {mode.value}")

    run()


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"]
)
def test_generated_requests_get_no_5xx_and_clear_4xx(
    app: Flask, schema: Any, mode: GenerationMode, fuzz_counter: Counter[str]
) -> None:
    checks = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:
        # Valid requests must also get the statuses and bodies the document promises.
        checks += [status_code_conformance, response_schema_conformance]
    counts: Counter[str] = Counter()
    for operation in _operations(schema):
        try:
            _fuzz_operation(app, operation, mode, checks, counts)
        except Unsatisfiable:
            # Nothing in an operation without parameters or body can be made invalid.
            assert mode is GenerationMode.NEGATIVE and operation.label.startswith("GET ")
    fuzz_counter[f"schemathesis {mode.value}"] += sum(counts.values())
    for label, examples in EXAMPLES.items():
        assert counts[label] >= 0.9 * examples, counts
