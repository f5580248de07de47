"""GET /api/internal/sweep: Vercel Cron (Authorization: Bearer $CRON_SECRET)."""

from flask import Request, Response

from ai_jobs.http import operations
from ai_jobs.http.auth import require_secret
from ai_jobs.http.flask_io import json_response, services


def handler(request: Request) -> Response:
    svc = services()
    require_secret(request.headers.get("Authorization"), svc.settings.cron_secret, "CRON_SECRET")
    return json_response(operations.run_sweep(svc))
