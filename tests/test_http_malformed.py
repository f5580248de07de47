"""Bad input of every kind gets a useful 4xx problem+json, never a 5xx, and
never creates or corrupts a job."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from ai_jobs.http.io import MalformedBodyError
from ai_jobs.http.server import ChunkedBody
from tests.api_server import REPO, WORKER_SECRET, ApiServer, start_server
from tests.conftest import user_token


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ApiServer]:
    srv = start_server(database_url, AI_JOBS_MAX_BODY_BYTES="65536")
    yield srv
    srv.stop()


def deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


JSON = {"content-type": "application/json"}
CASES: list[tuple[str, str, str, bytes | None, dict[str, str]]] = [
    # (id, method, path, body, headers)
    ("not-json", "POST", "/api/jobs", b"{nope", JSON),
    ("empty-body", "POST", "/api/jobs", b"", JSON),
    ("json-array", "POST", "/api/jobs", b"[1, 2]", JSON),
    ("json-string", "POST", "/api/jobs", b'"x"', JSON),
    ("json-null", "POST", "/api/jobs", b"null", JSON),
    ("not-utf8", "POST", "/api/jobs", b'{"type": "\xff\xfe"}', JSON),
    ("wrong-content-type", "POST", "/api/jobs", b'{"type": "example.countdown"}', {"content-type": "text/plain"}),
    ("form-encoded", "POST", "/api/jobs", b"type=example.countdown", {"content-type": "application/x-www-form-urlencoded"}),
    ("missing-type", "POST", "/api/jobs", b'{"input": {}}', JSON),
    ("type-not-string", "POST", "/api/jobs", b'{"type": 42}', JSON),
    ("unknown-type", "POST", "/api/jobs", b'{"type": "no.such.type"}', JSON),
    ("unknown-field", "POST", "/api/jobs", b'{"type": "example.countdown", "surprise": 1}', JSON),
    ("input-not-object", "POST", "/api/jobs", b'{"type": "example.countdown", "input": [1]}', JSON),
    ("input-wrong-type", "POST", "/api/jobs", b'{"type": "example.countdown", "input": {"steps": "many"}}', JSON),
    ("input-out-of-range", "POST", "/api/jobs", b'{"type": "example.countdown", "input": {"steps": 100000}}', JSON),
    ("input-negative", "POST", "/api/jobs", b'{"type": "example.countdown", "input": {"step_seconds": -1}}', JSON),
    ("generate-empty-prompt", "POST", "/api/jobs", b'{"type": "ai.generate", "input": {"prompt": ""}}', JSON),
    ("extract-bad-schema", "POST", "/api/jobs", b'{"type": "ai.extract", "input": {"text": "x", "schema": {"type": 5}}}', JSON),
    ("priority-too-high", "POST", "/api/jobs", b'{"type": "example.countdown", "priority": 5000}', JSON),
    ("priority-float", "POST", "/api/jobs", b'{"type": "example.countdown", "priority": 1.5}', JSON),
    ("run-at-garbage", "POST", "/api/jobs", b'{"type": "example.countdown", "run_at": "tomorrow"}', JSON),
    ("run-at-naive", "POST", "/api/jobs", b'{"type": "example.countdown", "run_at": "2030-01-01T00:00:00"}', JSON),
    ("idempotency-key-empty", "POST", "/api/jobs", b'{"type": "example.countdown", "idempotency_key": ""}', JSON),
    ("idempotency-key-huge", "POST", "/api/jobs", json.dumps({"type": "example.countdown", "idempotency_key": "k" * 300}).encode(), JSON),
    ("idempotency-header-huge", "POST", "/api/jobs", b'{"type": "example.countdown"}', {**JSON, "idempotency-key": "k" * 300}),
    ("idempotency-mismatch", "POST", "/api/jobs", b'{"type": "example.countdown", "idempotency_key": "a"}', {**JSON, "idempotency-key": "b"}),
    ("metadata-not-object", "POST", "/api/jobs", b'{"type": "example.countdown", "metadata": "x"}', JSON),
    ("huge-body", "POST", "/api/jobs", json.dumps({"type": "ai.generate", "input": {"prompt": "x" * 100_000}}).encode(), JSON),
    ("deeply-nested-input", "POST", "/api/jobs", json.dumps({"type": "example.countdown", "metadata": deep(60)}).encode(), JSON),
    ("pathologically-nested", "POST", "/api/jobs", b'{"type": "x", "input": ' + b"[" * 30000 + b"]" * 30000 + b"}", JSON),
    ("nul-in-string", "POST", "/api/jobs", b'{"type": "ai.generate", "input": {"prompt": "a\\u0000b"}}', JSON),
    ("bad-uuid-get", "GET", "/api/jobs/not-a-uuid", None, {}),
    ("bad-uuid-cancel", "POST", "/api/jobs/12345/cancel", None, {}),
    ("bad-uuid-retry", "POST", "/api/jobs/%27%3B--/retry", None, {}),
    ("bad-uuid-delete", "DELETE", "/api/jobs/zzz", None, {}),
    ("missing-job", "GET", f"/api/jobs/{uuid.uuid4()}", None, {}),
    ("list-bad-status", "GET", "/api/jobs?status=exploded", None, {}),
    ("list-bad-limit", "GET", "/api/jobs?limit=abc", None, {}),
    ("list-limit-zero", "GET", "/api/jobs?limit=0", None, {}),
    ("list-limit-huge", "GET", "/api/jobs?limit=100000", None, {}),
    ("list-bad-type", "GET", "/api/jobs?type=DROP%20TABLE", None, {}),
    ("list-bad-cursor", "GET", "/api/jobs?cursor=!!!", None, {}),
    ("list-forged-cursor", "GET", "/api/jobs?cursor=eyJjIjogIm5vdC1hLWRhdGUiLCAiaSI6ICJ4In0", None, {}),
    ("list-repeated-param", "GET", "/api/jobs?limit=1&limit=2", None, {}),
    ("list-unknown-param", "GET", "/api/jobs?colour=red", None, {}),
    ("wrong-method", "PUT", "/api/jobs", b"{}", JSON),
    ("unknown-route", "GET", "/api/nothing-here", None, {}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_requests_are_useful_4xx(server: ApiServer, make_user, database_url: str, method, path, body, headers) -> None:
    token = user_token(make_user())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.request(method, path, content=body, headers={**headers, "authorization": f"Bearer {token}"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == r.status_code and problem["detail"] and problem["code"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0  # nothing half-created


def test_field_errors_point_at_the_field(server: ApiServer, make_user) -> None:
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {user_token(make_user())}"}) as client:
        r = client.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": "many", "step_seconds": -1}})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"input.steps", "input.step_seconds"}


def test_internal_work_rejects_bad_bodies(server: ApiServer) -> None:
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {WORKER_SECRET}"}) as client:
        for body in (b"{x", b'{"job_id": "nope"}', b'{"job_id": 1}', b'{"extra": 1}', b"[]"):
            r = client.post("/api/internal/work", content=body, headers=JSON)
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)


# -- chunked bodies on the local server (`ai-jobs serve`/`dev`) ------------------------

LIMIT = 65536  # the module's server: AI_JOBS_MAX_BODY_BYTES
PROBLEM = "application/problem+json"


def _raw(server: ApiServer, head: bytes, body: bytes, *, half_close: bool = True) -> tuple[int, dict[str, str], bytes]:
    """Send a request as raw bytes, end our side (as a client whose upload stops does),
    and read the answer up to the server's close: status, headers, body."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data, "the server closed the connection without an answer"
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def _chunked_head(token: str, path: str = "/api/jobs") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()


def _chunked(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def _job_body(size: int) -> bytes:
    """A valid create body of exactly `size` bytes (padded in metadata)."""
    base = {"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}, "metadata": {"pad": ""}}
    base["metadata"]["pad"] = "a" * (size - len(json.dumps(base)))
    body = json.dumps(base).encode()
    assert len(body) == size
    return body


def _assert_malformed(status: int, headers: dict[str, str], payload: bytes) -> None:
    assert status == 400 and headers["content-type"] == PROBLEM, (status, headers, payload[:300])
    problem = json.loads(payload)
    assert problem["code"] == "malformed_body" and problem["type"] == "urn:ai-jobs:problem:malformed_body"
    assert problem["status"] == 400 and problem["detail"]


def _assert_still_serving(server: ApiServer, token: str) -> None:
    assert server.process.poll() is None, f"the server died (exit {server.process.returncode})"
    with server.client(token) as client:
        assert client.get("/api/health").status_code == 200
        created = client.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}})
        assert created.status_code == 202, created.text


BODY_JSON = {"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}}
BODY = json.dumps(BODY_JSON).encode()


@pytest.mark.parametrize("size_line", [b"zz", b"-5", b"0x10", b"1_0", b" 5", b"ffffffffffffffffffff", b"5;" + b"x" * 5000],
                         ids=["not-hex", "negative", "0x-prefix", "underscore", "leading-space", "20-digits",
                              "over-4KiB-line"])
def test_malformed_chunk_size_is_a_400_problem(server: ApiServer, make_user, size_line) -> None:
    token = user_token(make_user())
    _assert_malformed(*_raw(server, _chunked_head(token), size_line + b"\r\n" + BODY + b"\r\n0\r\n\r\n"))
    _assert_still_serving(server, token)


@pytest.fixture(scope="module")
def default_server(database_url: str) -> Iterator[ApiServer]:
    """The default 256 KiB body limit: the old de-chunker's out-of-bounds read was large enough to crash."""
    srv = start_server(database_url)
    yield srv
    srv.stop()


def test_a_chunk_larger_than_the_data_sent_then_a_close_does_not_crash_the_server(default_server: ApiServer,
                                                                                 make_user) -> None:
    """werkzeug's de-chunker reported more bytes than it had read: CPython read past the
    buffer (a 413 for a 70-byte body) and the server died (SIGSEGV). Now: 400, and the
    server answers what comes next."""
    server = default_server
    token = user_token(make_user())
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    for size_line in (b"ffffffffffffffffffff", b"ffffffffffffffff", b"7fffffff"):
        request = _chunked_head(token) + size_line + b"\r\n" + BODY + b"\r\n0\r\n\r\n"
        for _ in range(3):  # the client gives up and closes the connection without reading
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(request)
                time.sleep(0.2)
            time.sleep(0.2)
            assert server.process.poll() is None, f"the server died (exit {server.process.returncode})"
        for _ in range(3):  # the client ends its side and reads the answer
            _assert_malformed(*_raw(server, _chunked_head(token), size_line + b"\r\n" + BODY + b"\r\n0\r\n\r\n"))
    _assert_still_serving(server, token)


@pytest.mark.parametrize("body", [
    b"100\r\n" + BODY[:10],  # inside a chunk
    b"%x\r\n%s" % (len(BODY), BODY),  # after a chunk's data, before its CRLF
    b"%x\r\n%s\r\n" % (len(BODY), BODY),  # before the last chunk
    b"%x\r\n%s\r\n0\r\n" % (len(BODY), BODY),  # before the empty line that ends the body
    b"%x\r\n%sXY0\r\n\r\n" % (len(BODY), BODY),  # data longer than its chunk size
], ids=["inside-a-chunk", "before-crlf", "before-last-chunk", "before-final-crlf", "data-longer-than-size"])
def test_a_chunked_upload_cut_short_is_a_400_problem(server: ApiServer, make_user, database_url: str, body) -> None:
    token = user_token(make_user())
    _assert_malformed(*_raw(server, _chunked_head(token), body))
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0
    _assert_still_serving(server, token)


def test_a_content_length_upload_cut_short_is_a_400_problem(server: ApiServer, make_user) -> None:
    token = user_token(make_user())
    head = (f"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY) + 100}\r\n\r\n").encode()
    _assert_malformed(*_raw(server, head, BODY))


def test_a_valid_chunked_body_in_many_chunks_creates_the_job(server: ApiServer, make_user) -> None:
    token = user_token(make_user())
    plain = _chunked(BODY, 7)
    extended = plain.replace(b"\r\n", b";ext=1\r\n", 1)  # a chunk extension (RFC 9112 7.1.1, ignored)
    extended = extended[:-2] + b"X-Trailer: 1\r\n\r\n"  # and a trailer field (7.1.2, ignored)
    for body in (plain, extended):
        status, headers, payload = _raw(server, _chunked_head(token), body)
        assert status == 202, payload[:300]
        assert json.loads(payload)["job_type"] == "example.countdown"


def test_chunked_body_at_the_limit_passes_and_one_byte_more_is_413(server: ApiServer, make_user) -> None:
    token = user_token(make_user())
    status, _, payload = _raw(server, _chunked_head(token), _chunked(_job_body(LIMIT), 4000))
    assert status == 202, payload[:300]
    status, headers, payload = _raw(server, _chunked_head(token), _chunked(_job_body(LIMIT + 1), 4000))
    assert status == 413 and headers["content-type"] == PROBLEM and json.loads(payload)["code"] == "body_too_large"
    # one byte too many is enough: the client has not finished (no last chunk) when the 413 comes
    status, _, payload = _raw(server, _chunked_head(token), _chunked(b"a" * (LIMIT + 1), LIMIT + 1)[:-5],
                              half_close=False)
    assert status == 413 and json.loads(payload)["code"] == "body_too_large"


def test_the_worker_endpoint_answers_a_malformed_chunked_body_with_400(server: ApiServer) -> None:
    head = (f"POST /api/internal/work HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {WORKER_SECRET}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    _assert_malformed(*_raw(server, head, b"zz\r\n{}\r\n0\r\n\r\n"))


def test_doubled_slashes_are_a_404_problem_not_a_redirect(server: ApiServer) -> None:
    """werkzeug's merge_slashes answered these with a 308 text/html page whose Location
    came from the Host header."""
    for target in (b"//api//jobs", b"/api//jobs", b"/api//health"):
        status, headers, payload = _raw(server, b"GET %s HTTP/1.1\r\nHost: evil.example\r\n\r\n" % target, b"")
        assert status == 404 and "location" not in headers, (target, status, headers)
        assert headers["content-type"] == PROBLEM and json.loads(payload)["code"] == "not_found"


def test_an_idempotency_key_header_that_is_not_printable_ascii_is_a_400_problem(
        server: ApiServer, make_user, database_url: str) -> None:
    """A header's bytes have no agreed encoding: UTF-8 `clé-2` reached the app as Latin-1
    `clÃ©-2`, was stored so, and never matched the same key sent in the body (422
    idempotency_key_mismatch). Such a header is refused; the body's key takes any text."""
    token = user_token(make_user())
    for key in ("clé-2".encode(), "clé-2".encode("latin-1"), b"a\x7fb", b"a\x01b"):
        for body in (BODY, json.dumps({"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0},
                                       "idempotency_key": "clé-2"}).encode()):
            head = (f"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n").encode()
            status, headers, payload = _raw(server, head + b"Idempotency-Key: " + key + b"\r\n\r\n", body)
            assert status == 400 and headers["content-type"] == PROBLEM, (key, status, payload[:300])
            assert json.loads(payload)["code"] == "invalid_idempotency_key"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0
    with server.client(token) as client:
        body = {"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}, "idempotency_key": "clé-2"}
        first, again = client.post("/api/jobs", json=body), client.post("/api/jobs", json=body)
        assert (first.status_code, again.status_code) == (202, 200) and first.json()["id"] == again.json()["id"]
        assert again.json()["idempotency_key"] == "clé-2"
        spaced = client.post("/api/jobs", json=BODY_JSON, headers={"Idempotency-Key": "order 42 ~"})
        assert spaced.status_code == 202 and spaced.json()["idempotency_key"] == "order 42 ~"


def test_the_browser_client_sends_a_key_that_is_not_ascii_in_the_body(server: ApiServer, make_user) -> None:
    """public/ai-jobs.js: `idempotencyKey` goes in the header only when it is printable
    ASCII; "café-1" goes in the body, so a repeat finds the first job (Node's fetch)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    script = f"""
        import {{ createAiJobsClient }} from {json.dumps((REPO / "public" / "ai-jobs.js").as_uri())};
        const client = createAiJobsClient({{ baseUrl: {json.dumps(server.url)}, getAccessToken: () => {json.dumps(user_token(make_user()))} }});
        const ids = [];
        for (const key of ["café-1", "café-1", "order-42", "order-42"]) {{
          const job = await client.createJob("example.countdown", {{ steps: 1, step_seconds: 0 }}, {{ idempotencyKey: key }});
          ids.push([job.id, job.idempotency_key]);
        }}
        console.log(JSON.stringify(ids));
    """
    out = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    ids = json.loads(out.stdout)
    assert ids[0] == ids[1] and ids[0][1] == "café-1"
    assert ids[2] == ids[3] and ids[2][1] == "order-42" and ids[0][0] != ids[2][0]


# -- the de-chunker itself ---------------------------------------------------------------


def _dechunk(raw: bytes, read_size: int) -> bytes:
    stream = ChunkedBody(io.BufferedReader(io.BytesIO(raw)))  # type: ignore[arg-type]
    out = b""
    while piece := stream.read(read_size):
        assert len(piece) <= read_size
        out += piece
    return out


@pytest.mark.parametrize("read_size", [1, 3, 7, 64, 65537])
def test_chunked_body_decodes_valid_framing(read_size: int) -> None:
    body = bytes(range(256)) * 40
    assert _dechunk(_chunked(body, 1000), read_size) == body
    assert _dechunk(_chunked(body, 1), read_size) == body
    assert _dechunk(b"5;a=b\r\nhello\r\n6 \r\n world\r\n0\r\nT: 1\r\n\r\n", read_size) == b"hello world"
    assert _dechunk(b"0\r\n\r\n", read_size) == b""


@pytest.mark.parametrize("raw", [b"ffffffffffffffff\r\n" + BODY, b"7fffffff\r\n" + BODY + b"\r\n0\r\n\r\n",
                                 b"ffffffffffffffffffff\r\n" + BODY, b"zz\r\n", b"5\nhello\r\n0\r\n\r\n", b"",
                                 b"5\r\nhel", b"5\r\nhello\r\n0\r\n" + b"T: 1\r\n" * 101 + b"\r\n"])
def test_chunked_body_never_reports_more_than_it_copied(raw: bytes) -> None:
    """The bytes a read returns are exactly the body's bytes so far, then a
    MalformedBodyError (werkzeug's DechunkedInput returned 64 KiB of whatever was in
    memory for the first case)."""
    stream = ChunkedBody(io.BufferedReader(io.BytesIO(raw)))  # type: ignore[arg-type]
    got = b""
    with pytest.raises(MalformedBodyError):
        for _ in range(100):
            piece = stream.read(65537)
            got += piece
    assert BODY.startswith(got) or b"hello".startswith(got)
    with pytest.raises(MalformedBodyError):  # and it stays failed
        stream.read(10)
