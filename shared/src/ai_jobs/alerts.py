"""Alerts per job type, evaluated by the sweep.

The conditions are computed in SQL (`ai_jobs_evaluate_alerts_v1`, migration
20261130000700): failure rate, queue depth, p95 run time against its 7-day
baseline, and stuck jobs. Each incident is one row of `ai_jobs_alerts`, opened
once and resolved once, so a condition that persists over many sweeps notifies
once. This module holds the thresholds (AI_JOBS_ALERT_*), posts the webhook
message for each opening and resolution, and records a delivery only after a
2xx, so a webhook that is down is retried at the next sweep. A POST gets 3 s in all
and a sweep's round 10 s in all, wall clock: a receiver that answers slowly (even a
byte at a time) is cut off at the deadline, its connection shut down.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from ai_jobs.store.base import JobStore

log = logging.getLogger(__name__)

# One POST may take at most this long in all, wall clock: connecting (DNS included),
# TLS, sending, and the response's status line and headers (its body is never read).
# The sweep's own work must not wait on a slow receiver.
WEBHOOK_TIMEOUT_SECONDS = 3.0
# Per sweep: at most this many posts and this much time on them in all (a POST still
# running then is cut off); the rest waits for the next sweep.
MAX_POSTS_PER_SWEEP = 20
DELIVERY_BUDGET_SECONDS = 10.0

AlertEvent = Literal["opened", "resolved"]


class AlertSettings(BaseModel):
    """Thresholds and the webhook; every field has an AI_JOBS_ALERT_* variable
    (the alias), so a bad value names the variable to fix."""

    # inputs stay out of error messages: the webhook URL is a secret
    model_config = ConfigDict(populate_by_name=True, frozen=True, hide_input_in_errors=True)

    enabled: bool = Field(default=True, alias="AI_JOBS_ALERTS")
    failure_rate: float = Field(default=0.10, ge=0, le=1, alias="AI_JOBS_ALERT_FAILURE_RATE")
    failure_min_jobs: int = Field(default=10, ge=1, le=1_000_000, alias="AI_JOBS_ALERT_FAILURE_MIN_JOBS")
    queue_depth: int = Field(default=50, ge=0, le=100_000_000, alias="AI_JOBS_ALERT_QUEUE_DEPTH")
    p95_factor: float = Field(default=2.0, ge=1, le=1000, alias="AI_JOBS_ALERT_P95_FACTOR")
    p95_min_samples: int = Field(default=20, ge=1, le=1_000_000, alias="AI_JOBS_ALERT_P95_MIN_SAMPLES")
    stuck_jobs: int = Field(default=5, ge=0, le=100_000_000, alias="AI_JOBS_ALERT_STUCK_JOBS")
    stuck_pending_seconds: int = Field(default=600, ge=1, le=604_800, alias="AI_JOBS_ALERT_STUCK_PENDING_SECONDS")
    evaluate_every_seconds: int = Field(default=60, ge=0, le=86_400, alias="AI_JOBS_ALERT_EVALUATE_EVERY_SECONDS")
    baseline_refresh_seconds: int = Field(
        default=3600, ge=0, le=604_800, alias="AI_JOBS_ALERT_BASELINE_REFRESH_SECONDS"
    )
    webhook_url: str | None = Field(default=None, alias="AI_JOBS_ALERT_WEBHOOK_URL")

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """A typo must fail at start-up, not silently drop every alert."""
        if value is None or not value.strip():
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AlertSettings:
        names = {field.alias for field in cls.model_fields.values() if field.alias}
        return cls.model_validate({name: env[name] for name in names if env.get(name)})

    def thresholds(self) -> dict[str, float | int]:
        """The `p_thresholds` object for ai_jobs_evaluate_alerts_v1."""
        return self.model_dump(exclude={"enabled", "webhook_url"})


class Alert(BaseModel):
    """One incident: a (job_type, kind) condition from opening to resolution."""

    id: UUID
    job_type: str
    kind: str
    opened_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None = None
    value: float | None = None
    threshold: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    notified_at: datetime | None = None
    resolution_notified_at: datetime | None = None


class AlertNotice(Alert):
    """An incident whose opening or resolution still has to be posted; `fresh`:
    opened or resolved by this very evaluation."""

    event: AlertEvent
    fresh: bool


class AlertReport(BaseModel):
    opened: int = 0
    resolved: int = 0
    notified: int = 0


# -- the message -----------------------------------------------------------------------


def format_value(kind: str, value: float | None) -> str:
    """The value as people read it: a percentage, seconds or a count."""
    if value is None:
        return "n/a"
    if kind == "failure_rate":
        return f"{value * 100:.1f}%"
    if kind == "p95_duration":
        return f"{value:.1f} s"
    return f"{value:.0f}"


def _describe(notice: AlertNotice) -> str:
    d = notice.details
    value = format_value(notice.kind, notice.value)
    threshold = format_value(notice.kind, notice.threshold)
    if notice.kind == "failure_rate":
        return (f"failure rate {value} over the last hour ({d.get('failed')} of {d.get('finished')} "
                f"finished jobs failed; threshold {threshold})")
    if notice.kind == "queue_depth":
        return f"{value} pending jobs due (threshold {threshold})"
    if notice.kind == "p95_duration":
        return (f"p95 run time {value} over the last hour, 7-day baseline "
                f"{format_value('p95_duration', d.get('baseline_p95_seconds'))} "
                f"(threshold {threshold} = {d.get('factor')}x baseline)")
    if notice.kind == "stuck_jobs":
        return (f"{value} stuck jobs: {d.get('expired_leases')} running with an expired lease, "
                f"{d.get('pending_overdue')} pending and due for over {d.get('pending_overdue_after_seconds')} s "
                f"(threshold {threshold})")
    return f"{notice.kind} {value} (threshold {threshold})"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(notice: AlertNotice) -> dict[str, Any]:
    """One message: `text` for Slack (and people), `alert` for programs."""
    if notice.event == "opened":
        text = f"[ai-jobs] ALERT {notice.kind} on {notice.job_type}: {_describe(notice)}"
    else:
        text = (f"[ai-jobs] RESOLVED {notice.kind} on {notice.job_type} (open since "
                f"{notice.opened_at.isoformat(timespec='seconds')}): now {_describe(notice)}")
    return {
        "text": _slack_escape(text),
        "alert": {
            "id": str(notice.id),
            "event": notice.event,
            "kind": notice.kind,
            "job_type": notice.job_type,
            "value": notice.value,
            "threshold": notice.threshold,
            "opened_at": notice.opened_at.isoformat(),
            "resolved_at": notice.resolved_at.isoformat() if notice.resolved_at else None,
            "details": notice.details,
        },
    }


# -- evaluation and delivery -----------------------------------------------------------------


def run_alerts(store: JobStore, settings: AlertSettings) -> AlertReport:
    """Evaluate (the SQL decides what opened or resolved) and post what is owed."""
    if not settings.enabled:
        return AlertReport()
    notices = store.evaluate_alerts(settings.thresholds())
    report = AlertReport(
        opened=sum(1 for n in notices if n.fresh and n.event == "opened"),
        resolved=sum(1 for n in notices if n.fresh and n.event == "resolved"),
    )
    for notice in notices:
        if notice.fresh:
            log.warning("alert %s: %s on %s (%s, threshold %s)", notice.event, notice.kind, notice.job_type,
                        format_value(notice.kind, notice.value), format_value(notice.kind, notice.threshold))
    if settings.webhook_url and notices:
        report.notified = deliver(store, notices, settings.webhook_url)
    return report


def deliver(store: JobStore, notices: Sequence[AlertNotice], url: str) -> int:
    """Post each notice; a 2xx marks it notified, anything else gives it back for the
    next sweep. The first failure stops this round (the receiver is likely down, and
    each attempt could cost the whole timeout). Each POST ends within
    WEBHOOK_TIMEOUT_SECONDS and the round within DELIVERY_BUDGET_SECONDS, wall clock.
    Returns how many were delivered."""
    from ai_jobs import __version__
    from ai_jobs.webhook import Webhook  # imported when there is something to post

    host = urlsplit(url).hostname  # the path of a Slack webhook URL is its secret: never log it
    delivered = 0
    round_deadline = time.monotonic() + DELIVERY_BUDGET_SECONDS
    remaining = list(notices)
    webhook = Webhook(url, user_agent=f"ai-jobs/{__version__}")
    try:
        while remaining and delivered < MAX_POSTS_PER_SWEEP and time.monotonic() < round_deadline:
            notice = remaining.pop(0)
            ok, problem = webhook.post(
                json.dumps(payload(notice), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(),
                deadline=min(time.monotonic() + WEBHOOK_TIMEOUT_SECONDS, round_deadline),
            )
            store.mark_alert_notified(notice.id, notice.event, delivered=ok)
            if not ok:
                log.warning("alert webhook at %s failed (%s); %d notification(s) retried at the next sweep",
                            host, problem, len(remaining) + 1)
                break
            delivered += 1
    finally:
        webhook.close()
    for notice in remaining:  # not attempted this round: give them back now
        store.mark_alert_notified(notice.id, notice.event, delivered=False)
    return delivered
