"""A JobStore that forwards every call to a real store and counts them by SQL
function: a spy on our own database traffic, not a mock of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from ai_jobs.store.base import JobStore, SqlFunction


class CountingStore(JobStore):
    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def call(self, function: SqlFunction, params: Mapping[str, Any]) -> Any:
        self.calls[function.name] += 1
        return self.inner.call(function, params)

    def writes(self) -> int:
        reads = {"ai_jobs_get_v1", "ai_jobs_list_v1", "ai_jobs_queue_depth_v1", "ai_jobs_stats_24h_v1"}
        return sum(n for name, n in self.calls.items() if name not in reads)
