"""The Flask app: every /api route, problem+json errors and (locally) public/.

Vercel (`functions/app.py`), `ai-jobs dev`/`serve` and functions-framework all
serve this one app, so the package runs alone from a wheel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Request, Response, request, send_from_directory
from werkzeug.exceptions import HTTPException

from ai_jobs.errors import AiJobsError
from ai_jobs.http import handlers, schedules, workflows
from ai_jobs.http.cors import install_cors
from ai_jobs.http.flask_io import problem_response
from ai_jobs.http.problems import MAX_AUTHORIZATION_BYTES, MAX_HEADER_BYTES, Problem, problem_from_error
from ai_jobs.http.services import Services
from ai_jobs.resources import public_dir

log = logging.getLogger("ai_jobs.http")

Handler = Callable[[Request], Response]

ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/api/jobs", handlers.create_job),
    ("GET", "/api/jobs", handlers.list_jobs),
    ("GET", "/api/jobs/<job_id>", handlers.get_job),
    ("DELETE", "/api/jobs/<job_id>", handlers.delete_job),
    ("POST", "/api/jobs/<job_id>/cancel", handlers.cancel_job),
    ("POST", "/api/jobs/<job_id>/retry", handlers.retry_job),
    ("POST", "/api/jobs/<job_id>/pause", workflows.pause_job),
    ("POST", "/api/jobs/<job_id>/resume", workflows.resume_job),
    ("GET", "/api/jobs/<job_id>/children", workflows.list_children),
    ("POST", "/api/schedules", schedules.create_schedule),
    ("GET", "/api/schedules", schedules.list_schedules),
    ("DELETE", "/api/schedules/<schedule_id>", schedules.delete_schedule),
    ("POST", "/api/schedules/<schedule_id>/pause", schedules.pause_schedule),
    ("POST", "/api/schedules/<schedule_id>/resume", schedules.resume_schedule),
    ("GET", "/api/job-types", handlers.job_types),
    ("GET", "/api/health", handlers.health),
    ("GET", "/api/openapi.json", handlers.openapi),
    ("POST", "/api/internal/work", handlers.internal_work),
    ("GET", "/api/internal/sweep", handlers.internal_sweep),
]


def _view(handler: Handler) -> Callable[..., Response]:
    def view(**_: str) -> Response:  # path parameters are read from request.view_args
        return handler(request)

    view.__name__ = f"{handler.__module__}.{handler.__name__}"
    return view


def _check_header_sizes() -> None:
    """431 problem+json for an oversized Authorization header or header block, before
    any token is parsed or body read."""
    authorization = request.headers.get("Authorization", "")
    if len(authorization) > MAX_AUTHORIZATION_BYTES:
        raise Problem(431, "header_too_large",
                      f"the Authorization header is {len(authorization)} bytes; the limit is {MAX_AUTHORIZATION_BYTES}")
    total = sum(len(name) + len(value) + 4 for name, value in request.headers.items())  # "name: value\r\n"
    if total > MAX_HEADER_BYTES:
        raise Problem(431, "header_too_large", f"the request headers are {total} bytes; the limit is {MAX_HEADER_BYTES}")


def create_app(services: Services | None = None, *, serve_public: bool = False) -> Flask:
    """One app per process; `services` defaults to Settings from the environment."""
    app = Flask(__name__, static_folder=None)
    services = services or Services()
    app.extensions["ai_jobs"] = services
    app.before_request(_check_header_sizes)  # first: before CORS and every route
    install_cors(app, services.settings.cors_origins)
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
        folder = public_dir()

        @app.get("/")
        @app.get("/<path:filename>")
        def public_file(filename: str = "index.html") -> Response:
            return send_from_directory(folder, filename)

    return app
