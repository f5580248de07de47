"""Everything a request handler needs, built once per process from Settings.

The store, token verifier, dispatcher and job registry are created on first use,
so importing the app (a Vercel cold start) opens no connection; their modules
(psycopg, PyJWT, the dispatcher, the job types' modules) and the runner's are
imported then too, so a request loads only what it uses: a health check or a
listing never imports a job module."""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from ai_jobs.errors import JobTypesUnavailableError
from ai_jobs.http.auth import Principal, TokenVerifier, bearer_token, unauthorized
from ai_jobs.registry import JobRegistry, load_job_modules
from ai_jobs.settings import Settings

if TYPE_CHECKING:
    from ai_jobs.dispatch import Dispatcher
    from ai_jobs.runner import Runner
    from ai_jobs.store.base import JobStore


log = logging.getLogger(__name__)


class Services:
    """Per-process services; `settings` defaults to the environment, `registry` to the
    built-in job types plus AI_JOBS_JOB_MODULES (loaded when a request first needs it),
    `store` to the one the settings call for (opened on first use)."""

    def __init__(
        self, settings: Settings | None = None, registry: JobRegistry | None = None, store: JobStore | None = None
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._registry: JobRegistry | None = registry
        self._store: JobStore | None = store
        self._lock = threading.Lock()

    @property
    def registry(self) -> JobRegistry:
        """The job types (built-in and AI_JOBS_JOB_MODULES), imported on first use."""
        if self._registry is None:
            with self._lock:
                if self._registry is None:
                    try:
                        self._registry = load_job_modules()
                    except Exception as exc:  # an import error in a job module: tried again next request
                        log.exception("could not load the job types")
                        raise JobTypesUnavailableError(
                            f"the job types could not be loaded ({type(exc).__name__}); check AI_JOBS_JOB_MODULES "
                            "and the function's log"
                        ) from exc
        return self._registry

    @property
    def store(self) -> JobStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from ai_jobs.store import open_store

                    self._store = open_store(self.settings)
        return self._store

    @cached_property
    def verifier(self) -> TokenVerifier | None:
        s = self.settings
        if not s.jwt_secret and not s.resolved_jwks_url():
            return None
        return TokenVerifier(
            jwt_secret=s.jwt_secret,
            jwks_url=s.resolved_jwks_url(),
            audience=s.jwt_audience,
            issuer=s.jwt_issuer(),
            jwks_timeout_seconds=s.db_timeout_seconds,
            jwks_cache_seconds=s.jwks_cache_seconds,
            allow_anonymous=s.allow_anonymous,
        )

    @cached_property
    def dispatcher(self) -> Dispatcher:
        from ai_jobs.dispatch import Dispatcher

        s = self.settings
        return Dispatcher(
            s.resolved_worker_url(),
            s.worker_secret,
            bypass_secret=s.protection_bypass_secret,
            wait_seconds=s.handoff_wait_seconds,
            connect_timeout=max(s.handoff_wait_seconds, 0.5),
        )

    def runner(self) -> Runner:
        """A runner for one worker invocation; continuation asks for another invocation."""
        from ai_jobs.runner import Runner

        return Runner(
            self.store,
            self.registry,
            lease_seconds=self.settings.lease_seconds,
            request_continuation=lambda job_id: self.dispatcher.dispatch(job_id),
        )

    def authenticate(self, authorization: str | None) -> Principal:
        if self.verifier is None:
            raise unauthorized("token verification is not configured (set SUPABASE_JWT_SECRET or SUPABASE_URL)")
        return self.verifier.verify(bearer_token(authorization))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if "dispatcher" in self.__dict__:
            self.dispatcher.close()
