"""The request handlers, one per route: parse, authorize, call `operations`.

Kept thin on purpose: what an endpoint does lives in `ai_jobs.http.operations`,
so Vercel, `ai-jobs serve` and functions-framework all run the same code.
"""

from __future__ import annotations

from werkzeug.wrappers import Response

from ai_jobs.http import operations
from ai_jobs.http.auth import require_secret
from ai_jobs.http.io import ApiRequest, job_id_arg, json_response, read_json, read_query
from ai_jobs.http.schemas import CreateJobRequest, Job, ListJobsQuery, WorkRequest


def create_job(request: ApiRequest) -> Response:
    """POST /api/jobs"""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    body = read_json(request, CreateJobRequest, max_bytes=svc.settings.max_body_bytes, max_depth=svc.settings.max_input_depth)
    result = operations.create_job(svc, who, body, request.headers.get("Idempotency-Key"))
    return json_response(Job.of(result.job), 202 if result.created else 200, {"Location": f"/api/jobs/{result.job.id}"})


def list_jobs(request: ApiRequest) -> Response:
    """GET /api/jobs?status=&type=&limit=&cursor="""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    return json_response(operations.list_jobs(svc, who, read_query(request, ListJobsQuery)))


def get_job(request: ApiRequest) -> Response:
    """GET /api/jobs/{job_id}"""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    job_id = job_id_arg(request)
    return json_response(operations.get_job(svc, who, job_id))


def delete_job(request: ApiRequest) -> Response:
    """DELETE /api/jobs/{job_id}"""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    job_id = job_id_arg(request)
    operations.delete_job(svc, who, job_id)
    return json_response(None, 204)


def cancel_job(request: ApiRequest) -> Response:
    """POST /api/jobs/{job_id}/cancel"""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    job_id = job_id_arg(request)
    return json_response(operations.cancel_job(svc, who, job_id))


def retry_job(request: ApiRequest) -> Response:
    """POST /api/jobs/{job_id}/retry"""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    job_id = job_id_arg(request)
    return json_response(operations.retry_job(svc, who, job_id), 202)


def job_types(request: ApiRequest) -> Response:
    """GET /api/job-types"""
    return json_response(operations.job_types(request.services), headers={"Cache-Control": "public, max-age=60"})


def health(request: ApiRequest) -> Response:
    """GET /api/health"""
    body, status = operations.health(request.services)
    return json_response(body, status)


def openapi(request: ApiRequest) -> Response:
    """GET /api/openapi.json"""
    from ai_jobs.http.openapi import openapi_document  # built on the first request for it, not at cold start

    return json_response(openapi_document())


def internal_work(request: ApiRequest) -> Response:
    """POST /api/internal/work: the long-running worker invocation (WORKER_SECRET)."""
    svc = request.services
    require_secret(request.headers.get("Authorization"), svc.settings.worker_secret, "WORKER_SECRET")
    body = read_json(request, WorkRequest, max_bytes=4096, max_depth=4, allow_empty=True)
    return json_response(operations.work(svc, body))


def internal_sweep(request: ApiRequest) -> Response:
    """GET /api/internal/sweep: Vercel Cron (Authorization: Bearer $CRON_SECRET)."""
    svc = request.services
    require_secret(request.headers.get("Authorization"), svc.settings.cron_secret, "CRON_SECRET")
    return json_response(operations.run_sweep(svc))
