"""Request and response for the handlers: the request they are given (services and
path arguments on it, no globals), strict JSON bodies with size, depth and type
limits, query strings through pydantic, problem+json errors. werkzeug only: Flask
cost a cold start ~0.4 s of imports it did not need."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.wrappers import Request, Response

from ai_jobs.http.problems import PROBLEM_JSON, Problem, field_errors

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from ai_jobs.http.services import Services

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger(__name__)


class MalformedBodyError(OSError):
    """The request body's framing is broken: a malformed `Transfer-Encoding: chunked`
    (a bad chunk size, a chunk not ended by CRLF) or a body that stops before its
    last chunk. Raised by the local server's de-chunker; `read_body` answers it with
    400 malformed_body."""


class ApiRequest(Request):
    """A werkzeug request that carries what a handler needs: the process's services
    and the route's path arguments, passed in by the app rather than read from globals."""

    def __init__(self, environ: WSGIEnvironment, services: Services) -> None:
        super().__init__(environ)
        self.services = services
        self.view_args: dict[str, Any] = {}


def empty_response(status: int, headers: Mapping[str, str] | None = None) -> Response:
    """No body, so no Content-Type either (204s, the automatic OPTIONS answer)."""
    response = Response(status=status, headers=dict(headers or {}))
    del response.headers["Content-Type"]
    return response


def json_response(body: BaseModel | Mapping[str, Any] | None, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    if body is None:  # 204
        return empty_response(status, headers)
    text = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body)
    return Response(text, status=status, mimetype="application/json", headers=dict(headers or {}))


def problem_response(problem: Problem) -> Response:
    return Response(json.dumps(problem.body()), status=problem.status, mimetype=PROBLEM_JSON, headers=problem.headers)


def json_problem(value: Any, max_depth: int) -> str | None:
    """What PostgreSQL's jsonb or our limits would refuse in a JSON value: nesting
    deeper than `max_depth`, a NUL character or a lone UTF-16 surrogate in a key or
    string, or a number too large for a double (1e400). Iterative."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "JSON strings must not contain the NUL character (\\u0000)"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "JSON strings must be valid Unicode (a \\u escape left a lone surrogate)"
        elif isinstance(item, float) and not math.isfinite(item):
            return "JSON numbers must fit in a double (this one overflows to infinity)"
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
    return None


def _not_json(constant: str) -> Any:
    """Python's parser accepts NaN and Infinity; JSON (RFC 8259) does not."""
    raise ValueError(f"{constant} is not a JSON value")


READ_CHUNK_BYTES = 64 * 1024


def read_body(request: Request, max_bytes: int) -> bytes:
    """At most `max_bytes` of body, read as it arrives: 413 as soon as one byte more
    comes in, so a chunked (or lying) body never sits in memory whole."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise Problem(413, "body_too_large", f"request body is {length} bytes; the limit is {max_bytes}")
    stream = request.stream  # werkzeug: bounded by Content-Length, or de-chunked by the server
    parts: list[bytes] = []
    size = 0
    while size <= max_bytes:
        chunk = _read_some(stream, min(READ_CHUNK_BYTES, max_bytes + 1 - size))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
    raise Problem(413, "body_too_large", f"request body exceeds {max_bytes} bytes")


def _read_some(stream: Any, size: int) -> bytes:
    """One read of the body; a body that cannot be read is 400 malformed_body, never a 500."""
    try:
        return stream.read(size)
    except MalformedBodyError as exc:  # the local server's de-chunker
        raise Problem(400, "malformed_body", str(exc)) from None
    except ClientDisconnected:  # werkzeug: fewer bytes than Content-Length, then the connection ended
        raise Problem(400, "malformed_body",
                      "the request body ended before its Content-Length: the connection closed early") from None
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - another server's body reader (gunicorn's chunk parser, a reset socket)
        log.warning("could not read the request body: %s: %s", type(exc).__name__, exc)
        raise Problem(400, "malformed_body",
                      f"the request body could not be read ({type(exc).__name__}): malformed chunked encoding "
                      "or a connection that closed early") from None


def read_json(request: Request, model: type[M], *, max_bytes: int, max_depth: int, allow_empty: bool = False) -> M:
    """The body as `model`, or a 4xx Problem that says exactly what is wrong."""
    raw = read_body(request, max_bytes)
    if not raw.strip():
        if allow_empty:
            return model()
        raise Problem(400, "empty_body", "request body is empty; send a JSON object")
    mimetype = request.mimetype or ""
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Problem(415, "unsupported_media_type", f"send Content-Type: application/json (got {mimetype})")
    try:
        data = json.loads(raw, parse_constant=_not_json)
    except UnicodeDecodeError:
        raise Problem(400, "invalid_json", "request body is not UTF-8 JSON") from None
    except RecursionError:
        raise Problem(422, "too_deep", f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise Problem(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Problem(422, "invalid_body", f"request body must be a JSON object, not {type(data).__name__}")
    issue = json_problem(data, max_depth)
    if issue is not None:
        raise Problem(422, "invalid_json_value", issue)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc.errors(include_url=False, include_context=False, include_input=False))
        raise Problem(422, "invalid_body", "request body failed validation", errors=errors) from None


def read_query(request: Request, model: type[M]) -> M:
    values: dict[str, str] = {}
    for key in request.args:
        items = request.args.getlist(key)
        if len(items) > 1:
            raise Problem(400, "invalid_query", f"query parameter {key!r} given {len(items)} times")
        values[key] = items[0]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = field_errors(exc.errors(include_url=False, include_context=False, include_input=False))
        raise Problem(400, "invalid_query", "query parameters failed validation", errors=errors) from None


def uuid_arg(request: ApiRequest, name: str, what: str) -> UUID:
    """A UUID path parameter, or 400 invalid_<name> naming what was given."""
    raw = request.view_args.get(name, "")
    try:
        return UUID(str(raw))
    except ValueError:
        raise Problem(400, f"invalid_{name}", f"{what} must be a UUID, got {str(raw)[:60]!r}") from None


def job_id_arg(request: ApiRequest) -> UUID:
    return uuid_arg(request, "job_id", "job id")
