"""GET /api/openapi.json"""

from flask import Request, Response

from ai_jobs.http.flask_io import json_response
from ai_jobs.http.openapi import openapi_document


def handler(request: Request) -> Response:
    return json_response(openapi_document())
