"""The WSGI app: every /api route, problem+json errors and (locally) public/.

Vercel (`functions/app.py`), `ai-jobs dev`/`serve` and functions-framework all
serve this one app, so the package runs alone from a wheel. It is werkzeug
(routing, request, response) and about a hundred lines of our own instead of
Flask: Flask and what only it loads (jinja2, click, itsdangerous, blinker) were
more than half of a cold start's imports, and the API used none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule
from werkzeug.wrappers import Response

from ai_jobs.errors import AiJobsError
from ai_jobs.http import handlers, schedules, workflows
from ai_jobs.http.cors import install_cors
from ai_jobs.http.io import ApiRequest, empty_response, problem_response
from ai_jobs.http.problems import MAX_AUTHORIZATION_BYTES, MAX_HEADER_BYTES, Problem, problem_from_error
from ai_jobs.http.services import Services
from ai_jobs.resources import public_dir

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from werkzeug.test import Client

log = logging.getLogger("ai_jobs.http")

Handler = Callable[[ApiRequest], Response]
# Runs before routing's outcome is acted on; a response ends the request there.
BeforeHook = Callable[[ApiRequest], Response | None]
# Sees every response, errors included, and returns the one to send.
AfterHook = Callable[[ApiRequest, Response], Response]

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


def check_header_sizes(request: ApiRequest) -> None:
    """431 problem+json for an oversized Authorization header or header block, before
    any token is parsed or body read."""
    authorization = request.headers.get("Authorization", "")
    if len(authorization) > MAX_AUTHORIZATION_BYTES:
        raise Problem(431, "header_too_large",
                      f"the Authorization header is {len(authorization)} bytes; the limit is {MAX_AUTHORIZATION_BYTES}")
    total = sum(len(name) + len(value) + 4 for name, value in request.headers.items())  # "name: value\r\n"
    if total > MAX_HEADER_BYTES:
        raise Problem(431, "header_too_large", f"the request headers are {total} bytes; the limit is {MAX_HEADER_BYTES}")


class App:
    """A WSGI app (`app(environ, start_response)`): werkzeug routes each request to
    a handler, which gets an `ApiRequest` carrying the services and path arguments.

    Per request: the route is matched; the before hooks run in order (the header
    size check first, then the CORS preflight); then the handler, or the routing
    error (404, also for a path with doubled slashes such as /api//jobs, which is not
    redirected; 405 with Allow); every exception
    becomes problem+json (Problem, then queue errors, then HTTP errors, then
    anything else as a logged 500); the after hooks see every response. A GET
    route also answers HEAD (no body), and every route answers OPTIONS with Allow."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # No redirects: werkzeug's merge_slashes answered /api//jobs with a 308 text/html
        # page and a Location built from the client's Host header; it is a 404 problem.
        self.url_map = Map(strict_slashes=True, merge_slashes=False)
        self.views: dict[str, Handler] = {}
        self.before_request: list[BeforeHook] = []
        self.after_request: list[AfterHook] = []

    def add_route(self, path: str, methods: Iterable[str], handler: Handler, *, endpoint: str | None = None) -> None:
        """Route `methods` on `path` (werkzeug rule syntax) to `handler`; GET adds HEAD."""
        methods = {m.upper() for m in methods}
        endpoint = endpoint or f"{'/'.join(sorted(methods))} {path}"
        self.url_map.add(Rule(path, endpoint=endpoint, methods=[*methods, "OPTIONS"]))
        self.views[endpoint] = handler

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = ApiRequest(environ, self.services)
        try:
            response = self.respond(request)
        except Exception:  # a hook or an error handler failed: still problem+json
            log.exception("error while answering %s %s", request.method, request.path)
            response = problem_response(Problem(500, "internal_error", "unexpected server error; it has been logged"))
        return response(environ, start_response)

    def respond(self, request: ApiRequest) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            response = None
            for hook in self.before_request:
                response = hook(request)
                if response is not None:
                    break
            if response is None:
                response = self.dispatch(request, adapter)
        except Exception as exc:  # noqa: BLE001 - every error becomes a response
            response = self.handle_error(request, exc)
        for after in reversed(self.after_request):
            response = after(request, response)
        return response

    def dispatch(self, request: ApiRequest, adapter: MapAdapter) -> Response:
        rule, args = adapter.match(return_rule=True)  # raises 404 or 405
        request.view_args = args
        if request.method == "OPTIONS":
            response = empty_response(200)
            response.allow.update(adapter.allowed_methods())
            return response
        return self.views[rule.endpoint](request)

    def handle_error(self, request: ApiRequest, exc: Exception) -> Response:
        if isinstance(exc, RequestRedirect):  # none is expected (see __init__); never a redirect page
            return problem_response(Problem(404, "not_found", NotFound.description))
        if isinstance(exc, Problem):
            return problem_response(exc)
        if isinstance(exc, AiJobsError):
            return problem_response(problem_from_error(exc))
        if isinstance(exc, HTTPException):
            status = exc.code or 500
            headers = {"Allow": ", ".join(exc.valid_methods)} if isinstance(exc, MethodNotAllowed) and exc.valid_methods else None
            return problem_response(Problem(status, (exc.name or "error").lower().replace(" ", "_"), exc.description or "",
                                            headers=headers))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "internal_error", "unexpected server error; it has been logged"))

    def test_client(self) -> Client:
        """werkzeug's test client on this app (tests and scripts; never on a request path)."""
        from werkzeug.test import Client

        return Client(self)


def create_app(services: Services | None = None, *, serve_public: bool = False) -> App:
    """One app per process; `services` defaults to Settings from the environment."""
    services = services or Services()
    app = App(services)

    app.before_request.append(check_header_sizes)  # first: before CORS and every route
    install_cors(app, services.settings.cors_origins)
    for method, path, handler in ROUTES:
        app.add_route(path, [method], handler, endpoint=f"{method} {path}")

    if serve_public:  # on Vercel, public/ is served by the platform
        folder = public_dir()

        def public_file(request: ApiRequest) -> Response:
            from werkzeug.utils import send_from_directory

            return send_from_directory(folder, request.view_args.get("filename", "index.html"), request.environ)

        app.add_route("/", ["GET"], public_file, endpoint="public index")
        app.add_route("/<path:filename>", ["GET"], public_file, endpoint="public file")

    return app
