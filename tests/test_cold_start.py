"""A cold start imports only what the request needs (bench/import_time.py measures
it on the built function). Each check runs in a fresh interpreter, as a Vercel
instance starts: importing the entrypoint loads no database driver, no JWT or
HTTP client library and no Claude or Supabase SDK; a create (token check,
insert, hand-off) then loads the driver and PyJWT, and still no HTTP client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import JWT_SECRET, unused_port, user_token

REPO = Path(__file__).resolve().parents[1]

# Flask and what only Flask loads: the app is werkzeug alone, at import and per request.
FLASK_ONLY = ("flask", "jinja2", "click", "itsdangerous", "blinker")
# Top-level packages that importing functions/app.py must not load.
NOT_AT_IMPORT = ("anthropic", "supabase", "jwt", "cryptography", "httpx", "httpcore", "rich", "psycopg",
                 "psycopg_pool", "jsonschema", "pgserver", *FLASK_ONLY)
# ...nor these of ours: the worker, the sweep, the database drivers' adapters, the OpenAPI
# document, the job types' modules (a create or a worker loads them; a health check never).
JOB_MODULES = ("ai_jobs.jobs.ai", "ai_jobs.jobs.countdown", "ai_jobs.jobs.fan_out", "ai_jobs.jobs.map_fan_out")
OURS_NOT_AT_IMPORT = ("ai_jobs.runner", "ai_jobs.sweep", "ai_jobs.dispatch", "ai_jobs.store.postgres",
                      "ai_jobs.store.supabase", "ai_jobs.claude.calls", "ai_jobs.http.openapi", *JOB_MODULES)
# A create needs the driver and PyJWT; the hand-off needs no HTTP client library.
NOT_AFTER_CREATE = ("anthropic", "supabase", "httpx", "httpcore", "rich", "jsonschema", "pgserver", *FLASK_ONLY)

CHILD = r"""
import json, os, sys
import functions.app
loaded = {"import": sorted(sys.modules)}
request = json.loads(os.environ["COLD_REQUEST"])
if request:
    client = functions.app.app.test_client()
    response = client.open(request["path"], method=request["method"], headers=request["headers"],
                           data=request.get("body"))
    loaded["status"] = response.status_code
    loaded["request"] = sorted(sys.modules)
print("LOADED " + json.dumps(loaded))
os._exit(0)
"""


def cold(env: dict[str, str], request: dict | None = None) -> dict:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AI_JOBS_", "SUPABASE_", "DATABASE_URL", "WORKER_SECRET", "CRON_SECRET"))}
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**base, **env, "COLD_REQUEST": json.dumps(request)})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED ")), None)
    assert line is not None, proc.stderr[-3000:]
    return json.loads(line.removeprefix("LOADED "))


def tops(modules: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_importing_the_entrypoint_loads_no_driver_sdk_or_client() -> None:
    loaded = cold({"DATABASE_URL": f"postgresql://127.0.0.1:{unused_port()}/none", "SUPABASE_JWT_SECRET": JWT_SECRET})
    assert not tops(loaded["import"]) & set(NOT_AT_IMPORT)
    assert not set(loaded["import"]) & set(OURS_NOT_AT_IMPORT)
    assert "ai_jobs.http.app" in loaded["import"]  # it did import the app
    assert "flask" not in tops(loaded["import"])  # werkzeug alone: Flask was ~0.4 s of a cold start


def test_serving_requests_never_loads_flask_or_its_dependencies(database_url: str) -> None:
    """The app is werkzeug only: neither importing it nor answering (a 200, a 404 and
    a 405) loads Flask or what only Flask brings (jinja2, click, itsdangerous, blinker)."""
    for method, path, status in (("GET", "/api/health", 200), ("GET", "/api/nope", 404), ("DELETE", "/api/health", 405)):
        loaded = cold({"DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "SUPABASE_JWT_SECRET": JWT_SECRET},
                      {"method": method, "path": path, "headers": {}})
        assert loaded["status"] == status
        assert not tops(loaded["request"]) & set(FLASK_ONLY), sorted(tops(loaded["request"]) & set(FLASK_ONLY))
        assert not set(loaded["request"]) & set(JOB_MODULES)  # no request here needs a job type


def test_a_cold_create_loads_the_driver_and_jwt_but_no_http_client(database_url, make_user) -> None:
    user = make_user()
    refused = f"http://127.0.0.1:{unused_port()}"  # the hand-off runs (and fails fast) without httpx
    loaded = cold(
        {"DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "SUPABASE_JWT_SECRET": JWT_SECRET,
         "AI_JOBS_WORKER_URL": refused, "WORKER_SECRET": "s3cret", "AI_JOBS_HANDOFF_WAIT_SECONDS": "2"},
        {"method": "POST", "path": "/api/jobs",
         "headers": {"Authorization": f"Bearer {user_token(user)}", "Content-Type": "application/json"},
         "body": json.dumps({"type": "ai.generate", "input": {"prompt": "hello"}})},
    )
    assert loaded["status"] == 202
    assert {"psycopg", "jwt"} <= tops(loaded["request"])
    assert "ai_jobs.dispatch" in loaded["request"]  # the hand-off was attempted
    assert "ai_jobs.jobs.ai" in loaded["request"]  # the job types load on the first create
    assert not tops(loaded["request"]) & set(NOT_AFTER_CREATE)
