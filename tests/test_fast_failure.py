"""Fast failure: with the database or Supabase REST unreachable, every endpoint
that needs it answers 503 problem+json within 3 s, and /api/health says why.

"Unreachable" in the two ways a deployment meets it: a refused connection (the
host is up, nothing listens) and a peer that accepts the TCP connection and
then never answers (an overloaded pooler, a half-dead proxy), which without
our timeouts hangs a request for the pool's default 30 s."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from ai_jobs.http.app import create_app
from ai_jobs.http.services import Services
from ai_jobs.settings import Settings
from tests.conftest import JWT_SECRET, user_token, unused_port

WORKER_SECRET = "ff-worker-secret"
CRON_SECRET = "ff-cron-secret"
LIMIT_SECONDS = 3.0
JOB = str(uuid.uuid4())

# every route that needs the store, with a valid request for it
STORE_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/jobs", {"json": {"type": "example.countdown", "input": {}}}),
    ("GET", "/api/jobs", {}),
    ("GET", f"/api/jobs/{JOB}", {}),
    ("DELETE", f"/api/jobs/{JOB}", {}),
    ("POST", f"/api/jobs/{JOB}/cancel", {}),
    ("POST", f"/api/jobs/{JOB}/retry", {}),
    ("POST", "/api/internal/work", {"json": {}, "secret": WORKER_SECRET}),
    ("GET", "/api/internal/sweep", {"secret": CRON_SECRET}),
]



@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """Accepts every connection and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    for conn in held:
        conn.close()
    listener.close()


def _client(**store: Any) -> Client:
    settings = Settings(jwt_secret=JWT_SECRET, worker_secret=WORKER_SECRET, cron_secret=CRON_SECRET, **store)
    return create_app(Services(settings=settings)).test_client()


def _stores(port: int) -> dict[str, dict[str, Any]]:
    return {
        "postgres": {"store": "postgres", "database_url": f"postgresql://postgres:pw@127.0.0.1:{port}/postgres"},
        "supabase": {"store": "supabase", "supabase_url": f"http://127.0.0.1:{port}",
                     "supabase_service_key": "service-key"},
    }


@pytest.mark.parametrize("kind", ["postgres", "supabase"])
@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_every_endpoint_answers_503_within_3_seconds(kind: str, failure: str, silent_port: int) -> None:
    port = unused_port() if failure == "refused" else silent_port
    store = _stores(port)[kind]
    client = _client(**store)
    issuer = f"{store['supabase_url']}/auth/v1" if kind == "supabase" else None  # Supabase's iss
    user = {"Authorization": f"Bearer {user_token(uuid.uuid4(), iss=issuer)}"}
    slowest = 0.0
    for method, path, options in STORE_ROUTES:
        headers = {"Authorization": f"Bearer {options['secret']}"} if "secret" in options else user
        started = time.monotonic()
        response = client.open(path, method=method, headers=headers, json=options.get("json"))
        elapsed = time.monotonic() - started
        slowest = max(slowest, elapsed)
        assert response.status_code == 503, (method, path, response.status_code, response.get_data(as_text=True))
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "store_unavailable"
        assert elapsed <= LIMIT_SECONDS, f"{method} {path} took {elapsed:.2f} s"
    started = time.monotonic()
    health = client.get("/api/health")
    assert time.monotonic() - started <= LIMIT_SECONDS
    body = health.get_json()
    assert health.status_code == 503 and body["database"] == "unavailable"
    assert body["detail"].startswith("database unavailable: ")
    # routes that need no database keep working
    assert client.get("/api/job-types").status_code == 200
    assert client.get("/api/openapi.json").status_code == 200
    print(f"\n{kind}/{failure}: slowest endpoint {slowest:.2f} s")


def test_unreachable_signing_keys_are_503_not_401(silent_port: int) -> None:
    """Asymmetric tokens need the project's JWKS; when it cannot be fetched the
    caller is not at fault, and the answer comes within the same bound."""
    settings = Settings(store="postgres", database_url="postgresql://x@127.0.0.1:1/x",
                        jwks_url=f"http://127.0.0.1:{silent_port}/auth/v1/.well-known/jwks.json")
    client = create_app(Services(settings=settings)).test_client()
    from cryptography.hazmat.primitives.asymmetric import ec

    import jwt

    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    token = jwt.encode({"sub": str(uuid.uuid4()), "role": "authenticated", "aud": "authenticated", "exp": now + 600},
                       key, algorithm="ES256", headers={"kid": "k1"})
    started = time.monotonic()
    response = client.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})
    assert time.monotonic() - started <= LIMIT_SECONDS
    assert response.status_code == 503 and response.get_json()["code"] == "auth_keys_unavailable"


def test_health_names_a_missing_database_configuration(tmp_path, monkeypatch) -> None:
    """A deployment with no database settings falls back to the embedded store,
    which a Vercel bundle does not have: health says what to set."""
    import builtins

    real_import = builtins.__import__

    def no_pgserver(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pgserver":
            raise ImportError("No module named 'pgserver'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pgserver)  # the wheel installed without the embedded extra
    client = create_app(Services(settings=Settings(data_dir=tmp_path))).test_client()
    response = client.get("/api/health")
    assert response.status_code == 503
    assert response.get_json()["detail"] == (
        "database unavailable: no database configured (set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY)"
    )
