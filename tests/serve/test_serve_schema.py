"""Schemathesis against the generated OpenAPI schema: examples drawn from the schema (and just
outside it) must never give a 5xx, must get the documented status codes and response bodies, and
schema-valid requests must be accepted (except uploads: "binary" in the schema is not "an image").

Schemathesis is driven through its Python API (operation -> hypothesis strategy), not its pytest
plugin, so the test does not depend on pytest internals that change between pytest releases."""
from __future__ import annotations

import pytest

from required import require_module

require_module("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
schemathesis = require_module("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from serve_support import FakeCaptioner  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(make_app):
    return schemathesis.openapi.from_asgi("/openapi.json", make_app(captioner=FakeCaptioner()))


def _operations(api_schema):
    return [result.ok() for result in api_schema.get_all_operations()]


def test_the_schema_lists_every_endpoint(api_schema):
    paths = {op.path for op in _operations(api_schema)}
    assert {"/translate", "/caption", "/health"} <= paths


def _cross_field_limits(case, response) -> list:
    """Limits the schema cannot state (each documented in a field's description), rightly refused with
    a 4xx and a message: attention weights for at most `max_attention_sentences` sentences, selected
    sentence indices below the number sent, the work budget and the answer's size cap."""
    body = case.body if isinstance(case.body, dict) else {}
    text = body.get("text")
    text = [text] if isinstance(text, str) else text
    attention = body.get("attention")
    if case.path != "/translate" or not isinstance(text, list) or attention in (None, False):
        return []
    wanted = (attention.get("sentences") if isinstance(attention, dict) else None) or range(len(text))
    message = response.text if response.status_code in (413, 422) else ""
    try:  # negative cases send sentence indices of any type
        beyond = len(set(wanted)) > 4 or (len(wanted) > 0 and max(wanted) >= len(text))
    except TypeError:
        beyond = False
    if beyond or "ask for less" in message or "units of work" in message:
        return [positive_data_acceptance]
    return []


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_api_conforms_to_its_schema(api_schema, mode):
    from schemathesis.generation import GenerationMode

    generation_mode = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    ran = 0
    for op in _operations(api_schema):
        if mode == "negative" and not (len(op.body) or len(op.query) or len(op.path_parameters)):
            continue  # nothing to get wrong in a request without inputs (GET /health)
        # the schema can say "binary" but not "an image": random bytes sent to /caption are rightly refused
        excluded = [positive_data_acceptance] if op.path == "/caption" else []

        @given(case=op.as_strategy(generation_mode=generation_mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            nonlocal ran
            ran += 1
            response = case.call()
            case.validate_response(response, excluded_checks=excluded + _cross_field_limits(case, response))

        check()
    assert ran >= 20
