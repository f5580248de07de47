"""GET /api/health"""

from flask import Request, Response

from ai_jobs.http import operations
from ai_jobs.http.flask_io import json_response, services


def handler(request: Request) -> Response:
    body, status = operations.health(services())
    return json_response(body, status)
