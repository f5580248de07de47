"""Schemathesis against /api/openapi.json on the real server: generated valid
and invalid requests for every operation; no 5xx, every error is
problem+json, and responses conform to the published schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from tests.api_server import ApiServer, start_server
from tests.conftest import user_token


@pytest.fixture(scope="module")
def fuzz_server(database_url: str) -> Iterator[ApiServer]:
    server = start_server(database_url, AI_JOBS_MAX_ACTIVE_PER_USER="1000")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_user(fuzz_server: ApiServer, database_url: str) -> str:
    import uuid

    import psycopg

    user = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("insert into auth.users (id) values (%s)", (user,))
    return user_token(user)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ApiServer):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/api/openapi.json")
    schema.config.update(base_url=fuzz_server.url)
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors(api_schema, fuzz_user, mode) -> None:  # type: ignore[no-untyped-def]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    from ai_jobs.http.openapi import openapi_document

    documented = sum(len(ops) for ops in openapi_document()["paths"].values())
    assert len(operations) == documented - 1  # all but /api/openapi.json (schemathesis skips its own source)
    exercised = 0
    for operation in operations:
        internal = operation.path.startswith("/api/internal/")
        # internal endpoints get a wrong secret: they must refuse, never crash
        headers = {"authorization": "Bearer not-the-secret" if internal else f"Bearer {fuzz_user}"}

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])
        def check(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal exercised
            exercised += 1
            response = case.call(headers={**(case.headers or {}), **headers}, timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert response.headers["content-type"][0].startswith("application/problem+json"), response.headers
            if mode is GenerationMode.POSITIVE:
                case.validate_response(response, headers=headers, excluded_checks=[negative_data_rejection,
                                                                                    positive_data_acceptance])

        try:
            check()
        except Unsatisfiable:
            # nothing to make invalid (an operation without parameters or body)
            assert mode is GenerationMode.NEGATIVE and not operation.body and not operation.query, operation.label
    assert exercised >= 100
