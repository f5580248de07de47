"""CORS for the public /api routes, for browsers on origins listed in
AI_JOBS_CORS_ORIGINS. Requests carry bearer tokens, not cookies, so there is no
credentials mode. /api/internal/* is never exposed: it is called server to server.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from werkzeug.wrappers import Response

from ai_jobs.http.io import ApiRequest, empty_response, problem_response
from ai_jobs.http.problems import Problem

if TYPE_CHECKING:
    from ai_jobs.http.app import App

ALLOW_METHODS = "GET, POST, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key"
EXPOSE_HEADERS = "Location"
# Chromium caps a cached preflight at 2 h; removing an origin still takes effect
# at once, since actual responses stop carrying Access-Control-Allow-Origin.
MAX_AGE_SECONDS = 7200


def is_public_api(path: str) -> bool:
    return path.startswith("/api/") and not (path == "/api/internal" or path.startswith("/api/internal/"))


def install_cors(app: App, origins: Collection[str]) -> None:
    """Answer preflights and label responses; with no origins, only the 403 for
    preflights remains (same-origin pages never send one)."""
    any_origin = "*" in origins

    def allowed(origin: str) -> bool:
        return any_origin or origin in origins

    def is_preflight(request: ApiRequest) -> bool:
        return (
            request.method == "OPTIONS"
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers
            and is_public_api(request.path)
        )

    def preflight(request: ApiRequest) -> Response | None:
        if not is_preflight(request):
            return None  # other OPTIONS requests get the app's own answer (Allow)
        origin = request.headers["Origin"]
        if not allowed(origin):
            response = problem_response(Problem(
                403, "cors_origin_not_allowed",
                f"origin {origin[:100]!r} may not call this API; add it to AI_JOBS_CORS_ORIGINS",
            ))
            response.vary.add("Origin")
            return response
        response = empty_response(204)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
        response.vary.add("Origin")
        return response

    def label(request: ApiRequest, response: Response) -> Response:
        if not origins or not is_public_api(request.path) or is_preflight(request):
            return response
        response.vary.add("Origin")  # the answer depends on Origin: caches must key on it
        origin = request.headers.get("Origin")
        if origin and allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response

    app.before_request.append(preflight)
    app.after_request.append(label)
