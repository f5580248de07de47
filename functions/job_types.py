"""GET /api/job-types"""

from flask import Request, Response

from ai_jobs.http import operations
from ai_jobs.http.flask_io import json_response, services


def handler(request: Request) -> Response:
    return json_response(operations.job_types(services()), headers={"Cache-Control": "public, max-age=60"})
