"""CORS (AI_JOBS_CORS_ORIGINS) against the real server: preflights, actual
responses including errors, disallowed origins, internal routes, and the
same-origin-only default."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from ai_jobs.http.app import create_app
from ai_jobs.http.services import Services
from ai_jobs.settings import Settings
from tests.api_server import CRON_SECRET, WORKER_SECRET, ApiServer, start_server
from tests.conftest import user_token

ALLOWED = "https://app.example.com"
OTHER_ALLOWED = "http://localhost:3000"
STRANGER = "https://evil.example.net"


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ApiServer]:
    srv = start_server(database_url, AI_JOBS_CORS_ORIGINS=f" {ALLOWED}/, {OTHER_ALLOWED} ")
    yield srv
    srv.stop()


@pytest.fixture()
def http(server: ApiServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def varies_on_origin(response: httpx.Response) -> bool:
    return "origin" in [v.strip().lower() for v in response.headers.get("vary", "").split(",")]


def preflight(http: httpx.Client, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return http.options(path, headers={
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    })


@pytest.mark.parametrize("origin", [ALLOWED, OTHER_ALLOWED])
@pytest.mark.parametrize(("path", "method"), [
    ("/api/jobs", "POST"), ("/api/jobs", "GET"), (f"/api/jobs/{uuid.uuid4()}", "DELETE"),
    (f"/api/jobs/{uuid.uuid4()}/cancel", "POST"), ("/api/job-types", "GET"),
])
def test_preflight_from_an_allowed_origin(http: httpx.Client, origin: str, path: str, method: str) -> None:
    response = preflight(http, path, origin, method)
    assert response.status_code == 204 and response.content == b""
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == origin
    assert method in [m.strip() for m in headers["access-control-allow-methods"].split(",")]
    allowed_headers = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed_headers
    assert int(headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in headers
    assert varies_on_origin(response)


def test_preflight_from_another_origin_is_refused(http: httpx.Client) -> None:
    response = preflight(http, "/api/jobs", STRANGER)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "cors_origin_not_allowed"
    assert cors_headers(response) == {}


def test_origin_match_is_exact(http: httpx.Client) -> None:
    for near_miss in ("https://app.example.com:8443", "http://app.example.com", "https://app.example.com.evil.net"):
        assert preflight(http, "/api/jobs", near_miss).status_code == 403, near_miss


def test_actual_responses_carry_cors_headers(http: httpx.Client, make_user) -> None:  # type: ignore[no-untyped-def]
    token = user_token(make_user())
    auth = {"Authorization": f"Bearer {token}", "Origin": ALLOWED}
    created = http.post("/api/jobs", headers=auth, json={"type": "example.countdown", "input": {"steps": 1}})
    assert created.status_code == 202
    listed = http.get("/api/jobs", headers=auth)
    assert listed.status_code == 200
    for response in (created, listed):
        headers = cors_headers(response)
        assert headers["access-control-allow-origin"] == ALLOWED
        assert "location" in headers["access-control-expose-headers"].lower()
        assert varies_on_origin(response)
    assert created.headers["location"] == f"/api/jobs/{created.json()['id']}"


def test_error_responses_carry_cors_headers(http: httpx.Client, make_user) -> None:  # type: ignore[no-untyped-def]
    token = user_token(make_user())
    responses = [
        http.get("/api/jobs", headers={"Origin": ALLOWED}),  # no token: 401
        http.get("/api/no-such-route", headers={"Origin": ALLOWED}),  # 404
        http.get("/api/jobs/not-a-uuid", headers={"Origin": ALLOWED, "Authorization": f"Bearer {token}"}),  # 400
        http.post("/api/jobs", headers={"Origin": ALLOWED, "Authorization": f"Bearer {token}"}, json={"type": 1}),  # 422
    ]
    assert [r.status_code for r in responses] == [401, 404, 400, 422]
    for response in responses:
        assert response.headers["content-type"] == "application/problem+json"
        assert cors_headers(response)["access-control-allow-origin"] == ALLOWED
        assert varies_on_origin(response)


def test_disallowed_origin_gets_no_cors_headers(http: httpx.Client, make_user) -> None:  # type: ignore[no-untyped-def]
    token = user_token(make_user())
    response = http.get("/api/jobs", headers={"Origin": STRANGER, "Authorization": f"Bearer {token}"})
    assert response.status_code == 200  # the server answers; the browser withholds it from the page
    assert cors_headers(response) == {}
    assert varies_on_origin(response)


def test_requests_without_origin_get_no_cors_headers(http: httpx.Client) -> None:
    response = http.get("/api/health")
    assert response.status_code == 200
    assert cors_headers(response) == {}


def test_internal_routes_never_get_cors(http: httpx.Client) -> None:
    pre = preflight(http, "/api/internal/work", ALLOWED)
    assert "access-control-allow-origin" not in cors_headers(pre)
    sweep = http.get("/api/internal/sweep", headers={"Origin": ALLOWED, "Authorization": f"Bearer {CRON_SECRET}"})
    assert sweep.status_code == 200
    work = http.post("/api/internal/work", headers={"Origin": ALLOWED, "Authorization": "Bearer wrong"})
    assert work.status_code == 401
    for response in (sweep, work):
        assert cors_headers(response) == {}
        assert not varies_on_origin(response)
    assert WORKER_SECRET  # the server has a worker secret: the 401 is the wrong one, not a disabled route


def _local_client(origins: str | None):  # type: ignore[no-untyped-def]
    """The same app in-process, for settings that need no database."""
    env = {} if origins is None else {"AI_JOBS_CORS_ORIGINS": origins}
    return create_app(Services(settings=Settings.from_env(env))).test_client()


def test_default_is_same_origin_only() -> None:
    client = _local_client(None)
    pre = client.options("/api/jobs", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403 and pre.mimetype == "application/problem+json"
    assert not [h for h in pre.headers.keys() if h.lower().startswith("access-control-")]
    actual = client.get("/api/no-such-route", headers={"Origin": ALLOWED})
    assert actual.status_code == 404
    assert not [h for h in actual.headers.keys() if h.lower().startswith("access-control-")]


def test_star_allows_any_origin_without_credentials() -> None:
    client = _local_client("*")
    pre = client.options("/api/jobs", headers={"Origin": STRANGER, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == STRANGER
    assert "Access-Control-Allow-Credentials" not in pre.headers
    actual = client.get("/api/jobs", headers={"Origin": STRANGER})
    assert actual.status_code == 401 and actual.headers["Access-Control-Allow-Origin"] == STRANGER


def test_a_preflight_is_not_confused_with_a_plain_options_request() -> None:
    client = _local_client(ALLOWED)
    plain = client.options("/api/jobs", headers={"Origin": ALLOWED})  # no Access-Control-Request-Method
    assert plain.status_code == 200 and "POST" in plain.headers["Allow"]
    assert "Access-Control-Max-Age" not in plain.headers


@pytest.mark.parametrize("value", ["app.example.com", "https://app.example.com/path", "https://", "https://a b"])
def test_malformed_origins_fail_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        Settings.from_env({"AI_JOBS_CORS_ORIGINS": value})


def test_origins_are_normalized() -> None:
    settings = Settings.from_env({"AI_JOBS_CORS_ORIGINS": " https://App.Example.com/ ,, http://localhost:3000"})
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert Settings.from_env({}).cors_origins == ()
