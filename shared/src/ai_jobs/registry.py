"""Job types: a name, a pydantic input and output model, and a handler.

Registering a type imports only pydantic, so the HTTP request path can
validate input for every type without loading `anthropic`; handlers import
what they need when they run.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError

from ai_jobs.errors import AiJobsError
from ai_jobs.models import JOB_TYPE_PATTERN, MAX_CONCURRENCY_LIMIT, NewJob

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

I = TypeVar("I", bound=BaseModel)
O = TypeVar("O", bound=BaseModel)

Handler = Callable[[I, "JobContext"], O]

DEFAULT_JOB_MODULES = ("ai_jobs.jobs",)
# Demo and benchmark types (example.countdown, bench.noop) sleep or do nothing on our
# budget: they are served only where this is on (`ai-jobs dev` sets it).
DEMO_JOB_TYPES_ENV = "AI_JOBS_DEMO_JOB_TYPES"


class UnknownJobTypeError(AiJobsError):
    code = "unknown_job_type"


class InputValidationError(AiJobsError):
    """Input does not match the job type's model; `errors` are pydantic's, field by field."""

    code = "invalid_input"

    def __init__(self, job_type: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"invalid input for job type {job_type!r}")
        self.errors = errors


@dataclass(frozen=True)
class Concurrency:
    """How many jobs may run at once, checked when a job of this type is claimed:
    per user, per organization, per concurrency key. None: the setting's default
    (AI_JOBS_USER_CONCURRENCY, AI_JOBS_ORG_CONCURRENCY, AI_JOBS_KEY_CONCURRENCY);
    0: no limit for this type."""

    user: int | None = None
    org: int | None = None
    key: int | None = None

    def __post_init__(self) -> None:
        for name in ("user", "org", "key"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 <= value <= MAX_CONCURRENCY_LIMIT):
                raise ValueError(f"concurrency {name} must be 0 (no limit) to {MAX_CONCURRENCY_LIMIT}, or None")

    def resolve(self, user: int, org: int, key: int) -> tuple[int | None, int | None, int | None]:
        """The limits to store on a new row, given the settings' defaults (None: no limit)."""
        own = (self.user, self.org, self.key)
        return tuple((default if mine is None else mine) or None for mine, default in zip(own, (user, org, key)))  # type: ignore[return-value]


@dataclass(frozen=True)
class JobDefinition(Generic[I, O]):
    type: str
    input_model: type[I]
    output_model: type[O]
    handler: Handler[I, O]
    max_attempts: int = 3
    description: str = ""
    demo: bool = False  # served only with AI_JOBS_DEMO_JOB_TYPES=1
    priority: int = 0  # higher is claimed first; end users can only lower it
    concurrency: Concurrency = Concurrency()
    # Called with the job's context when a cancel stops the job (before it is marked
    # cancelled), to release work held outside the queue, e.g. a Claude Message Batch.
    # It must not call ctx.step or ctx.progress (they raise JobCancelled); it may raise
    # Deferred to be called again later.
    on_cancel: Callable[[JobContext], None] | None = None

    def parse_input(self, raw: Mapping[str, Any]) -> I:
        try:
            return self.input_model.model_validate(raw)
        except ValidationError as exc:
            raise InputValidationError(
                self.type, exc.errors(include_url=False, include_context=False, include_input=False)
            ) from exc

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        return self.output_model.model_json_schema()


@dataclass(frozen=True)
class DeploymentSchedule:
    """A schedule declared in code (`registry.schedule`): written to the database at
    worker and sweep start, keyed by name; its jobs run as `run_as` (default
    AI_JOBS_SCHEDULE_USER_ID). See ai_jobs.schedules."""

    name: str
    cron: str
    job_type: str
    input: Mapping[str, Any]
    timezone: str = "UTC"
    run_as: UUID | None = None

    def __hash__(self) -> int:
        return hash((self.name, self.cron, self.job_type, repr(sorted(self.input.items())), self.timezone, self.run_as))


class JobRegistry:
    def __init__(self) -> None:
        self._definitions: dict[str, JobDefinition[Any, Any]] = {}
        self._schedules: dict[str, DeploymentSchedule] = {}

    def schedule(
        self,
        name: str,
        *,
        cron: str,
        type: str,  # noqa: A002 - reads as the job's type, like the API's body
        input: Mapping[str, Any] | None = None,  # noqa: A002
        timezone: str = "UTC",
        run_as: UUID | str | None = None,
    ) -> DeploymentSchedule:
        """Declare a deployment schedule, e.g. `registry.schedule("nightly-digest",
        cron="0 6 * * *", type="ai.generate", input={...}, timezone="Europe/Berlin")`.
        Declaring the same name again replaces it (the database row is updated)."""
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise ValueError("a schedule name must be 1 to 200 characters")
        declared = DeploymentSchedule(name=name, cron=cron, job_type=type, input=dict(input or {}),
                                      timezone=timezone, run_as=UUID(str(run_as)) if run_as is not None else None)
        self._schedules[name] = declared
        return declared

    def schedules(self) -> list[DeploymentSchedule]:
        return [self._schedules[name] for name in sorted(self._schedules)]

    def job(
        self,
        job_type: str,
        *,
        input: type[I],  # noqa: A002 - the decorator reads best as @job(..., input=..., output=...)
        output: type[O],
        max_attempts: int = 3,
        description: str | None = None,
        demo: bool = False,
        priority: int = 0,
        concurrency: Concurrency | Mapping[str, int | None] | None = None,
        on_cancel: Callable[[JobContext], None] | None = None,
    ) -> Callable[[Handler[I, O]], Handler[I, O]]:
        """Register `handler(input, ctx) -> output` under `job_type`; `demo` types are
        left out by `load_job_modules` unless AI_JOBS_DEMO_JOB_TYPES is on."""
        import re

        if not re.fullmatch(JOB_TYPE_PATTERN, job_type) or len(job_type) > 100:
            raise ValueError(f"job type {job_type!r} must be dotted lower-case words, e.g. 'ai.generate'")
        if not 1 <= max_attempts <= 100:
            raise ValueError("max_attempts must be between 1 and 100")
        if not -1000 <= priority <= 1000:
            raise ValueError("priority must be between -1000 and 1000")
        limits = concurrency if isinstance(concurrency, Concurrency) else Concurrency(**dict(concurrency or {}))

        def register(handler: Handler[I, O]) -> Handler[I, O]:
            if job_type in self._definitions and self._definitions[job_type].handler is not handler:
                raise ValueError(f"job type {job_type!r} is already registered")
            doc = description if description is not None else (handler.__doc__ or "").strip()
            self._definitions[job_type] = JobDefinition(
                type=job_type,
                input_model=input,
                output_model=output,
                handler=handler,
                max_attempts=max_attempts,
                description=doc,
                demo=demo,
                priority=priority,
                concurrency=limits,
                on_cancel=on_cancel,
            )
            return handler

        return register

    def get(self, job_type: str) -> JobDefinition[Any, Any]:
        try:
            return self._definitions[job_type]
        except KeyError:
            known = ", ".join(sorted(self._definitions)) or "none"
            raise UnknownJobTypeError(f"unknown job type {job_type!r} (registered: {known})") from None

    def without_demo_types(self) -> JobRegistry:
        """A copy without the demo types: what a production deployment serves."""
        copy = JobRegistry()
        copy._definitions = {t: d for t, d in self._definitions.items() if not d.demo}
        copy._schedules = {n: d for n, d in self._schedules.items() if d.job_type in copy._definitions}
        return copy

    def types(self) -> list[str]:
        return sorted(self._definitions)

    def definitions(self) -> list[JobDefinition[Any, Any]]:
        return [self._definitions[t] for t in self.types()]

    def new_job(
        self, user_id: UUID, job_type: str, raw_input: Mapping[str, Any], *, parsed: BaseModel | None = None,
        **options: Any,
    ) -> NewJob:
        """Validate input for `job_type` and build the enqueue request (normalized JSON input).
        `parsed`: the input already validated by this type's model (not parsed again)."""
        definition = self.get(job_type)
        if parsed is None:
            parsed = definition.parse_input(raw_input)
        options.setdefault("max_attempts", definition.max_attempts)
        if options.get("priority") is None:
            options["priority"] = definition.priority
        return NewJob(user_id=user_id, job_type=job_type, input=parsed.model_dump(mode="json"), **options)


registry = JobRegistry()
job = registry.job


def demo_job_types_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(DEMO_JOB_TYPES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_job_modules(modules: Iterable[str] | None = None, *, demo: bool | None = None) -> JobRegistry:
    """Import the modules that register job types: the built-in ones plus
    AI_JOBS_JOB_MODULES (comma-separated, e.g. "myapp.jobs"). Demo types are
    included only with `demo` (default: AI_JOBS_DEMO_JOB_TYPES), so a production
    deployment refuses `example.countdown` as an unknown type and never runs it."""
    names = list(DEFAULT_JOB_MODULES) if modules is None else list(modules)
    extra = os.environ.get("AI_JOBS_JOB_MODULES", "")
    names += [name.strip() for name in extra.split(",") if name.strip()]
    for name in names:
        importlib.import_module(name)
    if demo is None:
        demo = demo_job_types_enabled()
    return registry if demo else registry.without_demo_types()
