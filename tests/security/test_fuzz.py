"""Schemathesis against our own OpenAPI schema, in-process, with a real key: no operation answers 5xx.

One test per operation, valid and invalid data both, at most 25 examples each (derandomized, so a failure
reproduces). The operations are read from a throwaway app at collection time; the requests go to an app on a
committed database of its own (`fuzz_app`).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from service.api.app import create_app
from service.config import Settings
from tests.db import database_url

pytestmark = pytest.mark.security

_SPEC: dict[str, Any] = create_app(
    Settings(database_url=database_url("unused"), minimax_api_key=None)
).openapi()
OPERATIONS = [
    pytest.param(method.upper(), path, id=f"{method.upper()} {path}")
    for path, ops in _SPEC["paths"].items()
    for method in ops
]


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_operation_answers_5xx(fuzz_schema: schemathesis.BaseSchema, fuzz_key: str, method: str, path: str) -> None:
    operation = fuzz_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    headers = {"Authorization": f"Bearer {fuzz_key}"}

    @given(case=cases)
    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    run()
