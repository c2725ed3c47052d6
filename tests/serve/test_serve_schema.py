"""Schemathesis against the generated OpenAPI schema: examples drawn from the schema (and just
outside it) must never give a 5xx, must get the documented status codes and response bodies, and
schema-valid requests must be accepted (except uploads: "binary" in the schema is not "an image")."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from serve_support import FakeCaptioner  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(make_app):
    return schemathesis.openapi.from_asgi("/openapi.json", make_app(captioner=FakeCaptioner()))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_conforms_to_its_schema(case):
    # the schema can say "binary" but not "an image": random bytes sent to /caption are rightly refused
    excluded = [positive_data_acceptance] if case.path == "/caption" else []
    case.call_and_validate(excluded_checks=excluded)
