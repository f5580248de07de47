"""GET /api/jobs?status=&type=&limit=&cursor="""

from flask import Request, Response

from ai_jobs.http import operations
from ai_jobs.http.flask_io import json_response, read_query, services
from ai_jobs.http.schemas import ListJobsQuery


def handler(request: Request) -> Response:
    svc = services()
    who = svc.authenticate(request.headers.get("Authorization"))
    return json_response(operations.list_jobs(svc, who, read_query(request, ListJobsQuery)))
