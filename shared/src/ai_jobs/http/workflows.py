"""The job-tree routes (issue 16 items 4-5): pause, resume, and a job's children.

Handlers and the OpenAPI paths in one module, so the job routes' files only gain
their route lines. Cancel, retry and delete reach the tree through the store's
tree functions (ai_jobs.http.operations)."""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Response

from ai_jobs.http.io import ApiRequest, job_id_arg, json_response, read_query
from ai_jobs.http.schemas import Job, JobList, PageQuery, page_parameters


def pause_job(request: ApiRequest) -> Response:
    """POST /api/jobs/{job_id}/pause"""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    return json_response(Job.of(svc.store.pause(job_id_arg(request), user_id=who.user_id)))


def resume_job(request: ApiRequest) -> Response:
    """POST /api/jobs/{job_id}/resume: pending again, handed to a worker."""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    job = svc.store.resume(job_id_arg(request), user_id=who.user_id)
    if job.status == "pending":
        svc.dispatcher.dispatch(job.id)
    return json_response(Job.of(job))


def list_children(request: ApiRequest) -> Response:
    """GET /api/jobs/{job_id}/children?limit=&cursor="""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    job_id = job_id_arg(request)
    query = read_query(request, PageQuery)
    page = svc.store.children(job_id, user_id=who.user_id, limit=query.limit, cursor=query.cursor)
    return json_response(JobList(jobs=[Job.of(job) for job in page.jobs], next_cursor=page.next_cursor))


def workflow_paths(user_job_operation: Any, json_body: Any, problem: Any) -> dict[str, Any]:
    """The OpenAPI paths of these routes (built by ai_jobs.http.openapi's helpers)."""
    state = problem(409, "the job is completed, failed or cancelled (pause: or being cancelled)", ["invalid_state"])
    children = user_job_operation(
        "List a job's children, newest first",
        {"200": json_body(JobList, "a page of the job's children (keyset-paginated like GET /api/jobs)")},
    )
    children["parameters"] = [
        *children["parameters"],
        *page_parameters(),
    ]
    children["responses"]["400"] = problem(
        400, "the job id in the path is not a UUID, or a bad, unknown or repeated query parameter",
        ["invalid_job_id", "invalid_query"])
    return {
        "/api/jobs/{job_id}/pause": {
            "post": user_job_operation(
                "Pause a pending or running job and its unfinished children",
                {"200": json_body(Job, "pending: now paused (never claimed until resumed); running: "
                                       "pause_requested_at set, it stops at its next step, keeps its finished "
                                       "steps and becomes paused; already paused: unchanged"),
                 "409": state},
            ),
        },
        "/api/jobs/{job_id}/resume": {
            "post": user_job_operation(
                "Resume a paused job and its paused children",
                {"200": json_body(Job, "paused: pending again, due now, and handed to a worker; running with a "
                                       "pause request: the request is withdrawn; pending: unchanged"),
                 "409": problem(409, "the job is completed, failed or cancelled", ["invalid_state"])},
            ),
        },
        "/api/jobs/{job_id}/children": {"get": children},
    }
