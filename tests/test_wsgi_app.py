"""The WSGI app itself (ai_jobs.http.app, werkzeug without Flask): routing answers
(404, also for doubled slashes, 405 with Allow, OPTIONS, HEAD), the order of the checks and
error handlers, and public/ files. No database: the store points at a closed port."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from werkzeug.test import Client

from ai_jobs.errors import StoreUnavailableError
from ai_jobs.http.app import App, create_app
from ai_jobs.http.io import ApiRequest, json_response
from ai_jobs.http.problems import PROBLEM_JSON, Problem
from ai_jobs.http.services import Services
from ai_jobs.settings import Settings
from tests.conftest import JWT_SECRET, unused_port, user_token


def make_app(*, serve_public: bool = False, **settings: object) -> App:
    url = f"postgresql://postgres@127.0.0.1:{unused_port()}/postgres"
    base = {"database_url": url, "db_timeout_seconds": 0.3, "jwt_secret": JWT_SECRET, **settings}
    return create_app(Services(settings=Settings(**base)), serve_public=serve_public)


@pytest.fixture(scope="module")
def client() -> Client:
    return make_app().test_client()


def problem(response) -> dict:
    assert response.mimetype == PROBLEM_JSON, response.data[:200]
    return response.get_json()


def test_unknown_path_is_a_404_problem(client: Client) -> None:
    for path in ("/nope", "/api/nope", "/api/jobs/", "/API/health"):
        r = client.get(path)
        assert r.status_code == 404 and problem(r)["code"] == "not_found", path


def test_wrong_method_is_a_405_problem_with_allow(client: Client) -> None:
    r = client.post("/api/health")
    assert r.status_code == 405 and problem(r)["code"] == "method_not_allowed"
    assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    r = client.put(f"/api/jobs/{uuid.uuid4()}")
    assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD", "DELETE", "OPTIONS"}


def test_options_lists_the_methods_and_head_sends_no_body(client: Client) -> None:
    r = client.options("/api/jobs")
    assert r.status_code == 200 and r.data == b""
    assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    get, head = client.get("/api/job-types"), client.head("/api/job-types")
    assert get.status_code == head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


def test_doubled_slashes_are_a_404_problem_not_a_redirect(client: Client) -> None:
    """werkzeug's merge_slashes answered these with a 308 text/html page whose Location
    came from the client's Host header."""
    for method, path in (("GET", "/api//jobs"), ("GET", "/api//health"), ("POST", "/api//jobs"),
                         ("GET", f"/api/jobs//{uuid.uuid4()}"), ("HEAD", "/api//job-types"), ("GET", "/api/jobs//")):
        r = client.open(path, method=method, headers={"Host": "evil.example"})
        assert r.status_code == 404 and "Location" not in r.headers, (method, path, r.status_code)
        assert r.mimetype == PROBLEM_JSON, (method, path, r.mimetype)
        if method != "HEAD":
            assert problem(r)["code"] == "not_found", (method, path)


def test_header_check_comes_before_the_cors_preflight_and_routing() -> None:
    c = make_app(cors_origins=("https://app.example",)).test_client()
    big = {"Authorization": "Bearer " + "a" * 9000}
    for method, path, headers in (("OPTIONS", "/api/jobs", {"Origin": "https://app.example",
                                                            "Access-Control-Request-Method": "POST"}),
                                  ("GET", "/api/nope", {}), ("POST", "/api/health", {})):
        r = c.open(path, method=method, headers={**headers, **big})
        assert r.status_code == 431 and problem(r)["code"] == "header_too_large", (method, path)
    pre = c.options("/api/jobs", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_handlers_get_services_and_path_args_and_errors_map_in_order(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    seen: dict[str, object] = {}

    def echo(request: ApiRequest):
        seen.update(services=request.services, args=dict(request.view_args))
        kind = request.view_args["kind"]
        if kind == "problem":
            raise Problem(409, "custom", "a problem")
        if kind == "queue":
            raise StoreUnavailableError("down")
        if kind == "boom":
            raise RuntimeError("secret detail")
        return json_response({"kind": kind})

    app.add_route("/test/<kind>", ["GET"], echo)
    c = app.test_client()
    assert c.get("/test/ok").get_json() == {"kind": "ok"}
    assert seen == {"services": app.services, "args": {"kind": "ok"}}
    assert problem(c.get("/test/problem"))["code"] == "custom"
    r = c.get("/test/queue")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    with caplog.at_level(logging.ERROR, logger="ai_jobs.http"):
        r = c.get("/test/boom")
    body = problem(r)
    assert r.status_code == 500 and body["code"] == "internal_error" and "secret" not in json.dumps(body)
    assert "unhandled error on GET /test/boom" in caplog.text


def test_the_database_down_is_a_503_problem(client: Client) -> None:
    r = client.get("/api/jobs", headers={"Authorization": f"Bearer {user_token(uuid.uuid4())}"})
    assert r.status_code == 503 and problem(r)["code"] == "store_unavailable"


def test_public_files_with_their_types_and_404s() -> None:
    c = make_app(serve_public=True).test_client()
    index = c.get("/")
    assert index.status_code == 200 and index.mimetype == "text/html"
    assert c.get("/index.html").data == index.data
    assert c.get("/demo.css").mimetype == "text/css"
    assert c.get("/ai-jobs.js").mimetype == "text/javascript"
    for path in ("/missing.js", "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/api/nope"):
        r = c.get(path)
        assert r.status_code == 404 and problem(r)["code"] == "not_found", path
    r = c.post("/index.html")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


def test_a_job_module_that_fails_to_import_fails_the_create_not_the_app(monkeypatch, database_url, make_user) -> None:
    """The job types load on the first request that needs them: a bad AI_JOBS_JOB_MODULES
    leaves the app up (health answers), the create gets a 500 problem naming the setting,
    and the next request tries again (a fixed module needs no new instance)."""
    monkeypatch.setenv("AI_JOBS_JOB_MODULES", "no_such_module_for_ai_jobs.jobs")
    c = make_app(database_url=database_url, store="postgres").test_client()
    assert c.get("/api/health").status_code == 200
    headers = {"Authorization": f"Bearer {user_token(make_user())}"}
    body = {"type": "ai.generate", "input": {"prompt": "hello"}}
    response = c.post("/api/jobs", json=body, headers=headers)
    assert response.status_code == 500 and response.mimetype == PROBLEM_JSON
    assert problem(response)["code"] == "job_types_unavailable" and "AI_JOBS_JOB_MODULES" in problem(response)["detail"]
    monkeypatch.setenv("AI_JOBS_JOB_MODULES", "")
    assert c.post("/api/jobs", json=body, headers=headers).status_code == 202
