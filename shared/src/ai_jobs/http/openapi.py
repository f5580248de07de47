"""OpenAPI 3.1 document generated from the pydantic models the API uses.

Every status an operation can answer is listed, and nothing else
(tests/test_api_contract.py drives the app through each one). Problem
responses pin `status`, `code` and `type` to the values the server sends, so
a client can branch on `code` from the document alone."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from ai_jobs import __version__
from ai_jobs.claude.spend import BUDGET_RETRY_AFTER_SECONDS
from ai_jobs.http.problems import (
    ACTIVE_LIMIT_RETRY_AFTER_SECONDS,
    MAX_AUTHORIZATION_BYTES,
    MAX_HEADER_BYTES,
    PROBLEM_JSON,
    PROBLEM_TYPE_PREFIX,
)
from ai_jobs.http.schemas import (
    CreateJobRequest,
    Health,
    Job,
    JobList,
    JobTypeList,
    ProblemBody,
    WorkRequest,
    WorkResult,
    page_parameters,
)
from ai_jobs.models import JOB_TYPE_PATTERN, JobStatus
from ai_jobs.http.schedules import CreateScheduleRequest, PublicSchedule, ScheduleList
from ai_jobs.http.workflows import workflow_paths
from ai_jobs.sweep import SweepReport

REF = "#/components/schemas/{model}"
MODELS = [CreateJobRequest, Job, JobList, JobTypeList, Health, ProblemBody, WorkRequest, WorkResult, SweepReport,
          CreateScheduleRequest, PublicSchedule, ScheduleList]


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


LOCATION = {"Location": _header("the job's URL, /api/jobs/{id}")}
RETRY_AFTER = {"Retry-After": _header("seconds to wait before trying again", {"type": "string", "pattern": "^[0-9]+$"})}
WWW_AUTHENTICATE = {"WWW-Authenticate": _header('Bearer realm="ai-jobs"')}


def _json(model: type, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(model)}}}
    if headers:
        response["headers"] = headers
    return response


def _problem(status: int, description: str, codes: list[str], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A problem+json response whose `code` (and `type`, `urn:ai-jobs:problem:<code>`)
    is one of `codes`, listed in the description too for readers of the rendered document."""
    schema = {
        "allOf": [
            _ref(ProblemBody),
            {
                "properties": {
                    "status": {"const": status},
                    "code": {"enum": codes},
                    "type": {"enum": [PROBLEM_TYPE_PREFIX + code for code in codes]},
                }
            },
        ]
    }
    response: dict[str, Any] = {
        "description": f"{description} (code: {', '.join(codes)})",
        "content": {PROBLEM_JSON: {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
          "description": "anything that is not a UUID answers 400 invalid_job_id"}
USER = [{"bearerAuth": []}]

# The problems user endpoints share.
UNAUTHORIZED = _problem(401, "missing, malformed, expired or wrong access token (including an `alg` that does not "
                             "match its key); expiry has no leeway (refused from its `exp` second on), only "
                             "`nbf`/`iat` may be up to 30 s ahead (clock skew)", ["unauthorized"], WWW_AUTHENTICATE)
ANONYMOUS = _problem(403, "a Supabase anonymous user (`is_anonymous: true`) while AI_JOBS_ALLOW_ANONYMOUS is off",
                     ["anonymous_not_allowed"])
HEADERS_TOO_LARGE = _problem(
    431, f"an Authorization header over {MAX_AUTHORIZATION_BYTES} bytes, or request headers over {MAX_HEADER_BYTES} "
         "bytes in all; checked before anything else", ["header_too_large"],
)
UNAVAILABLE = _problem(
    503, "the job store (Retry-After: 5) or the project's token signing keys could not be reached; try again shortly",
    ["store_unavailable", "auth_keys_unavailable"],
    {"Retry-After": {**RETRY_AFTER["Retry-After"], "required": False, "description": "sent with store_unavailable"}},
)
STORE_UNAVAILABLE = _problem(503, "the job store could not be reached; try again shortly", ["store_unavailable"],
                             RETRY_AFTER)
# 500 on the operations that need the job types (services.registry): a create, a schedule,
# the job-type listing, a worker invocation and the sweep.
TYPES_UNAVAILABLE = _problem(
    500, "the job types' modules (the built-in ones or AI_JOBS_JOB_MODULES) failed to import: a deployment error, "
         "with the error in the function's log; the next request tries the import again",
    ["job_types_unavailable"],
)
BAD_JOB_ID = _problem(400, "the job id in the path is not a UUID", ["invalid_job_id"])
NOT_FOUND = _problem(404, "no such job, or it belongs to another user (never says which)", ["job_not_found"])
# 429 on create and retry: the active-job cap, or the daily Claude budget (spend control).
TOO_MANY = _problem(
    429, f"too many unfinished (pending, running or paused) jobs for this user (active_job_limit; Retry-After is "
         f"{ACTIVE_LIMIT_RETRY_AFTER_SECONDS} s), or the user's rolling 24 h Claude budget "
         "(AI_JOBS_USER_DAILY_BUDGET_USD) has no room for this job's cost cap (budget_exceeded: Claude cost recorded "
         "in the last 24 h plus what the user's active jobs may still spend plus this job's cap would pass it; "
         "the body has daily_budget_usd, spent_usd, reserved_usd, job_cap_usd and retry_after_seconds, and "
         f"Retry-After says when enough recorded spend leaves the window, or {BUDGET_RETRY_AFTER_SECONDS} s when "
         "active jobs hold the budget)",
    ["active_job_limit", "budget_exceeded"], RETRY_AFTER,
)
# A body that is not JSON, or that cannot be read: a malformed `Transfer-Encoding: chunked`
# framing or a connection that ends before the body does (malformed_body).
MALFORMED_JSON = ["invalid_json", "malformed_body"]
UNREADABLE = ("a body that cannot be read (malformed chunked encoding, or the connection closing before the "
              "body's end)")
TOO_LARGE = _problem(413, "request body over the size limit", ["body_too_large"])
NOT_JSON = _problem(415, "a body sent with a Content-Type other than application/json (or +json); a body "
                         "with no Content-Type is read as JSON", ["unsupported_media_type"])


def _user_job_operation(summary: str, own: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """GET/DELETE/POST on one job: `own` responses plus the ones every such operation has."""
    responses = {**own, "400": BAD_JOB_ID, "401": UNAUTHORIZED, "404": NOT_FOUND, "503": UNAVAILABLE}
    return {"summary": summary, "security": USER, "parameters": [JOB_ID], "responses": dict(sorted(responses.items()))}


SCHEDULE_ID = {"name": "schedule_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
               "description": "anything that is not a UUID answers 400 invalid_schedule_id"}
SCHEDULE_NOT_FOUND = _problem(404, "no such schedule, or it belongs to another user (never says which)",
                              ["schedule_not_found"])


def _schedule_operation(summary: str, own: dict[str, dict[str, Any]]) -> dict[str, Any]:
    responses = {**own, "400": _problem(400, "the schedule id in the path is not a UUID", ["invalid_schedule_id"]),
                 "401": UNAUTHORIZED, "404": SCHEDULE_NOT_FOUND, "503": UNAVAILABLE}
    return {"summary": summary, "security": USER, "parameters": [SCHEDULE_ID],
            "responses": dict(sorted(responses.items()))}


def _schedule_paths() -> dict[str, Any]:
    """/api/schedules: the caller's recurring jobs (README: Schedules)."""
    return {
        "/api/schedules": {
            "post": {
                "summary": "Create a schedule (a recurring job)",
                "description": "The job type, input and spend limits are checked as for POST /api/jobs, plus the "
                               "cron expression and time zone. Each tick creates one job (at most once, whatever "
                               "the number of workers and sweeps); ticks missed while nothing ran fire once, not "
                               "as a burst. A tick the queue refuses (your active-job cap, your daily budget) "
                               "creates no job and is kept in last_error.",
                "security": USER,
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref(CreateScheduleRequest)}}},
                "responses": {
                    "201": _json(PublicSchedule, "created"),
                    "400": _problem(400, f"malformed JSON, {UNREADABLE} or an empty body",
                                    [*MALFORMED_JSON, "empty_body"]),
                    "401": UNAUTHORIZED,
                    "409": _problem(409, "you already have AI_JOBS_MAX_SCHEDULES_PER_USER schedules (default 20)",
                                    ["schedule_limit"]),
                    "413": TOO_LARGE,
                    "415": NOT_JSON,
                    "422": _problem(
                        422, "an invalid cron expression or time zone, one that never fires or fires more often "
                             "than AI_JOBS_SCHEDULE_MIN_INTERVAL_SECONDS (invalid_schedule, field in `errors`), "
                             "a body that is not valid, an unknown type, input failing the type's schema, or a "
                             "Claude spend limit (as for POST /api/jobs)",
                        ["invalid_schedule", "invalid_body", "invalid_json_value", "too_deep", "unknown_job_type",
                         "invalid_input", "invalid_argument", "model_not_allowed", "model_not_priced",
                         "max_tokens_too_large", "too_many_calls", "job_cost_too_high"],
                    ),
                    "500": TYPES_UNAVAILABLE,
                    "503": UNAVAILABLE,
                },
            },
            "get": {
                "summary": "List the caller's schedules, newest first",
                "description": "Keyset-paginated like GET /api/jobs.",
                "security": USER,
                "parameters": [
                    *page_parameters(),
                ],
                "responses": {
                    "200": _json(ScheduleList, "a page of schedules"),
                    "400": _problem(400, "a bad, unknown or repeated query parameter", ["invalid_query"]),
                    "401": UNAUTHORIZED,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/api/schedules/{schedule_id}": {
            "delete": _schedule_operation("Delete a schedule (jobs it created are kept)",
                                          {"204": {"description": "deleted; no body"}}),
        },
        "/api/schedules/{schedule_id}/pause": {
            "post": _schedule_operation("Pause a schedule: no tick fires until it is resumed",
                                        {"200": _json(PublicSchedule, "paused (already paused: unchanged)")}),
        },
        "/api/schedules/{schedule_id}/resume": {
            "post": _schedule_operation(
                "Resume a paused schedule from its next tick after now (missed ticks do not fire)",
                {"200": _json(PublicSchedule, "active (already active: unchanged)")}),
        },
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    paths: dict[str, Any] = {
        "/api/jobs": {
            "post": {
                "summary": "Create a job",
                "description": "Validates the input against the job type, enqueues it under the per-user cap "
                               "with the type's concurrency limits and hands it to a worker. Workers take users in "
                               "turn; a job over a concurrency limit stays pending with wait_reason set. A repeat with the same idempotency key returns the "
                               "earlier job with 200. The bearer token is checked before the body is read.",
                "security": USER,
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "description": "1 to 255 printable ASCII characters (space to ~) after "
                                               "trimming, else 400 invalid_idempotency_key (a header's bytes "
                                               "have no agreed encoding: send a key with other characters as "
                                               "the body's idempotency_key); must equal the body's "
                                               "idempotency_key when both are given",
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                           "pattern": "^[!-~]([ -~]*[!-~])?$"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(CreateJobRequest)}}},
                "responses": {
                    "200": _json(Job, "an earlier job with the same idempotency key (nothing new is created)", LOCATION),
                    "202": _json(Job, "created (pending) and handed to a worker", LOCATION),
                    "400": _problem(400, f"malformed JSON, {UNREADABLE}, an empty body, or an "
                                         "Idempotency-Key header that is blank, over 255 characters or not "
                                         "printable ASCII",
                                    [*MALFORMED_JSON, "empty_body", "invalid_idempotency_key"]),
                    "401": UNAUTHORIZED,
                    "413": TOO_LARGE,
                    "415": NOT_JSON,
                    "422": _problem(
                        422, "the body is not a valid request (field errors in `errors`, e.g. priority above 0, "
                             "run_at more than 1 minute ago or 1 year ahead, a malformed concurrency_key), the type "
                             "is unknown, the input fails the type's schema, the idempotency key was used for a "
                             "different job, or the database refused a value (invalid_argument, e.g. run_at out of "
                             "range by its clock); or a Claude spend limit: a model not on the allowlist "
                             "(model_not_allowed, with allowed_models), a model without a price, or without cache prices "
                             "for a job that writes the prompt cache (model_not_priced, with model and unknown_prices), "
                             "max_tokens over the job type's cap (max_tokens_too_large, with max_tokens_cap), more "
                             "Claude calls than allowed per job (too_many_calls, with calls and max_calls), or a cost "
                             "estimate over the per-job cap or the daily budget (job_cost_too_high, with "
                             "estimated_cost_usd and max_job_cost_usd or daily_budget_usd)",
                        ["invalid_body", "invalid_json_value", "too_deep", "unknown_job_type", "invalid_input",
                         "idempotency_conflict", "idempotency_key_mismatch", "invalid_argument",
                         "model_not_allowed", "model_not_priced", "max_tokens_too_large", "too_many_calls",
                         "job_cost_too_high"],
                    ),
                    "429": TOO_MANY,
                    "500": TYPES_UNAVAILABLE,
                    "503": UNAVAILABLE,
                },
            },
            "get": {
                "summary": "List the caller's jobs, newest first",
                "description": "Keyset-paginated. `next_cursor` is set whenever the page is full (`limit` jobs), "
                               "so the page after a full last page is empty; it is null on a shorter page.",
                "security": USER,
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": [s.value for s in JobStatus]}},
                    {"name": "type", "in": "query",
                     "schema": {"type": "string", "pattern": JOB_TYPE_PATTERN, "maxLength": 100}},
                    *page_parameters(),
                ],
                "responses": {
                    "200": _json(JobList, "a page of jobs"),
                    "400": _problem(400, "a bad, unknown or repeated query parameter (field errors in `errors`)",
                                    ["invalid_query"]),
                    "401": UNAUTHORIZED,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/api/jobs/{job_id}": {
            "get": _user_job_operation("Get a job", {"200": _json(Job, "the job")}),
            "delete": _user_job_operation(
                "Delete a finished job",
                {"204": {"description": "deleted; no body"},
                 "409": _problem(409, "the job is still pending, running or paused, or one of its child jobs "
                                      "(at any depth) is; cancel it first", ["invalid_state"])},
            ),
        },
        "/api/jobs/{job_id}/cancel": {
            "post": _user_job_operation(
                "Cancel a pending, running or paused job and its unfinished children (at any depth)",
                {"200": _json(Job, "pending: now cancelled (waiting on a Claude Message Batch: cancel_requested_at "
                                   "set, still pending until a worker has cancelled the batch); running: "
                                   "cancel_requested_at set, still running until its next step; already cancelled "
                                   "or already requested: the job, unchanged"),
                 "409": _problem(409, "the job is completed or failed", ["invalid_state"])},
            ),
        },
        "/api/jobs/{job_id}/retry": {
            "post": _user_job_operation(
                "Retry a failed or cancelled job (finished steps are kept) and its failed or cancelled children",
                {"202": _json(Job, "pending again with fresh attempts, and handed to a worker"),
                 "409": _problem(409, "the job is not failed or cancelled", ["invalid_state"]), "429": TOO_MANY},
            ),
        },
        **workflow_paths(_user_job_operation, _json, _problem),
        **_schedule_paths(),
        "/api/job-types": {
            "get": {"summary": "Registered job types with their input and output schemas",
                    "responses": {"200": _json(JobTypeList, "job types", {
                        "Cache-Control": _header("public, max-age=60")}),
                                  "500": TYPES_UNAVAILABLE}},
        },
        "/api/health": {
            "get": {"summary": "Liveness and database reachability",
                    "responses": {"200": _json(Health, "healthy"),
                                  "503": _json(Health, "degraded (status 'degraded'; see the body)")}},
        },
        "/api/openapi.json": {
            "get": {"summary": "This document",
                    "responses": {"200": {"description": "the OpenAPI 3.1 document",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}}},
        },
        "/api/internal/work": {
            "post": {
                "summary": "Worker invocation (WORKER_SECRET)",
                "description": "Runs the given job first (if due), then drains due jobs while the budget lasts. "
                               "An empty body is allowed. The secret is checked before the body is read.",
                "security": [{"workerSecret": []}],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref(WorkRequest)}}},
                "responses": {
                    "200": _json(WorkResult, "what ran"),
                    "400": _problem(400, f"malformed JSON or {UNREADABLE}", MALFORMED_JSON),
                    "401": _problem(401, "wrong or missing WORKER_SECRET, or none configured", ["unauthorized"],
                                    WWW_AUTHENTICATE),
                    "413": _problem(413, "body over 4096 bytes", ["body_too_large"]),
                    "415": NOT_JSON,
                    "422": _problem(422, "the body is not a valid work request",
                                    ["invalid_body", "invalid_json_value", "too_deep"]),
                    "500": TYPES_UNAVAILABLE,
                    "503": STORE_UNAVAILABLE,
                },
            },
        },
        "/api/internal/sweep": {
            "get": {
                "summary": "Cron sweep (CRON_SECRET)",
                "security": [{"cronSecret": []}],
                "responses": {
                    "200": _json(SweepReport, "what the sweep did"),
                    "401": _problem(401, "wrong or missing CRON_SECRET, or none configured", ["unauthorized"],
                                    WWW_AUTHENTICATE),
                    "500": TYPES_UNAVAILABLE,
                    "503": STORE_UNAVAILABLE,
                },
            },
        },
    }
    for operations in paths.values():  # statuses every operation (or every user operation) shares
        for operation in operations.values():
            responses = operation["responses"]
            responses["431"] = HEADERS_TOO_LARGE
            if operation.get("security") == USER:
                responses["403"] = ANONYMOUS
            operation["responses"] = dict(sorted(responses.items()))
    return {
        "openapi": "3.1.0",
        "info": {"title": "ai-jobs", "version": __version__,
                 "description": "Durable background jobs for Claude calls on Supabase + Vercel. Every error is "
                                "application/problem+json (RFC 9457) with type urn:ai-jobs:problem:<code>. "
                                "An unknown path answers 404 not_found (a path with doubled slashes, such as "
                                "/api//jobs, too: nothing is redirected) and a known path with another method "
                                "405 method_not_allowed (with an Allow header), both problem+json. The local "
                                "server (`ai-jobs dev`/`serve`) answers a request line over 64 KiB with 414 "
                                "uri_too_long and a header line over 64 KiB (or over 100 headers) with 431 "
                                "header_too_large, problem+json too."},
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "the user's Supabase access token"},
                "workerSecret": {"type": "http", "scheme": "bearer", "description": "WORKER_SECRET"},
                "cronSecret": {"type": "http", "scheme": "bearer", "description": "CRON_SECRET"},
            },
        },
    }
