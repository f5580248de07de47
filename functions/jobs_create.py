"""POST /api/jobs"""

from flask import Request, Response

from ai_jobs.http import operations
from ai_jobs.http.flask_io import json_response, read_json, services
from ai_jobs.http.schemas import CreateJobRequest


def handler(request: Request) -> Response:
    svc = services()
    who = svc.authenticate(request.headers.get("Authorization"))
    body = read_json(request, CreateJobRequest, max_bytes=svc.settings.max_body_bytes, max_depth=svc.settings.max_input_depth)
    result = operations.create_job(svc, who, body, request.headers.get("Idempotency-Key"))
    return json_response(result.job, 202 if result.created else 200, {"Location": f"/api/jobs/{result.job.id}"})
