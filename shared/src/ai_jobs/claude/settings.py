"""Claude client settings from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "claude-sonnet-5-5"


class ClaudeSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    api_key: str | None = None
    base_url: str | None = None
    model: str = DEFAULT_MODEL
    # Read timeout between streamed chunks, and for the whole of a non-streamed call.
    timeout_seconds: float = Field(default=300.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # The queue retries with backoff and honours retry-after; SDK retries would
    # sleep inside the invocation (retry-after has no cap there).
    max_retries: int = Field(default=0, ge=0, le=2)
    # Conservative output speed used to fit a call inside the invocation's budget:
    # max_tokens is lowered, or the job continues in a new invocation, when
    # max_tokens / tokens_per_second (plus margins) does not fit the time left.
    tokens_per_second: float = Field(default=30.0, gt=0, le=10_000)

    # The variable behind each field (start-up checks name it in their message).
    ENV_VARIABLES: ClassVar[dict[str, str]] = {
        "model": "AI_JOBS_MODEL",
        "timeout_seconds": "AI_JOBS_CLAUDE_TIMEOUT",
        "max_retries": "AI_JOBS_CLAUDE_MAX_RETRIES",
        "tokens_per_second": "AI_JOBS_CLAUDE_TOKENS_PER_SECOND",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClaudeSettings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "api_key": env.get("ANTHROPIC_API_KEY") or None,
            "base_url": env.get("ANTHROPIC_BASE_URL") or None,
        }
        for field, name in cls.ENV_VARIABLES.items():
            if env.get(name):
                values[field] = env[name]
        return cls.model_validate(values)
