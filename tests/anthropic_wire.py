"""Anthropic Messages API responses in their documented wire format (SSE
streams and JSON error bodies), for respx routes on httpcore2."""

from __future__ import annotations

import json
from typing import Any

import httpx

MESSAGES_URL = "https://api.anthropic.com/v1/messages"


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def sse_message(
    text: str,
    *,
    model: str = "claude-sonnet-5-5",
    stop_reason: str = "end_turn",
    input_tokens: int = 100,
    output_tokens: int = 50,
    chunks: int = 4,
    error_after_chunks: dict[str, Any] | None = None,
) -> str:
    """A full streamed message; with `error_after_chunks`, an `error` event cuts the stream."""
    parts = [
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
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
                },
            },
        ),
        _event("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
    ]
    size = max(1, -(-len(text) // chunks))
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    for n, piece in enumerate(pieces):
        if error_after_chunks is not None and n == 1:
            parts.append(_event("error", {"type": "error", "error": error_after_chunks}))
            return "".join(parts)
        parts.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": piece}}))
    parts.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    parts.append(_event("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                          "usage": {"output_tokens": output_tokens}}))
    parts.append(_event("message_stop", {"type": "message_stop"}))
    return "".join(parts)


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
