"""GET /api/jobs/{job_id}"""

from flask import Request, Response

from ai_jobs.http import operations
from ai_jobs.http.flask_io import job_id_arg, json_response, services


def handler(request: Request) -> Response:
    svc = services()
    who = svc.authenticate(request.headers.get("Authorization"))
    job_id = job_id_arg(request)
    return json_response(operations.get_job(svc, who, job_id))
