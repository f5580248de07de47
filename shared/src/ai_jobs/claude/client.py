"""One Anthropic client per settings, created (and `anthropic` imported) on first use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ai_jobs.claude.settings import ClaudeSettings
from ai_jobs.failures import FatalJobError

if TYPE_CHECKING:
    import anthropic

_clients: dict[ClaudeSettings, anthropic.Anthropic] = {}
_lock = threading.Lock()


def get_client(settings: ClaudeSettings) -> anthropic.Anthropic:
    if not settings.api_key:
        raise FatalJobError(
            "missing_api_key",
            "ANTHROPIC_API_KEY is not set for the worker. Add it to the worker's environment "
            "(on Vercel: Project Settings > Environment Variables, then redeploy) and retry the job.",
        )
    with _lock:
        client = _clients.get(settings)
        if client is None:
            import anthropic

            client = anthropic.Anthropic(
                api_key=settings.api_key,
                base_url=settings.base_url,
                max_retries=settings.max_retries,
                timeout=anthropic.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds),
            )
            _clients[settings] = client
        return client


def reset_clients() -> None:
    """Forget cached clients (tests, key rotation)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
