"""functions-framework serves the same app through functions/app.py's `api`
target: in-process with `functions_framework.create_app`, and as the README's
command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import functions_framework
import httpx
import pytest
from flask.testing import FlaskClient

from tests.conftest import JWT_SECRET, user_token

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "functions" / "app.py"


@pytest.fixture()
def client(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlaskClient]:
    for name in ("SUPABASE_URL", "AI_JOBS_WORKER_URL", "AI_JOBS_CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SUPABASE_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("FUNCTION_TARGET", "api")  # create_app sets it; restored afterwards
    monkeypatch.setattr(sys, "path", list(sys.path))  # it appends the source's folder
    app = functions_framework.create_app("api", str(SOURCE))
    module = sys.modules["app"]  # the source file, loaded by path under its file name
    try:
        yield app.test_client()
    finally:
        module.app.services.close()
        sys.modules.pop("app", None)


def test_health(client: FlaskClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"


def test_authenticated_create_and_list(client: FlaskClient, make_user: Callable[[], UUID]) -> None:
    auth = {"Authorization": f"Bearer {user_token(make_user())}"}
    created = client.post("/api/jobs", headers=auth, json={"type": "example.countdown", "input": {"steps": 1}})
    assert created.status_code == 202, created.get_data(as_text=True)
    job_id = created.get_json()["id"]
    assert created.headers["Location"] == f"/api/jobs/{job_id}"
    listed = client.get("/api/jobs", headers=auth)
    assert listed.status_code == 200
    assert [job["id"] for job in listed.get_json()["jobs"]] == [job_id]
    assert client.get("/api/jobs").status_code == 401


def test_unknown_route_is_problem_json(client: FlaskClient) -> None:
    response = client.get("/api/no-such-route")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 404


def test_the_readme_command_serves_the_api(database_url: str) -> None:
    """`functions-framework --target api --source functions/app.py` (gunicorn)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("SUPABASE_URL", "AI_JOBS_WORKER_URL")}
    env.update({"DATABASE_URL": database_url, "SUPABASE_JWT_SECRET": JWT_SECRET})
    command = [str(Path(sys.executable).parent / "functions-framework"), "--target", "api",
               "--source", "functions/app.py", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"functions-framework did not start: {proc.communicate()[1][-2000:]}")
                time.sleep(0.2)
        assert response.status_code == 200 and response.json()["database"] == "ok"
        missing = httpx.get(f"http://127.0.0.1:{port}/api/no-such-route", timeout=5)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
