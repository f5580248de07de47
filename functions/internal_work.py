"""POST /api/internal/work: the long-running worker invocation (WORKER_SECRET)."""

from flask import Request, Response

from ai_jobs.http import operations
from ai_jobs.http.auth import require_secret
from ai_jobs.http.flask_io import json_response, read_json, services
from ai_jobs.http.schemas import WorkRequest


def handler(request: Request) -> Response:
    svc = services()
    require_secret(request.headers.get("Authorization"), svc.settings.worker_secret, "WORKER_SECRET")
    body = read_json(request, WorkRequest, max_bytes=4096, max_depth=4, allow_empty=True)
    return json_response(operations.work(svc, body))
