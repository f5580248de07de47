"""What each endpoint does, in terms of the queue (the handlers in
ai_jobs.http.handlers only parse, authorize and call these)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from ai_jobs import __version__
from ai_jobs.http.auth import Principal
from ai_jobs.http.problems import Problem
from ai_jobs.http.schemas import (
    CreateJobRequest,
    Health,
    Job as PublicJob,
    JobList,
    JobTypeInfo,
    JobTypeList,
    ListJobsQuery,
    WorkOutcome,
    WorkRequest,
    WorkResult,
)
from ai_jobs.http.services import Services
from ai_jobs.models import EnqueueResult, Job
from ai_jobs.service import submit_job

if TYPE_CHECKING:
    from ai_jobs.sweep import SweepReport


def create_job(svc: Services, who: Principal, body: CreateJobRequest, idempotency_header: str | None) -> EnqueueResult:
    """Validate, enqueue under the per-user cap, then hand the job to a worker."""
    key = body.idempotency_key
    if idempotency_header is not None:
        header = idempotency_header.strip()
        if not 1 <= len(header) <= 255:
            raise Problem(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters")
        if not (header.isascii() and header.isprintable()):
            # A header's bytes have no agreed encoding (browsers send Latin-1, curl UTF-8), so
            # such a key could never reliably match the same key sent in a body.
            raise Problem(400, "invalid_idempotency_key",
                          "Idempotency-Key must be printable ASCII (space to ~); send a key with other "
                          "characters as the body's idempotency_key")
        if key is not None and key != header:
            raise Problem(422, "idempotency_key_mismatch", "Idempotency-Key header and idempotency_key differ")
        key = header
    # A request may only lower its job type's priority (the body refuses > 0).
    priority = None
    if body.priority:
        priority = max(-1000, svc.registry.get(body.type).priority + body.priority)
    result = submit_job(
        svc.store,
        who.user_id,
        body.type,
        body.input,
        settings=svc.settings,
        registry=svc.registry,
        priority=priority,
        run_at=body.run_at,
        idempotency_key=key,
        metadata=body.metadata,
        org_id=org_from_claims(who.claims, svc.settings.org_claim),
        concurrency_key=body.concurrency_key,
    )
    if result.created and _due_within_a_worker_budget(svc, result.job):
        svc.dispatcher.dispatch(result.job.id)
    return result


def org_from_claims(claims: dict[str, Any], path: str) -> str | None:
    """The caller's organization at the dotted claim path (e.g. app_metadata.org_id,
    which only the server side can write). Absent, empty or not a string or
    integer of at most 200 characters: no organization, so no organization limit."""
    if not path:
        return None
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    if not 1 <= len(text) <= 200 or not text.isprintable():
        return None
    return text


def _due_within_a_worker_budget(svc: Services, job: Job) -> bool:
    """A job due now, or soon enough that the invocation we start can wait for it
    (the runner waits for work due within its budget); later ones are woken by
    the database's cron or the sweep."""
    from ai_jobs.runner import RUNNER_MIN_REMAINING_SECONDS  # the runner itself is not needed to create

    delay = (job.run_at - job.created_at).total_seconds()
    return delay <= svc.settings.worker_budget_seconds - RUNNER_MIN_REMAINING_SECONDS


def get_job(svc: Services, who: Principal, job_id: UUID) -> PublicJob:
    return PublicJob.of(svc.store.get(job_id, user_id=who.user_id))


def list_jobs(svc: Services, who: Principal, query: ListJobsQuery) -> JobList:
    page = svc.store.list(
        user_id=who.user_id, status=query.status, job_type=query.type, limit=query.limit, cursor=query.cursor
    )
    return JobList(jobs=[PublicJob.of(job) for job in page.jobs], next_cursor=page.next_cursor)


def cancel_job(svc: Services, who: Principal, job_id: UUID) -> PublicJob:
    return PublicJob.of(svc.store.request_cancel_tree(job_id, user_id=who.user_id))  # children too


def retry_job(svc: Services, who: Principal, job_id: UUID) -> PublicJob:
    job = svc.store.retry_tree(job_id, user_id=who.user_id, max_active=svc.settings.max_active_per_user,
                               daily_budget_usd=svc.settings.spend.daily_budget())  # failed children too
    svc.dispatcher.dispatch(job.id)
    return PublicJob.of(job)


def delete_job(svc: Services, who: Principal, job_id: UUID) -> Job:
    return svc.store.delete_tree(job_id, user_id=who.user_id)  # refused while children are active


def job_types(svc: Services) -> JobTypeList:
    return JobTypeList(
        job_types=[
            JobTypeInfo(
                type=d.type,
                description=d.description,
                max_attempts=d.max_attempts,
                input_schema=d.input_schema(),
                output_schema=d.output_schema(),
            )
            for d in svc.registry.definitions()
        ]
    )


# Known causes, matched in lower-cased error text; anything else is named by its type
# only, so no host, user or connection string can reach the response.
_UNAVAILABLE_REASONS = (
    (("ai_jobs_wakeup_status_v1", "ai_jobs_wakeup_status_v2"), "the ai-jobs migrations are not applied (run ai-jobs migrate or supabase db push)"),
    (("pgserver",), "no database configured (set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY)"),
    (("refused",), "connection refused"),
    (("timed out", "timeout", "couldn't get a connection"), "timed out"),
    (("password authentication", "authentication failed", "invalid api key", "jwt", "jws", "pgrst30"),
     "authentication failed"),
    (("permission denied", "42501"), "permission denied (use the service role key or a database owner)"),
    (("could not translate host name", "name or service not known", "nodename nor servname", "name resolution",
      "getaddrinfo"), "host not found"),
    (("ssl",), "TLS/SSL error"),
    (("too many connections", "too many clients", "remaining connection slots"), "too many connections"),
    (("does not exist",), "database or role does not exist"),
)


def _unavailable_reason(exc: Exception) -> str:
    text = str(exc).lower()
    for needles, reason in _UNAVAILABLE_REASONS:
        if any(needle in text for needle in needles):
            return reason
    return type(exc).__name__


def health(svc: Services) -> tuple[Health, int]:
    """One database round trip: the wake-up status proves the database answers and
    says whether delayed jobs will start on time. 503 when either is not ok."""
    kind = svc.settings.resolved_store()
    wakeups = None
    detail = None
    try:
        wakeups = svc.store.wakeup_status()
        database = "ok"
    except Exception as exc:  # noqa: BLE001 - health reports, it does not raise
        database = "unavailable"
        detail = f"database unavailable: {_unavailable_reason(exc)}"
    if wakeups is not None and wakeups.problem:
        detail = f"wake-ups: {wakeups.problem}"
    ok = detail is None
    body = Health(status="ok" if ok else "degraded", version=__version__, store=kind, database=database,
                  wakeups=wakeups, detail=detail)
    return body, 200 if ok else 503


def work(svc: Services, body: WorkRequest) -> WorkResult:
    """One worker invocation: the hand-off's job first, then drain while budget lasts."""
    runner = svc.runner()
    outcomes = runner.run_available(budget_seconds=svc.settings.worker_budget_seconds, job_id=body.job_id)
    return WorkResult(
        worker=runner.worker_id,
        outcomes=[WorkOutcome(job_id=o.job_id, job_type=o.job_type, outcome=o.kind, error_code=o.error_code) for o in outcomes],
    )


def run_sweep(svc: Services) -> SweepReport:
    from ai_jobs.sweep import sweep

    return sweep(
        svc.store,
        svc.runner(),
        svc.dispatcher,
        stale_pending_seconds=svc.settings.stale_pending_seconds,
        budget_seconds=svc.settings.worker_budget_seconds,
        alerts=svc.settings.alerts,
        settings=svc.settings,
    )
