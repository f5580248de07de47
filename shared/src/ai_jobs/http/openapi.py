"""OpenAPI 3.1 document generated from the pydantic models the API uses."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from ai_jobs import __version__
from ai_jobs.http.schemas import (
    CreateJobRequest,
    Health,
    JobList,
    JobTypeList,
    ProblemBody,
    WorkRequest,
    WorkResult,
)
from ai_jobs.models import Job
from ai_jobs.sweep import SweepReport

REF = "#/components/schemas/{model}"
MODELS = [CreateJobRequest, Job, JobList, JobTypeList, Health, ProblemBody, WorkRequest, WorkResult, SweepReport]


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref(ProblemBody)}}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
USER = [{"bearerAuth": []}]
COMMON = {"401": _problem("missing or invalid access token"), "503": _problem("job store unavailable")}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    job_responses = {"200": _json(Job, "the job"), "404": _problem("no such job for this user"), **COMMON}
    paths: dict[str, Any] = {
        "/api/jobs": {
            "post": {
                "summary": "Create a job",
                "security": USER,
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(CreateJobRequest)}}},
                "responses": {
                    "202": _json(Job, "created and handed to a worker"),
                    "200": _json(Job, "an earlier job with the same idempotency key"),
                    "400": _problem("malformed body"),
                    "413": _problem("body too large"),
                    "415": _problem("not JSON"),
                    "422": _problem("unknown type, invalid input (field errors) or reused idempotency key"),
                    "429": _problem("too many active jobs; see Retry-After"),
                    **COMMON,
                },
            },
            "get": {
                "summary": "List the caller's jobs, newest first",
                "security": USER,
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string",
                     "enum": ["pending", "running", "completed", "failed", "cancelled"]}},
                    {"name": "type", "in": "query", "schema": {"type": "string", "maxLength": 100}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 500}},
                ],
                "responses": {"200": _json(JobList, "a page of jobs"), "400": _problem("bad query"), **COMMON},
            },
        },
        "/api/jobs/{job_id}": {
            "get": {"summary": "Get a job", "security": USER, "parameters": [JOB_ID],
                    "responses": {**job_responses, "400": _problem("job id is not a UUID")}},
            "delete": {"summary": "Delete a finished job", "security": USER, "parameters": [JOB_ID],
                       "responses": {"204": {"description": "deleted"}, "404": _problem("no such job"),
                                     "409": _problem("job is still pending or running"),
                                     "400": _problem("job id is not a UUID"), **COMMON}},
        },
        "/api/jobs/{job_id}/cancel": {
            "post": {"summary": "Cancel a pending or running job", "security": USER, "parameters": [JOB_ID],
                     "responses": {**job_responses, "409": _problem("already finished"),
                                   "400": _problem("job id is not a UUID")}},
        },
        "/api/jobs/{job_id}/retry": {
            "post": {"summary": "Retry a failed or cancelled job (finished steps are kept)", "security": USER,
                     "parameters": [JOB_ID],
                     "responses": {**job_responses, "409": _problem("not failed or cancelled"),
                                   "429": _problem("too many active jobs"), "400": _problem("job id is not a UUID")}},
        },
        "/api/job-types": {"get": {"summary": "Registered job types with their input schemas",
                                   "responses": {"200": _json(JobTypeList, "job types")}}},
        "/api/health": {"get": {"summary": "Liveness and database reachability",
                                "responses": {"200": _json(Health, "healthy"), "503": _json(Health, "degraded")}}},
        "/api/internal/work": {
            "post": {"summary": "Worker invocation (WORKER_SECRET)", "security": [{"workerSecret": []}],
                     "requestBody": {"required": False, "content": {"application/json": {"schema": _ref(WorkRequest)}}},
                     "responses": {"200": _json(WorkResult, "what ran"), "401": _problem("wrong secret"),
                                   "400": _problem("malformed body"), "422": _problem("invalid body")}},
        },
        "/api/internal/sweep": {
            "get": {"summary": "Cron sweep (CRON_SECRET)", "security": [{"cronSecret": []}],
                    "responses": {"200": _json(SweepReport, "what the sweep did"), "401": _problem("wrong secret")}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ai-jobs", "version": __version__,
                 "description": "Durable background jobs for Claude calls on Supabase + Vercel."},
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
