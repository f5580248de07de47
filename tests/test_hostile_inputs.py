"""Hostile inputs from a caller with a valid account: each is refused at the door
with a 4xx problem+json (or fails only its own job), and another user's jobs are
unaffected. Real PostgreSQL, real sockets against `ai-jobs serve`, a real JWKS
server on loopback; only the Anthropic API is mocked (at the HTTP layer)."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from werkzeug.test import Client

from ai_jobs.claude.client import reset_clients
from ai_jobs.http.app import App, create_app
from ai_jobs.http.services import Services
from ai_jobs.models import JobStatus, NewJob
from ai_jobs.registry import InputValidationError, load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.settings import Settings
from ai_jobs.store.base import JobStore
from tests.anthropic_wire import MESSAGES_URL, stream_response
from tests.api_server import ApiServer, start_server
from tests.conftest import JWT_SECRET, user_token

PROBLEM = "application/problem+json"
QUICK = {"steps": 1, "step_seconds": 0}
TOMORROW = (datetime.now(UTC) + timedelta(days=1)).isoformat()  # created, never run here


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == PROBLEM
    assert response.json["code"] == code and response.json["status"] == status, response.json
    return response.json


def app_for(database_url: str, **settings: Any) -> tuple[App, Services]:
    base: dict[str, Any] = dict(store="postgres", database_url=database_url, jwt_secret=JWT_SECRET,
                                worker_budget_seconds=1)
    services = Services(settings=Settings(**{**base, **settings}), registry=load_job_modules())
    return create_app(services), services


@pytest.fixture()
def api(database_url: str) -> Iterator[Client]:
    app, services = app_for(database_url)
    yield app.test_client()
    services.close()


def bearer(user: uuid.UUID, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(user, **claims)}"}


def create_countdown(client: Client, user: uuid.UUID) -> Any:
    return client.post("/api/jobs", json={"type": "example.countdown", "input": QUICK}, headers=bearer(user))


# -- 1. a row the worker cannot parse fails alone ---------------------------------------


def test_unreadable_row_fails_alone_and_the_rest_of_its_batch_runs(store: JobStore, db: psycopg.Connection,
                                                                   make_user: Callable[[], uuid.UUID]) -> None:
    """A pending row whose (schema-valid) error the Job model refuses, claimed in one
    batch of 4 with three other users' jobs: it is failed on its own as
    unreadable_row, and the other three complete (nothing stays leased)."""
    mallory = make_user()
    bad_id = db.execute(
        "insert into public.ai_jobs (user_id, job_type, input, error) values (%s, 'example.countdown', %s, %s) "
        "returning id",
        (mallory, json.dumps(QUICK), json.dumps({"code": "", "message": "x" * 5000, "retryable": True})),
    ).fetchone()[0]
    others = [store.enqueue(NewJob(user_id=make_user(), job_type="example.countdown", input=QUICK)).job.id
              for _ in range(3)]

    outcomes = Runner(store, load_job_modules()).run_available(batch=4, max_jobs=4)

    assert sorted((o.job_id, o.kind) for o in outcomes) == sorted((job_id, "completed") for job_id in others)
    for job_id in others:
        assert store.get(job_id).status is JobStatus.COMPLETED
    status, error, locked_by = db.execute(
        "select status, error, locked_by from public.ai_jobs where id = %s", (bad_id,)).fetchone()
    assert status == "failed" and locked_by is None
    assert error["code"] == "unreadable_row" and error["retryable"] is False
    assert "error.code" in error["message"] and "error.message" in error["message"]
    assert store.get(bad_id).error.code == "unreadable_row"  # the row is readable again


def test_unregistered_type_and_bad_input_fail_without_retries(pg_store: JobStore, db: psycopg.Connection,
                                                              make_user: Callable[[], uuid.UUID]) -> None:
    """Rows written around the API: a type this deployment does not register, and an
    input the type's model refuses. Each fails at once (not retried); a third user's
    job in the same batch completes."""
    gone = db.execute("insert into public.ai_jobs (user_id, job_type) values (%s, 'retired.type') returning id",
                      (make_user(),)).fetchone()[0]
    bad_input = db.execute(
        "insert into public.ai_jobs (user_id, job_type, input) values (%s, 'example.countdown', %s) returning id",
        (make_user(), json.dumps({"steps": "many"}))).fetchone()[0]
    fine = pg_store.enqueue(NewJob(user_id=make_user(), job_type="example.countdown", input=QUICK)).job.id
    runner = Runner(pg_store, load_job_modules())
    claimed = pg_store.claim(runner.worker_id, limit=3)  # no type filter: the retired type is claimed too
    outcomes = {job.id: runner.run_claimed(job) for job in claimed}
    assert {job_id: (o.kind, o.error_code) for job_id, o in outcomes.items()} == {
        gone: ("failed", "unknown_job_type"), bad_input: ("failed", "invalid_input"), fine: ("completed", None),
    }
    assert pg_store.get(gone).attempts == 1 and not pg_store.get(gone).error.retryable


# -- 2. demo job types only with the setting ------------------------------------------------


def test_demo_types_are_not_served_in_production(database_url: str, pg_store: JobStore,
                                                 make_user: Callable[[], uuid.UUID],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AI_JOBS_DEMO_JOB_TYPES", raising=False)
    app, services = app_for(database_url)  # the registry a deployment loads: no demo types
    try:
        client = app.test_client()
        alice, bob = make_user(), make_user()
        refused = assert_problem(create_countdown(client, alice), 422, "unknown_job_type")
        assert "example.countdown" in refused["detail"]
        assert "example.countdown" not in {t["type"] for t in client.get("/api/job-types").json["job_types"]}
        real = client.post("/api/jobs", headers=bearer(bob), json={"type": "ai.generate", "input": {"prompt": "hi"}})
        assert real.status_code == 202, real.json
        assert pg_store.list(user_id=alice).jobs == []
        # a production worker never claims a demo job that got into the table some other way
        stray = pg_store.enqueue(NewJob(user_id=alice, job_type="example.countdown", input=QUICK)).job.id
        assert "example.countdown" not in services.registry.types()
        assert "example.countdown" not in load_job_modules().types()
        claimed = pg_store.claim("prod-worker", limit=10, job_types=services.registry.types())
        assert stray not in {job.id for job in claimed}
        assert pg_store.get(stray).status is JobStatus.PENDING
    finally:
        services.close()


def test_demo_types_with_the_setting_and_their_sleep_is_capped(api: Client,
                                                               make_user: Callable[[], uuid.UUID],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from ai_jobs import cli

    alice, bob = make_user(), make_user()
    assert create_countdown(api, bob).status_code == 202  # AI_JOBS_DEMO_JOB_TYPES=1 (the test suite's setting)
    for steps, seconds in ((1000, 60), (601, 1), (11, 60)):  # 16.7 h, 601 s, 660 s of sleep
        r = api.post("/api/jobs", headers=bearer(alice),
                     json={"type": "example.countdown", "input": {"steps": steps, "step_seconds": seconds}})
        body = assert_problem(r, 422, "invalid_input")
        assert "600 s" in json.dumps(body)
    with pytest.raises(InputValidationError):
        load_job_modules(demo=True).new_job(alice, "example.countdown", {"steps": 1000, "step_seconds": 60})
    ok = api.post("/api/jobs", headers=bearer(alice),
                  json={"type": "example.countdown", "input": {"steps": 600, "step_seconds": 1}, "run_at": TOMORROW})
    assert ok.status_code == 202, ok.json
    # `ai-jobs dev` turns the setting on (so do job commands on the embedded dev
    # database); `serve`, or a worker on a configured database, do not
    monkeypatch.delenv("AI_JOBS_DEMO_JOB_TYPES", raising=False)
    configured = Settings(store="postgres", database_url="postgresql:///x")
    for command, settings in (("serve", configured), ("worker", configured), ("serve", Settings())):
        cli._demo_job_types(command, settings)
        assert "AI_JOBS_DEMO_JOB_TYPES" not in os.environ, command
    for command, settings in (("dev", configured), ("enqueue", Settings())):
        cli._demo_job_types(command, settings)
        assert os.environ.pop("AI_JOBS_DEMO_JOB_TYPES") == "1", command
    monkeypatch.setenv("AI_JOBS_DEMO_JOB_TYPES", "0")  # an explicit choice wins, even under dev
    cli._demo_job_types("dev", configured)
    assert os.environ["AI_JOBS_DEMO_JOB_TYPES"] == "0"


# -- 3. JSON Schema $ref ------------------------------------------------------------------------


@pytest.fixture()
def schema_host() -> Iterator[tuple[str, list[str]]]:
    """A server a remote $ref would point at: it records each fetch and answers slowly."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            time.sleep(2)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/schema+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()
    server.server_close()


def extract_input(schema: dict[str, Any]) -> dict[str, Any]:
    return {"text": "Ada Lovelace, 36", "schema": schema}


def test_remote_ref_refused_at_create(api: Client, make_user: Callable[[], uuid.UUID],
                                      schema_host: tuple[str, list[str]]) -> None:
    url, hits = schema_host
    alice, bob = make_user(), make_user()
    cases = {
        "/properties/name/$ref": {"type": "object", "properties": {"name": {"$ref": f"{url}/name.json"}}},
        "/$defs/a~1b/items/$ref": {"$defs": {"a/b": {"items": {"$ref": "other.json#/x"}}}, "$ref": "#/$defs/a~1b"},
        "/anyOf/1/$dynamicRef": {"anyOf": [{"type": "null"}, {"$dynamicRef": f"{url}/d.json#meta"}]},
    }
    for pointer, schema in cases.items():
        r = api.post("/api/jobs", headers=bearer(alice), json={"type": "ai.extract", "input": extract_input(schema)})
        body = assert_problem(r, 422, "invalid_input")
        assert body["errors"][0]["field"] == "input.schema" and pointer in body["errors"][0]["message"], body
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(11):  # 23 levels: within the body's limit (32), over the schema's (20)
        deep = {"type": "object", "properties": {"a": deep}}
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(700)}}
    odd_dialects = [({"$schema": value, "type": "object"}, "$schema must be a string") for value in (5, True, [1], {})]
    for schema, why in ((deep, "nested deeper"), (huge, "larger than"), *odd_dialects):
        r = api.post("/api/jobs", headers=bearer(alice), json={"type": "ai.extract", "input": extract_input(schema)})
        assert why in assert_problem(r, 422, "invalid_input")["errors"][0]["message"]
    local = {"$defs": {"name": {"type": "string"}}, "type": "object", "properties": {"name": {"$ref": "#/$defs/name"}}}
    assert api.post("/api/jobs", headers=bearer(bob),
                    json={"type": "ai.extract", "input": extract_input(local)}).status_code == 202
    assert hits == []


def test_schema_patterns_that_cannot_match_in_linear_time_are_refused_at_create(
        api: Client, make_user: Callable[[], uuid.UUID]) -> None:
    """Compiled with Python's `re`, a repetition count over its limit raised OverflowError
    and deep group nesting RecursionError: a 500 from POST /api/jobs and /api/schedules.
    Every pattern now goes through RE2; what RE2 cannot do in linear time is a 422."""
    user = make_user()
    for schema in ({"type": "string", "pattern": "a{4294967296}"},  # RE2 reads an over-long count as literal text
                   {"type": "object", "patternProperties": {"a{99999999999}": {}}}):
        for path, body, created in (
                ("/api/jobs", {"type": "ai.extract", "input": extract_input(schema)}, 202),
                ("/api/schedules", {"type": "ai.extract", "cron": "@daily", "input": extract_input(schema)}, 201)):
            assert api.post(path, headers=bearer(user), json=body).status_code == created
    cases = {
        "(?=": {"type": "string", "pattern": "^(?=a)a+$"},  # lookahead
        "longer than": {"type": "string", "pattern": "(" * 600 + ")" * 600},
        "unevaluatedProperties": {"type": "object", "patternProperties": {"^a": {}}, "unevaluatedProperties": False},
    }
    for why, schema in cases.items():
        for path, body in (("/api/jobs", {"type": "ai.extract", "input": extract_input(schema)}),
                           ("/api/schedules", {"type": "ai.extract", "cron": "@daily", "input": extract_input(schema)})):
            problem = assert_problem(api.post(path, headers=bearer(user), json=body), 422, "invalid_input")
            assert why in problem["errors"][0]["message"], (path, problem)
    fine = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-\\d+$"}},
            "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False}
    assert api.post("/api/jobs", headers=bearer(user),
                    json={"type": "ai.extract", "input": extract_input(fine)}).status_code == 202


def test_reply_patterns_are_matched_in_linear_time() -> None:
    """`^(\\w+\\s?)*$` on 60 characters that do not match: Python's `re` backtracks for
    longer than the universe's age (about 2^60 steps) while holding the GIL, so the
    worker's heartbeat stopped and the job was reaped and run twice. With RE2 the
    validation ends, whatever its speed; the semantics of the keywords are kept."""
    from ai_jobs.jobs.ai import check_user_schema, schema_validator

    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(\\w+\\s?)*$"}},
              "patternProperties": {"^(a+)+$": {"type": "integer"}}, "additionalProperties": False}
    check_user_schema(schema)
    validator = schema_validator(schema)
    slow = {"s": "word " * 11 + "an ordinary sentence!", "a" * 40 + "!": 1}
    found: list[list[str]] = []
    worker = threading.Thread(target=lambda: found.append(sorted(e.message for e in validator.iter_errors(slow))),
                              daemon=True)
    worker.start()
    worker.join(30)
    assert found, "matching the reply's patterns did not end"
    assert any("does not match" in m for m in found[0]) and any("Additional properties" in m for m in found[0])
    assert list(validator.iter_errors({"s": "two words", "aaa": 3})) == []  # a patternProperties key is not extra
    assert [e.message for e in validator.iter_errors({"aaa": "x"})] == ["'x' is not of type 'integer'"]


@pytest.mark.httpx2(assert_all_called=False)
def test_a_remote_ref_already_in_the_table_is_never_fetched(pg_store: JobStore, db: psycopg.Connection,
                                                           make_user: Callable[[], uuid.UUID],
                                                           schema_host: tuple[str, list[str]],
                                                           httpx2_mock: respx.Router,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A job written around the API (or before this check existed) with a remote $ref:
    it fails at once as invalid input, and neither the worker nor our validator ever
    contacts the URL (jsonschema's default registry would fetch it, with no timeout)."""
    url, hits = schema_host
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    reset_clients()
    claude = httpx2_mock.post(MESSAGES_URL).mock(return_value=stream_response('{"name": "Ada"}'))
    schema = {"type": "object", "properties": {"name": {"$ref": f"{url}/name.json"}}}
    job_id = db.execute("insert into public.ai_jobs (user_id, job_type, input) values (%s, 'ai.extract', %s) "
                        "returning id", (make_user(), json.dumps(extract_input(schema)))).fetchone()[0]
    other = pg_store.enqueue(NewJob(user_id=make_user(), job_type="example.countdown", input=QUICK)).job.id
    started = time.monotonic()
    Runner(pg_store, load_job_modules()).run_available(batch=2, max_jobs=2)
    assert time.monotonic() - started < 1.5
    job = pg_store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "invalid_input" and not job.error.retryable
    assert pg_store.get(other).status is JobStatus.COMPLETED
    assert claude.call_count == 0 and hits == []
    # every validator we build resolves references without any retrieval
    from ai_jobs.jobs.ai import schema_validator

    for remote in ({"$ref": f"{url}/x.json"}, {"$id": f"{url}/root.json", "$ref": "sibling.json"}):
        with pytest.raises(Exception, match="Unresolvable"):
            list(schema_validator(remote).iter_errors("Ada"))
    assert hits == []
    reset_clients()


# -- 4. a token whose alg does not match its key -----------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
HMAC_SECRET = "legacy-secret-legacy-secret-legacy-secret!"


def _jwk(public_key: Any, kid: str, alg: str | None) -> dict[str, Any]:
    algorithm = ECAlgorithm if isinstance(public_key, ec.EllipticCurvePublicKey) else RSAAlgorithm
    return {**algorithm.to_jwk(public_key, as_dict=True), "kid": kid, "use": "sig", **({"alg": alg} if alg else {})}


@dataclass
class Jwks:
    url: str
    keys: list[dict[str, Any]]
    hits: list[float]


@pytest.fixture()
def jwks() -> Iterator[Jwks]:
    """A JWKS endpoint on loopback, serving whatever `keys` holds at each request."""
    state = Jwks("", [
        _jwk(RSA_KEY.public_key(), "rsa-1", "RS256"),
        _jwk(EC_KEY.public_key(), "ec-1", "ES256"),
        _jwk(EC_KEY.public_key(), "ec-no-alg", None),
        _jwk(RSA_KEY.public_key(), "rsa-pss", "PS256"),
    ], [])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state.hits.append(time.monotonic())
            body = json.dumps({"keys": state.keys}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_port}/auth/v1/.well-known/jwks.json"
    yield state
    server.shutdown()
    server.server_close()


def claims_for(user: uuid.UUID) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": str(user), "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 600}


def _segment(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"\x01" * 64) -> str:
    return f"{_segment(header)}.{_segment(claims)}.{_segment(signature)}"


def hs256_with(secret: bytes | str, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token signed with HMAC-SHA256 under an arbitrary header (PyJWT refuses to sign
    with a PEM public key as the secret, so sign by hand)."""
    import hashlib
    import hmac

    signing_input = f"{_segment(header)}.{_segment(claims)}"
    key = secret.encode() if isinstance(secret, str) else secret
    return f"{signing_input}.{_segment(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def test_alg_that_does_not_match_its_key_is_401(database_url: str, jwks: Jwks,
                                                make_user: Callable[[], uuid.UUID]) -> None:
    alice, bob = make_user(), make_user()
    c = claims_for(alice)
    ec_pem = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwks_only = [
        ("RS256 header, kid of an EC key", forged({"alg": "RS256", "kid": "ec-1"}, c)),
        ("ES256 header, kid of an RSA key", forged({"alg": "ES256", "kid": "rsa-1"}, c)),
        ("RS256 signed by the RSA key, kid of an EC key without alg",
         jwt.encode(c, RSA_KEY, algorithm="RS256", headers={"kid": "ec-no-alg"})),
        ("RS256 header, JWK says PS256 (same RSA key)",
         jwt.encode(c, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-pss"})),
        ("HS256 token, only the JWKS configured", hs256_with(HMAC_SECRET, {"alg": "HS256", "typ": "JWT"}, c)),
        ("HS256 signed with the EC public key", hs256_with(ec_pem, {"alg": "HS256", "kid": "ec-1"}, c)),
        ("alg none", forged({"alg": "none", "typ": "JWT"}, c, b"")),
        ("alg as a list", forged({"alg": ["RS256"], "kid": "rsa-1"}, c)),
        ("EdDSA header, kid of an EC key", forged({"alg": "EdDSA", "kid": "ec-1"}, c)),
    ]
    both = [
        ("ES256 header signed with the HMAC secret",
         hs256_with(HMAC_SECRET, {"alg": "ES256", "kid": "ec-1"}, c)),
        ("HS256 signed with the EC public key", hs256_with(ec_pem, {"alg": "HS256", "kid": "ec-1"}, c)),
        ("RS256 header, kid of an EC key", forged({"alg": "RS256", "kid": "ec-1"}, c)),
    ]
    for secret, cases in ((None, jwks_only), (HMAC_SECRET, both)):
        app, services = app_for(database_url, jwt_secret=secret, jwks_url=jwks.url)
        try:
            client = app.test_client()
            for name, token in cases:
                r = client.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 401, (name, r.status_code, r.data[:200])
                assert r.mimetype == PROBLEM and r.json["code"] == "unauthorized", name
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="ai-jobs"'
            good = jwt.encode(claims_for(bob), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
            r = client.post("/api/jobs", headers={"Authorization": f"Bearer {good}"},
                            json={"type": "example.countdown", "input": QUICK})
            assert r.status_code == 202, r.json
        finally:
            services.close()


# -- 5. keys removed from the JWKS stop working ----------------------------------------------------


def test_removed_key_stops_working_within_the_cache_ttl(database_url: str, jwks: Jwks,
                                                       make_user: Callable[[], uuid.UUID]) -> None:
    settings = Settings.from_env({"AI_JOBS_JWKS_CACHE_SECONDS": "1", "SUPABASE_JWKS_URL": jwks.url,
                                  "DATABASE_URL": database_url, "AI_JOBS_WORKER_BUDGET_SECONDS": "1"})
    services = Services(settings=settings, registry=load_job_modules())
    app = create_app(services)
    try:
        client = app.test_client()
        alice, bob = make_user(), make_user()
        rsa_token = jwt.encode(claims_for(alice), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
        ec_token = jwt.encode(claims_for(bob), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
        assert client.get("/api/jobs", headers={"Authorization": f"Bearer {rsa_token}"}).status_code == 200
        jwks.keys = [k for k in jwks.keys if k["kid"] != "rsa-1"]  # the project revokes its RSA key
        time.sleep(1.3)
        r = client.get("/api/jobs", headers={"Authorization": f"Bearer {rsa_token}"})
        assert r.status_code == 401 and r.mimetype == PROBLEM, r.data
        assert client.get("/api/jobs", headers={"Authorization": f"Bearer {ec_token}"}).status_code == 200
    finally:
        services.close()


def test_random_kids_do_not_storm_the_jwks_endpoint(database_url: str, jwks: Jwks) -> None:
    app, services = app_for(database_url, jwt_secret=None, jwks_url=jwks.url)
    try:
        client = app.test_client()
        for _ in range(50):
            token = jwt.encode(claims_for(uuid.uuid4()), EC_KEY, algorithm="ES256",
                               headers={"kid": uuid.uuid4().hex})
            assert client.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert 1 <= len(jwks.hits) <= 2, len(jwks.hits)  # the first fetch, at most one refetch per 30 s
    finally:
        services.close()


# -- 7. Supabase anonymous users -------------------------------------------------------------------


def test_anonymous_users_are_refused_unless_allowed(database_url: str, api: Client, pg_store: JobStore,
                                                     make_user: Callable[[], uuid.UUID]) -> None:
    anon, bob = make_user(), make_user()
    for method, path in (("POST", "/api/jobs"), ("GET", "/api/jobs"), ("GET", f"/api/jobs/{uuid.uuid4()}")):
        r = api.open(path, method=method, headers=bearer(anon, is_anonymous=True),
                     json={"type": "example.countdown", "input": QUICK} if method == "POST" else None)
        assert_problem(r, 403, "anonymous_not_allowed")
    assert create_countdown(api, bob).status_code == 202
    assert api.post("/api/jobs", headers=bearer(bob, is_anonymous=False),
                    json={"type": "example.countdown", "input": QUICK}).status_code == 202
    assert pg_store.list(user_id=anon).jobs == []
    allowed = Settings.from_env({"AI_JOBS_ALLOW_ANONYMOUS": "1", "DATABASE_URL": database_url})
    app, services = app_for(database_url, allow_anonymous=allowed.allow_anonymous)
    try:
        r = app.test_client().post("/api/jobs", headers=bearer(anon, is_anonymous=True),
                                   json={"type": "example.countdown", "input": QUICK})
        assert r.status_code == 202, r.json
    finally:
        services.close()


# -- 6 and 8: over a real socket, against `ai-jobs serve` -------------------------------------------


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ApiServer]:
    srv = start_server(database_url)
    yield srv
    srv.stop()


def _address(server: ApiServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def _read_response(sock: socket.socket) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(lines[0].split()[1]), headers, body)


def raw_request(server: ApiServer, request: bytes) -> RawResponse:
    with socket.create_connection(_address(server), timeout=20) as sock:
        sock.sendall(request)
        return _read_response(sock)


def _memory_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_chunked_body_refused_while_it_is_still_arriving(server: ApiServer, make_user: Callable[[], uuid.UUID]) -> None:
    """64 MiB announced as chunked and sent slowly against a 256 KiB limit: the 413
    arrives after a few hundred KiB, long before the client is done, and the server's
    peak memory does not grow with the body."""
    alice, bob = make_user(), make_user()
    token = user_token(alice)
    assert server.client(token).get("/api/jobs").status_code == 200  # warm: imports and pool in place
    peak_before = _memory_peak_kib(server.process.pid)
    chunk, total = 64 * 1024, 64 * 1024 * 1024
    answered = threading.Event()
    responses: list[RawResponse] = []
    sent = 0
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(
            b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\n".encode() + b"Transfer-Encoding: chunked\r\n\r\n"
        )

        def read() -> None:
            try:
                responses.append(_read_response(sock))
            finally:
                answered.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        piece = f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n"
        try:
            while sent < total and not answered.is_set():
                sock.sendall(piece)
                sent += chunk
                time.sleep(0.005)
        except OSError:
            pass  # the server closed the connection after answering
        answered.wait(20)
    assert responses, "no response"
    response = responses[0]
    assert response.status == 413 and response.headers["content-type"] == PROBLEM, response
    assert response.json["code"] == "body_too_large"
    assert sent < 16 * 1024 * 1024, f"the 413 came only after {sent} bytes"
    grew_mib = (_memory_peak_kib(server.process.pid) - peak_before) / 1024
    assert grew_mib < 16, f"server peak memory grew {grew_mib:.1f} MiB"
    # a Content-Length over the limit is refused before any body byte is sent
    early = raw_request(server, b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                        + f"Authorization: Bearer {token}\r\nContent-Length: {total}\r\n\r\n".encode())
    assert early.status == 413 and early.json["code"] == "body_too_large"
    created = server.client(user_token(bob)).post("/api/jobs", json={"type": "example.countdown", "input": QUICK})
    assert created.status_code == 202, created.text


def test_oversized_headers_get_problem_json(server: ApiServer, make_user: Callable[[], uuid.UUID]) -> None:
    alice, bob = make_user(), make_user()
    token = user_token(alice)

    def get(extra: bytes, target: bytes = b"/api/jobs") -> RawResponse:
        return raw_request(server, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + extra + b"\r\n")

    cases = [
        # the app: an Authorization header over 8 KiB, all headers over 32 KiB
        ("Authorization over 8 KiB", get(b"Authorization: Bearer " + b"a" * 9000 + b"\r\n"), 431, "header_too_large"),
        ("headers over 32 KiB", get(f"Authorization: Bearer {token}\r\n".encode()
                                    + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(40))),
         431, "header_too_large"),
        # the server itself (http.server's limits), before the app
        ("a header line over 64 KiB", get(b"X-Big: " + b"b" * 70_000 + b"\r\n"), 431, "header_too_large"),
        ("more than 100 headers", get(b"".join(b"X-H%d: 1\r\n" % i for i in range(120))), 431, "header_too_large"),
        ("a request line over 64 KiB", get(b"", b"/api/jobs?" + b"q" * 70_000), 414, "uri_too_long"),
        ("a malformed request line", raw_request(server, b"NONSENSE\r\n\r\n"), 400, "bad_request"),
    ]
    for name, response, status, code in cases:
        assert response.status == status, (name, response.status, response.body[:200])
        assert response.headers["content-type"] == PROBLEM, (name, response.headers)
        body = response.json
        assert body["code"] == code and body["status"] == status and body["type"] == f"urn:ai-jobs:problem:{code}", name
    assert server.client(user_token(bob)).post("/api/jobs", json={"type": "example.countdown",
                                                                   "input": QUICK}).status_code == 202
