"""JobStore over Supabase's REST API (PostgREST RPC via supabase-py).

Used on Vercel when only SUPABASE_URL and a service key are configured. The
`supabase` package is imported here, never on import of `ai_jobs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ai_jobs.errors import StoreUnavailableError, error_from_sqlstate
from ai_jobs.store.base import Json, JobStore, SqlFunction

if TYPE_CHECKING:
    from supabase import Client


def _to_wire(value: Any) -> Any:
    """JSON for PostgREST: it casts each named argument from its JSON form."""
    if isinstance(value, Json):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds()} seconds"
    return value


class SupabaseStore(JobStore):
    """Calls the same SQL functions as PostgresStore, over HTTPS with the service key."""

    def __init__(self, url: str, service_key: str, *, client: Client | None = None, timeout: float = 2.5) -> None:
        """`timeout` bounds each REST call (connect, write, read): the queue's
        functions answer in milliseconds, so a slow answer means Supabase is
        unreachable and the caller gets a 503 quickly."""
        if client is None:
            import httpx
            from supabase import ClientOptions, create_client

            client = create_client(
                url,
                service_key,
                options=ClientOptions(
                    auto_refresh_token=False,
                    persist_session=False,
                    # The queue retries; a blindly repeated claim would lease a second job.
                    postgrest_client_retry=False,
                    httpx_client=httpx.Client(timeout=httpx.Timeout(timeout)),
                ),
            )
        self._client = client

    def call(self, function: SqlFunction, params: Mapping[str, Any]) -> Any:
        import httpx
        from postgrest.exceptions import APIError

        payload = {k: _to_wire(v) for k, v in params.items() if v is not None}
        try:
            response = self._client.rpc(function.name, payload).execute()
        except APIError as exc:
            raise error_from_sqlstate(exc.code, exc.message or str(exc), exc.hint, exc.details) from exc
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(f"Supabase unreachable: {exc}") from exc
        return response.data
