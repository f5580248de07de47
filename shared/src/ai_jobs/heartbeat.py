"""One background thread per runner that keeps the leases of the jobs it holds.

A thread per job would cost a thread start for every job (it shows up in
throughput); one loop that renews whatever is registered costs nothing when
jobs are short and still keeps hour-long Claude calls leased."""

from __future__ import annotations

import logging
import threading
from uuid import UUID

from ai_jobs.context import JobContext
from ai_jobs.errors import AiJobsError, LeaseLostError
from ai_jobs.store.base import JobStore

log = logging.getLogger(__name__)


class Heartbeater:
    def __init__(self, store: JobStore, worker: str, *, lease_seconds: int, interval: float | None = None) -> None:
        self.store = store
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.interval = interval if interval is not None else max(lease_seconds / 3, 0.2)
        self._held: dict[UUID, JobContext] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, ctx: JobContext) -> None:
        with self._lock:
            self._held[ctx.job.id] = ctx
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{self.worker}", daemon=True)
                self._thread.start()

    def is_tracking(self, job_id: UUID) -> bool:
        with self._lock:
            return job_id in self._held

    def untrack(self, job_id: UUID) -> None:
        with self._lock:
            self._held.pop(job_id, None)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            with self._lock:
                held = list(self._held.values())
                if not held:
                    self._thread = None
                    return
            for ctx in held:
                self._beat(ctx)

    def _beat(self, ctx: JobContext) -> None:
        if not self.is_tracking(ctx.job.id):
            return  # finished since the snapshot
        try:
            ctx.observe(self.store.heartbeat(ctx.job.id, self.worker, lease_seconds=self.lease_seconds))
        except LeaseLostError:
            log.warning("job %s: lease lost, stopping at the next step", ctx.job.id)
            ctx.mark_lease_lost()
            self.untrack(ctx.job.id)
        except AiJobsError as exc:  # a database hiccup: try again next beat
            log.warning("job %s: heartbeat failed: %s", ctx.job.id, exc)
