"""The Vercel entrypoint: one Flask app routing to the handlers in this folder.

pyproject.toml's [tool.vercel] entrypoint points here; `ai-jobs dev` serves
the same app locally (plus public/). Errors become application/problem+json.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from functions import _bootstrap  # noqa: F401 - puts shared/src on sys.path when not installed

from flask import Flask, Request, Response, request, send_from_directory
from werkzeug.exceptions import HTTPException

from ai_jobs.errors import AiJobsError
from ai_jobs.http.flask_io import problem_response
from ai_jobs.http.problems import Problem, problem_from_error
from ai_jobs.http.services import Services
from functions import (
    health,
    internal_sweep,
    internal_work,
    job_cancel,
    job_delete,
    job_get,
    job_retry,
    job_types,
    jobs_create,
    jobs_list,
    openapi,
)

log = logging.getLogger("ai_jobs.http")

Handler = Callable[[Request], Response]

ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/api/jobs", jobs_create.handler),
    ("GET", "/api/jobs", jobs_list.handler),
    ("GET", "/api/jobs/<job_id>", job_get.handler),
    ("DELETE", "/api/jobs/<job_id>", job_delete.handler),
    ("POST", "/api/jobs/<job_id>/cancel", job_cancel.handler),
    ("POST", "/api/jobs/<job_id>/retry", job_retry.handler),
    ("GET", "/api/job-types", job_types.handler),
    ("GET", "/api/health", health.handler),
    ("GET", "/api/openapi.json", openapi.handler),
    ("POST", "/api/internal/work", internal_work.handler),
    ("GET", "/api/internal/sweep", internal_sweep.handler),
]

PUBLIC_DIR = Path(__file__).resolve().parent.parent / "public"


def _view(handler: Handler) -> Callable[..., Response]:
    def view(**_: str) -> Response:  # path parameters are read from request.view_args
        return handler(request)

    view.__name__ = f"{handler.__module__}.{handler.__name__}"
    return view


def create_app(services: Services | None = None, *, serve_public: bool = False) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.extensions["ai_jobs"] = services or Services()
    for method, path, handler in ROUTES:
        app.add_url_rule(path, endpoint=f"{method} {path}", view_func=_view(handler), methods=[method])

    @app.errorhandler(Problem)
    def on_problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(AiJobsError)
    def on_queue_error(exc: AiJobsError) -> Response:
        return problem_response(problem_from_error(exc))

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return problem_response(Problem(status, (exc.name or "error").lower().replace(" ", "_"), exc.description or ""))

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "internal_error", "unexpected server error; it has been logged"))

    if serve_public:  # on Vercel, public/ is served by the platform

        @app.get("/")
        @app.get("/<path:filename>")
        def public_file(filename: str = "index.html") -> Response:
            return send_from_directory(PUBLIC_DIR, filename)

    return app


app = create_app()
