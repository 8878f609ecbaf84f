"""Schemathesis against our own OpenAPI schema, in-process, with a real key: no operation answers 5xx.

One test per operation, valid and invalid data both, at most 8 examples each (derandomized, so a failure
reproduces); then a stateful run that chains operations through the document's links (create a job, then get
and cancel it; create a schedule, then patch, pause and trigger it; ...). The document describes `params`
(messages, max_tokens, ...), lists the models and marks URLs as such, so generated bodies are valid often enough
to create things. The operations are read from a throwaway app at collection time; the requests go to an app on a
committed database of its own (`fuzz_app`), with a fake DNS (`fake_dns`) so webhook URLs are judged without the
network.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.db import transaction
from service.models import Base
from tests.db import database_url

pytestmark = pytest.mark.security

_SPEC: dict[str, Any] = create_app(Settings(database_url=database_url("unused"), minimax_api_key=None)).openapi()
OPERATIONS = [
    pytest.param(method.upper(), path, id=f"{method.upper()} {path}")
    for path, ops in _SPEC["paths"].items()
    for method in ops
]
# What a scenario may create; tenants and API keys stay.
SCENARIO_TABLES = [t.name for t in Base.metadata.sorted_tables if t.name not in {"tenants", "api_keys"}]
QUIET = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app: FastAPI, fake_dns: None) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_operation_answers_5xx(fuzz_schema: schemathesis.BaseSchema, fuzz_key: str, method: str, path: str) -> None:
    operation = fuzz_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    headers = {"Authorization": f"Bearer {fuzz_key}"}

    @given(case=cases)
    @settings(QUIET, max_examples=8)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    run()


def test_stateful_chains_answer_no_5xx(
    fuzz_schema: schemathesis.BaseSchema, fuzz_key: str, fuzz_session_factory: sessionmaker[Session]
) -> None:
    """Chains of calls through the document's links (a created job, schedule or webhook endpoint's `id` to the
    operations on it): no 5xx anywhere, and the chains start from resources that really were created.

    Each scenario starts from the same empty tenant. Hypothesis requires a scenario's draws to depend only on its
    own choices; with what earlier scenarios created still there (a tenant at its webhook-endpoint maximum answers
    409, so no link is followed), a replayed scenario drew differently and the run stopped with
    FlakyStrategyDefinition instead of testing anything."""
    answered: Counter[tuple[str, int]] = Counter()
    headers = {"Authorization": f"Bearer {fuzz_key}"}

    class Workflow(fuzz_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            with transaction(fuzz_session_factory) as session:
                session.execute(text(f"TRUNCATE {', '.join(SCENARIO_TABLES)} CASCADE"))

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"headers": headers}

        def validate_response(self, response: Any, case: schemathesis.Case[Any], **kwargs: Any) -> None:
            answered[(f"{case.operation.method.upper()} {case.operation.path}", response.status_code)] += 1
            assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:500])

    Workflow.run(settings=settings(QUIET, max_examples=20, stateful_step_count=5))
    created = sum(n for (op, status), n in answered.items() if op.startswith("POST") and "{" not in op and status < 300)
    assert created > 0, sorted(answered.items())
