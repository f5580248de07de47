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
from ai_jobs.models import JOB_TYPE_PATTERN, NewJob

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

I = TypeVar("I", bound=BaseModel)
O = TypeVar("O", bound=BaseModel)

Handler = Callable[[I, "JobContext"], O]

DEFAULT_JOB_MODULES = ("ai_jobs.jobs",)


class UnknownJobTypeError(AiJobsError):
    code = "unknown_job_type"


class InputValidationError(AiJobsError):
    """Input does not match the job type's model; `errors` are pydantic's, field by field."""

    code = "invalid_input"

    def __init__(self, job_type: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"invalid input for job type {job_type!r}")
        self.errors = errors


@dataclass(frozen=True)
class JobDefinition(Generic[I, O]):
    type: str
    input_model: type[I]
    output_model: type[O]
    handler: Handler[I, O]
    max_attempts: int = 3
    description: str = ""

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


class JobRegistry:
    def __init__(self) -> None:
        self._definitions: dict[str, JobDefinition[Any, Any]] = {}

    def job(
        self,
        job_type: str,
        *,
        input: type[I],  # noqa: A002 - the decorator reads best as @job(..., input=..., output=...)
        output: type[O],
        max_attempts: int = 3,
        description: str | None = None,
    ) -> Callable[[Handler[I, O]], Handler[I, O]]:
        """Register `handler(input, ctx) -> output` under `job_type`."""
        import re

        if not re.fullmatch(JOB_TYPE_PATTERN, job_type) or len(job_type) > 100:
            raise ValueError(f"job type {job_type!r} must be dotted lower-case words, e.g. 'ai.generate'")
        if not 1 <= max_attempts <= 100:
            raise ValueError("max_attempts must be between 1 and 100")

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
            )
            return handler

        return register

    def get(self, job_type: str) -> JobDefinition[Any, Any]:
        try:
            return self._definitions[job_type]
        except KeyError:
            known = ", ".join(sorted(self._definitions)) or "none"
            raise UnknownJobTypeError(f"unknown job type {job_type!r} (registered: {known})") from None

    def types(self) -> list[str]:
        return sorted(self._definitions)

    def definitions(self) -> list[JobDefinition[Any, Any]]:
        return [self._definitions[t] for t in self.types()]

    def new_job(self, user_id: UUID, job_type: str, raw_input: Mapping[str, Any], **options: Any) -> NewJob:
        """Validate input for `job_type` and build the enqueue request (normalized JSON input)."""
        definition = self.get(job_type)
        parsed = definition.parse_input(raw_input)
        options.setdefault("max_attempts", definition.max_attempts)
        return NewJob(user_id=user_id, job_type=job_type, input=parsed.model_dump(mode="json"), **options)


registry = JobRegistry()
job = registry.job


def load_job_modules(modules: Iterable[str] | None = None) -> JobRegistry:
    """Import the modules that register job types: the built-in ones plus
    AI_JOBS_JOB_MODULES (comma-separated, e.g. "myapp.jobs")."""
    names = list(DEFAULT_JOB_MODULES) if modules is None else list(modules)
    extra = os.environ.get("AI_JOBS_JOB_MODULES", "")
    names += [name.strip() for name in extra.split(",") if name.strip()]
    for name in names:
        importlib.import_module(name)
    return registry
