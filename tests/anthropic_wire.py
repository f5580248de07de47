"""Anthropic Messages API responses in their documented wire format (SSE
streams and JSON error bodies), for respx routes on httpcore2, and a real local
server (`FakeAnthropicServer`) that can also pace, stall and drop a stream."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

MESSAGES_URL = "https://api.anthropic.com/v1/messages"


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def sse_events(
    text: str,
    *,
    model: str = "claude-sonnet-5-5",
    stop_reason: str = "end_turn",
    input_tokens: int = 100,
    output_tokens: int = 50,
    chunks: int = 4,
    error_after_chunks: dict[str, Any] | None = None,
    thinking: str | None = None,
    signature: str = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxc",
    start_usage: dict[str, Any] | None = None,
    delta_usage: dict[str, Any] | None = None,
) -> list[str]:
    """A streamed message as separate SSE events, in the API's order: message_start
    (usage with the output placeholder 1), an optional thinking block (thinking_delta
    pieces, then one signature_delta), the text block in `chunks` text_delta pieces,
    content_block_stop, message_delta (cumulative `output_tokens`, plus `delta_usage`)
    and message_stop. `start_usage` adds to (or replaces) message_start's usage, e.g. the
    cache fields, `cache_creation` or `service_tier`. With `error_after_chunks`, an
    `error` event replaces the second text delta and ends the stream."""
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": 1,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    usage.update(start_usage or {})
    events = [
        _event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_test",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
        ),
    ]
    index = 0
    if thinking is not None:
        events.append(_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                     "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
        for piece in _pieces(thinking, chunks):
            events.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                         "delta": {"type": "thinking_delta", "thinking": piece}}))
        events.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "signature_delta", "signature": signature}}))
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    events.append(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {"type": "text", "text": ""}}))
    for n, piece in enumerate(_pieces(text, chunks)):
        if error_after_chunks is not None and n == 1:
            events.append(_event("error", {"type": "error", "error": error_after_chunks}))
            return events
        events.append(_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "text_delta", "text": piece}}))
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(_event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                           "usage": {"output_tokens": output_tokens, **(delta_usage or {})}}))
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


def _pieces(text: str, chunks: int) -> list[str]:
    size = max(1, -(-len(text) // chunks))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def sse_message(text: str, **kw: Any) -> str:
    """A full streamed message (see `sse_events`) as one SSE body."""
    return "".join(sse_events(text, **kw))


def stream_response(text: str, **kw: Any) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=sse_message(text, **kw))


def error_response(status: int, error_type: str, message: str, *, headers: dict[str, str] | None = None,
                   error_code: str | None = None) -> httpx.Response:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    return httpx.Response(
        status,
        headers={"content-type": "application/json", "request-id": "req_test", **(headers or {})},
        json={"type": "error", "error": error},
    )


# -- a real local server, for what a mock transport cannot do: pace, stall, drop ---------


@dataclass(frozen=True)
class ErrorReply:
    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


# A streamed reply is a list of steps: a str is sent as one chunk of the body;
# ("sleep", s) pauses; ("mark", name) sets `server.marks[name]`; ("stall", s) sends
# nothing for s seconds (or until the client goes away); ("drop",) closes the
# connection without finishing the chunked body. A first step ("headers_after", s)
# holds back the response headers for s seconds.
Step = str | tuple[Any, ...]
Reply = list[Step] | ErrorReply


def paced(events: list[str], every: float) -> list[Step]:
    """The events with a pause before each one after the first."""
    steps: list[Step] = []
    for n, event in enumerate(events):
        if n:
            steps.append(("sleep", every))
        steps.append(event)
    return steps


@dataclass
class Recorded:
    at: float
    headers: dict[str, str]
    body: dict[str, Any]


# Models that answer `output_config.effort` with a 400 (the effort docs list Opus 4.5 as
# the first model that takes it; Haiku 4.5 and Sonnet 4.5 are not on the list).
EFFORT_REJECTING_MODELS = ("claude-3", "claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1",
                           "claude-opus-4-0", "claude-sonnet-4-0", "claude-opus-4-2", "claude-sonnet-4-2")


class FakeAnthropicServer(ThreadingHTTPServer):
    """POST /v1/messages on 127.0.0.1 in the API's wire format. Each request gets the
    next of `replies` (the last one repeats); `requests` records them, `disconnected`
    is set when the client closed a stream before its end."""

    daemon_threads = True

    def __init__(self, replies: list[Reply] | None = None) -> None:
        self.replies: list[Reply] = list(replies or [])
        self.requests: list[Recorded] = []
        self.marks: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.mark_times: dict[str, float] = {}  # time.time() when each mark was reached (figures)
        self.disconnected = threading.Event()
        self.disconnected_at: float | None = None
        self.closing = threading.Event()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _FakeMessagesHandler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeAnthropicServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()

    def next_reply(self) -> Reply:
        with self._lock:
            if not self.replies:
                return ErrorReply(500, "api_error", "the fake has no reply scripted")
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def client_left(self) -> None:
        if not self.disconnected.is_set():
            self.disconnected_at = time.monotonic()
            self.disconnected.set()


class _FakeMessagesHandler(BaseHTTPRequestHandler):
    server: FakeAnthropicServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.requests.append(Recorded(time.monotonic(), dict(self.headers), json.loads(raw or b"{}")))
        body = self.server.requests[-1].body
        if body.get("output_config", {}).get("effort") and str(body.get("model", "")).startswith(EFFORT_REJECTING_MODELS):
            reply: Reply = ErrorReply(400, "invalid_request_error",
                                      f"output_config.effort: not supported by model {body['model']}")
        else:
            reply = self.server.next_reply()
        self.close_connection = True
        if not isinstance(reply, ErrorReply) and reply and isinstance(reply[0], tuple) and reply[0][0] == "headers_after":
            if self._client_gone(reply[0][1]):  # the API has not answered yet
                return
            reply = reply[1:]
        if isinstance(reply, ErrorReply):
            body = json.dumps({"type": "error", "error": {"type": reply.error_type, "message": reply.message}}).encode()
            self.send_response(reply.status)
            for name, value in {"content-type": "application/json", "request-id": "req_fake",
                                "content-length": str(len(body)), "connection": "close", **reply.headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", "req_fake")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            for step in reply:
                if isinstance(step, str):
                    data = step.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                elif step[0] == "sleep":
                    if self._client_gone(step[1]):
                        return
                elif step[0] == "mark":
                    self.server.mark_times[step[1]] = time.time()
                    self.server.marks[step[1]].set()
                elif step[0] == "stall":
                    if self._client_gone(step[1]):
                        return
                elif step[0] == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # BrokenPipe, ConnectionReset: the client went away
            self.server.client_left()

    def _client_gone(self, seconds: float) -> bool:
        """Wait up to `seconds`; True (and recorded) as soon as the client closes."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not self.server.closing.is_set():
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
            if readable:
                try:
                    gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if gone:
                    self.server.client_left()
                    return True
        return self.server.closing.is_set()
