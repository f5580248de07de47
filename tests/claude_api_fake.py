"""A local HTTP fake of the Anthropic API that bills as the API does: prompt caching
and the Message Batches API. Used by tests/test_map_cost.py and bench/map_cost.py.

Serves, on 127.0.0.1 (point ANTHROPIC_BASE_URL at `url`):
  POST /v1/messages                         streamed (SSE) or plain JSON Message
  POST /v1/messages/batches                 create a Message Batch
  GET  /v1/messages/batches/{id}            retrieve it
  POST /v1/messages/batches/{id}/cancel     cancel it
  GET  /v1/messages/batches/{id}/results    its results, JSON Lines
  DELETE /v1/messages/batches/{id}          delete an ended batch

Shapes follow the installed SDK (anthropic 2.14): `types/message.py`, `types/usage.py`
and `types/cache_creation.py` (usage with `cache_creation` split by TTL,
`service_tier`), `types/raw_message_*_event.py` and `lib/streaming/_messages.py` (the
SSE events and how the SDK accumulates `message_delta` usage),
`types/messages/message_batch.py`, `message_batch_request_counts.py`,
`message_batch_individual_response.py`, `message_batch_{succeeded,errored,canceled,
expired}_result.py`, `types/shared/error_response.py`, `types/messages/
batch_create_params.py` and `resources/messages/batches.py` (routes; `results()`
retrieves the batch and then GETs its `results_url`).

Caching, as the prompt caching docs describe it: the prefix is tools, then system, then
messages, block by block; a block with `cache_control` ends a cacheable prefix (at most
4 per request; 1-hour breakpoints before 5-minute ones). The first request with a given
prefix (model + the blocks' content, byte for byte) writes it
(`cache_creation_input_tokens`, split by TTL in `cache_creation`); a later request with
the same prefix within its TTL reads it (`cache_read_input_tokens`) and refreshes the
TTL; the tokens after the last breakpoint are `input_tokens`. A prefix shorter than the
model's minimum cacheable length is not cached and bills as plain input. Tokens are
counted as ceil(characters / 4) per text block (the schema and framing are free here).

Batches: requests are processed once the batch has been retrieved `polls_until_ended`
times; their usage says `service_tier: "batch"`. They run in parallel, as the API runs
them: each one sees the cache as it was when the batch started (so requests of one
batch never read what another wrote; the docs call batch cache hits best-effort);
`batch_cache="sequential"` lets each read what the previous ones wrote instead.
`outcomes` makes chosen custom_ids end `errored` (overloaded_error), `expired` or
`canceled` instead; `stop_reasons` gives chosen custom_ids a succeeded (billed) reply
with another stop_reason (`max_tokens`, `refusal`). A cancel lets `done_before_cancel`
requests finish (billed) and cancels the rest. `retrieve_errors` makes the next
retrieves of a batch fail with the given (status, error type), as the API's 5xx and
529 `overloaded_error` bodies do (`types/shared/error_response.py`); `create_errors`
does the same for the next creates (no batch is made). `lose_create_replies` = n: the
next n creates make their batch, then reset the connection without answering (a reply
lost after the request reached the API: the SDK raises APIConnectionError from
httpx2's ReadError or RemoteProtocolError); `lost_create_replies` counts them. Every
billed request is appended to `billed` (model, usage, batch). `reply_models` maps a requested
id to the one the reply names (`Message.model` is the model that ran, e.g. a dated
snapshot of a requested alias).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Minimum cacheable prompt length (tokens) per model; others: DEFAULT_MIN_CACHEABLE.
MIN_CACHEABLE = {"claude-opus-5-5": 512, "claude-opus-5": 512, "claude-fable-5-1": 512, "claude-haiku-4-5": 4096,
                 "claude-opus-4-5": 4096, "claude-opus-4-6": 4096}
DEFAULT_MIN_CACHEABLE = 1024
TTL_SECONDS = {"5m": 300, "1h": 3600}
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def map_reply(request: dict[str, Any]) -> str:
    """An ai.map_batches answer: one mapping per `- item` line of the last user block."""
    content = request["messages"][-1]["content"]
    last = content if isinstance(content, str) else content[-1]["text"]
    items = [line[2:] for line in last.splitlines() if line.startswith("- ")]
    return json.dumps({"mappings": [{"item": it, "mapping": f"section on {it}", "confidence": 80} for it in items]})


@dataclass
class Billed:
    model: str
    usage: dict[str, Any]
    batch: bool


@dataclass
class _Batch:
    id: str
    requests: list[dict[str, Any]]
    created_at: datetime
    status: str = "in_progress"
    polls: int = 0
    cancel_initiated_at: datetime | None = None
    ended_at: datetime | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


class ClaudeApiFake(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        *,
        responder: Callable[[dict[str, Any]], str] = map_reply,
        polls_until_ended: int = 2,
        outcomes: dict[str, str] | None = None,
        done_before_cancel: int = 1,
        min_cacheable: dict[str, int] | None = None,
        batch_cache: str = "parallel",
        call_seconds: float = 0.0,
    ) -> None:
        self.batch_cache = batch_cache
        self.call_seconds = call_seconds  # how long each POST /v1/messages takes (benchmarks)
        self.responder = responder
        self.polls_until_ended = polls_until_ended
        self.outcomes = dict(outcomes or {})
        self.stop_reasons: dict[str, str] = {}
        self.reply_models: dict[str, str] = {}
        self.retrieve_errors: list[tuple[int, str]] = []
        self.create_errors: list[tuple[int, str]] = []
        self.lose_create_replies = 0
        self.lost_create_replies = 0
        self.done_before_cancel = done_before_cancel
        self.min_cacheable = {**MIN_CACHEABLE, **(min_cacheable or {})}
        self.billed: list[Billed] = []
        self.message_requests: list[dict[str, Any]] = []  # bodies of POST /v1/messages
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request
        self.batches: dict[str, _Batch] = {}
        self.created: list[_Batch] = []  # every batch ever created, deleted ones too
        self.deleted: list[str] = []  # ids of deleted batches
        self._cache: dict[str, tuple[float, str]] = {}  # prefix hash -> (expires at, ttl)
        self._offset = 0.0
        self._lock = threading.RLock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    # -- life cycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ClaudeApiFake:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def advance(self, seconds: float) -> None:
        """Move the fake's clock (cache expiry) forward."""
        with self._lock:
            self._offset += seconds

    def now(self) -> float:
        return time.monotonic() + self._offset

    # -- the Messages API -------------------------------------------------------------

    def _blocks(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """(text, cache_control) of every prompt block in prefix order: system, then messages."""
        blocks: list[tuple[str, dict[str, Any] | None]] = []
        system = body.get("system")
        if isinstance(system, str):
            blocks.append((system, None))
        elif isinstance(system, list):
            blocks += [(b["text"], b.get("cache_control")) for b in system]
        for message in body["messages"]:
            content = message["content"]
            if isinstance(content, str):
                blocks.append((content, None))
            else:
                blocks += [(b.get("text", ""), b.get("cache_control")) for b in content]
        return blocks

    def _check_breakpoints(self, blocks: list[tuple[str, dict[str, Any] | None]]) -> str | None:
        marks = [cc for _, cc in blocks if cc is not None]
        if len(marks) > 4:
            return "A maximum of 4 blocks with cache_control may be provided."
        ttls = []
        for cc in marks:
            if cc.get("type") != "ephemeral" or cc.get("ttl", "5m") not in TTL_SECONDS:
                return "cache_control: type must be 'ephemeral' and ttl '5m' or '1h'"
            ttls.append(cc.get("ttl", "5m"))
        if "1h" in ttls and "5m" in ttls and ttls.index("5m") < len(ttls) - 1 - ttls[::-1].index("1h"):
            return "a ttl='1h' cache_control block must not come after a ttl='5m' one"
        return None

    def _prompt_usage(self, model: str, blocks: list[tuple[str, dict[str, Any] | None]],
                      view: dict[str, tuple[float, str]] | None = None) -> dict[str, Any]:
        """Bill the prompt as the API's cache would: read, write (by TTL), plain input.
        `view`: the cache as this request sees it (default: as it is now)."""
        sizes = [count_tokens(text) for text, _ in blocks]
        total = sum(sizes)
        breakpoints = [i for i, (_, cc) in enumerate(blocks) if cc is not None]
        digest = hashlib.sha256(model.encode())
        keys: dict[int, str] = {}
        for i, (text, _) in enumerate(blocks):
            digest.update(len(text).to_bytes(8, "big") + text.encode())
            if i in breakpoints:
                keys[i] = digest.copy().hexdigest()
        upto = [sum(sizes[: i + 1]) for i in range(len(blocks))]
        minimum = self.min_cacheable.get(model, DEFAULT_MIN_CACHEABLE)
        now = self.now()
        with self._lock:
            seen = self._cache if view is None else view
            hit = None
            for i in breakpoints:
                entry = seen.get(keys[i])
                if entry is not None and entry[0] > now:
                    hit = i
            read = upto[hit] if hit is not None else 0
            if hit is not None:
                ttl = seen[keys[hit]][1]
                self._cache[keys[hit]] = (now + TTL_SECONDS[ttl], ttl)
            written = {"5m": 0, "1h": 0}
            start = read
            for i in breakpoints:
                if hit is not None and i <= hit:
                    continue
                if upto[i] < minimum:
                    continue  # too short to cache: bills as input
                ttl = blocks[i][1].get("ttl", "5m")  # type: ignore[union-attr]
                written[ttl] += upto[i] - start
                start = upto[i]
                self._cache[keys[i]] = (now + TTL_SECONDS[ttl], ttl)
        creation = written["5m"] + written["1h"]
        return {
            "input_tokens": total - read - creation,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": written["5m"], "ephemeral_1h_input_tokens": written["1h"]},
        }

    def answer(self, body: dict[str, Any], *, batch: bool,
               view: dict[str, tuple[float, str]] | None = None) -> tuple[int, dict[str, Any]]:
        """(status, Message or error body) for one Messages request, billed."""
        blocks = self._blocks(body)
        problem = self._check_breakpoints(blocks)
        if problem:
            return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}
        model = body["model"]
        text = self.responder(body)
        usage = {**self._prompt_usage(model, blocks, view), "output_tokens": count_tokens(text),
                 "service_tier": "batch" if batch else "standard"}
        with self._lock:
            self.billed.append(Billed(model, usage, batch))
        message = {
            "id": f"msg_fake_{len(self.billed)}", "type": "message", "role": "assistant",
            "model": self.reply_models.get(model, model),
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": usage,
        }
        return 200, message

    # -- the Message Batches API ------------------------------------------------------

    def _batch_json(self, batch: _Batch) -> dict[str, Any]:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.status == "ended":
            for result in batch.results.values():
                counts[result["type"]] += 1
        else:
            counts["processing"] = len(batch.requests)
        iso = lambda t: t.isoformat().replace("+00:00", "Z") if t else None  # noqa: E731
        return {
            "id": batch.id, "type": "message_batch", "processing_status": batch.status,
            "request_counts": counts, "created_at": iso(batch.created_at),
            "expires_at": iso(batch.created_at + timedelta(hours=24)), "ended_at": iso(batch.ended_at),
            "cancel_initiated_at": iso(batch.cancel_initiated_at), "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if batch.status == "ended" else None,
        }

    def _process(self, batch: _Batch, *, limit: int | None = None) -> None:
        """Answer the batch's requests; past `limit`, the rest are canceled."""
        view = dict(self._cache) if self.batch_cache == "parallel" else None
        for n, request in enumerate(batch.requests):
            custom_id = request["custom_id"]
            outcome = self.outcomes.get(custom_id)
            if limit is not None and n >= limit:
                result: dict[str, Any] = {"type": "canceled"}
            elif outcome == "errored":
                overloaded = {"type": "overloaded_error", "message": "Overloaded"}
                result = {"type": "errored",
                          "error": {"type": "error", "request_id": f"req_{custom_id}", "error": overloaded}}
            elif outcome in ("expired", "canceled"):
                result = {"type": outcome}
            else:
                status, message = self.answer(request["params"], batch=True, view=view)
                if status == 200 and custom_id in self.stop_reasons:
                    message["stop_reason"] = self.stop_reasons[custom_id]
                result = ({"type": "succeeded", "message": message} if status == 200
                          else {"type": "errored", "error": {**message, "request_id": f"req_{custom_id}"}})
            batch.results[custom_id] = result
        batch.status = "ended"
        batch.ended_at = datetime.now(UTC)

    def create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self.create_errors:
                status, kind = self.create_errors.pop(0)
                return status, {"type": "error", "error": {"type": kind, "message": kind.replace("_", " ")}}
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "requests: required"}}
        ids = [r.get("custom_id") for r in requests]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and CUSTOM_ID.match(i) for i in ids):
            return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "custom_id must be unique, 1-64 of [a-zA-Z0-9_-]"}}
        with self._lock:
            batch = _Batch(id=f"msgbatch_fake{len(self.batches) + 1:04d}", requests=requests,
                           created_at=datetime.now(UTC))
            self.batches[batch.id] = batch
            self.created.append(batch)
        return 200, self._batch_json(batch)

    def retrieve_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self.retrieve_errors:
                status, kind = self.retrieve_errors.pop(0)
                return status, {"type": "error", "error": {"type": kind, "message": kind.replace("_", " ")}}
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, {"type": "error", "error": {"type": "not_found_error", "message": "batch not found"}}
            batch.polls += 1
            if batch.status == "in_progress" and batch.polls >= self.polls_until_ended:
                self._process(batch)
            elif batch.status == "canceling":
                self._process(batch, limit=self.done_before_cancel)
            return 200, self._batch_json(batch)

    def cancel_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, {"type": "error", "error": {"type": "not_found_error", "message": "batch not found"}}
            if batch.status == "in_progress":
                batch.status = "canceling"
                batch.cancel_initiated_at = datetime.now(UTC)
            return 200, self._batch_json(batch)

    def delete_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, {"type": "error", "error": {"type": "not_found_error", "message": "batch not found"}}
            if batch.status != "ended":
                return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                        "message": "only a batch that has ended can be deleted"}}
            del self.batches[batch_id]
            self.deleted.append(batch_id)
        return 200, {"id": batch_id, "type": "message_batch_deleted"}

    def batch_results(self, batch_id: str) -> tuple[int, bytes]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None or batch.status != "ended":
                return 404, b'{"type":"error","error":{"type":"not_found_error","message":"no results"}}'
            lines = [{"custom_id": cid, "result": result} for cid, result in reversed(batch.results.items())]
        return 200, "".join(json.dumps(line) + "\n" for line in lines).encode()


def _sse(message: dict[str, Any]) -> bytes:
    """The message as the streaming API sends it: start (input usage), text deltas, stop."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    text = message["content"][0]["text"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start",
         {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    for i in range(0, len(text), 400):
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": text[i : i + 400]}}))
    final = {k: usage[k] for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                   "cache_read_input_tokens")}  # cumulative, as message_delta reports it
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": final}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


class _Handler(BaseHTTPRequestHandler):
    server: ClaudeApiFake
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("request-id", "req_fake")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Drop the connection without a reply: a TCP reset (SO_LINGER 0, then close)."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode())

    def _authorized(self) -> bool:
        if self.headers.get("x-api-key") or self.headers.get("authorization"):
            return True
        self._json(401, {"type": "error", "error": {"type": "authentication_error", "message": "no key"}})
        return False

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        path = self.path.split("?")[0]
        self.server.calls.append(("POST", path))
        if not self._authorized():
            return
        if path == "/v1/messages":
            with self.server._lock:
                self.server.message_requests.append(body)
            if self.server.call_seconds:
                time.sleep(self.server.call_seconds)
            status, message = self.server.answer(body, batch=False)
            if status == 200 and body.get("stream"):
                self._send(200, _sse(message), "text/event-stream")
            else:
                self._json(status, message)
        elif path == "/v1/messages/batches":
            status, data = self.server.create_batch(body)
            with self.server._lock:
                lose = status == 200 and self.server.lose_create_replies > 0
                if lose:
                    self.server.lose_create_replies -= 1
                    self.server.lost_create_replies += 1
            if lose:
                self._reset()
            else:
                self._json(status, data)
        elif (m := re.fullmatch(r"/v1/messages/batches/([^/]+)/cancel", path)):
            self._json(*self.server.cancel_batch(m.group(1)))
        else:
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})

    def do_DELETE(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.server.calls.append(("DELETE", path))
        if not self._authorized():
            return
        if (m := re.fullmatch(r"/v1/messages/batches/([^/]+)", path)):
            self._json(*self.server.delete_batch(m.group(1)))
        else:
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.server.calls.append(("GET", path))
        if not self._authorized():
            return
        if (m := re.fullmatch(r"/v1/messages/batches/([^/]+)/results", path)):
            status, data = self.server.batch_results(m.group(1))
            self._send(status, data, "application/binary" if status == 200 else "application/json")
        elif (m := re.fullmatch(r"/v1/messages/batches/([^/]+)", path)):
            self._json(*self.server.retrieve_batch(m.group(1)))
        else:
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
