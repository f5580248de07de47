"""functions-framework serves the same app through functions/app.py's `api`
target: in-process with `functions_framework.create_app`, and as the README's
command line."""

from __future__ import annotations

import json
import os
import socket
import uuid
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


def test_doubled_slashes_are_a_404_problem_not_a_redirect(client: FlaskClient) -> None:
    for path in ("/api//jobs", "/api//health", "//api//jobs"):
        response = client.get(path, environ_overrides={"PATH_INFO": path}, headers={"Host": "evil.example"})
        assert response.status_code == 404 and "Location" not in response.headers, (path, response.status_code)
        assert response.mimetype == "application/problem+json" and response.get_json()["code"] == "not_found"


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
        # gunicorn de-chunks the body itself; a chunk size it refuses is a 400 problem, not a 500
        head = (f"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {user_token(uuid.uuid4())}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        for body in (b"zz\r\n{}\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n", b"100\r\n{}"):
            status, content_type, problem = _raw(port, head + body)
            assert (status, content_type, problem["code"]) == (400, "application/problem+json", "malformed_body"), problem
        assert proc.poll() is None and httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200
        status, content_type, problem = _raw(port, b"GET //api//jobs HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        assert (status, content_type, problem["code"]) == (404, "application/problem+json", "not_found")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _raw(port: int, request: bytes) -> tuple[int, str, dict]:
    """Send raw bytes, end our side, read the answer to the close: status, Content-Type, JSON body
    (no Location header, which no answer of the app has)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":  # gunicorn may chunk the answer
        decoded = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                break
            decoded, body = decoded + rest[:size], rest[size + 2:]
        body = decoded
    assert "location" not in headers, headers
    return int(lines[0].split()[1]), headers.get("content-type", ""), json.loads(body)
