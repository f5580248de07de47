"""Live Claude output: text deltas published to the job's private Realtime Broadcast
topic while a call streams, without slowing the call or writing the database per token.

- The job thread only appends each text delta to a `LiveStream` (a lock and a list
  append). One process-wide publisher thread wakes every AI_JOBS_LIVE_INTERVAL_MS
  (default 100 ms, so at most 10 messages per second per job), takes what each stream
  gathered since its last message as ONE coalesced message, and sends all of them in
  one POST to Supabase Realtime's broadcast endpoint with the service key
  (`POST <url>/realtime/v1/api/broadcast`, body `{messages: [{topic, event, payload,
  private: true}]}`; supabase/realtime `lib/realtime_web/controllers/broadcast_controller.ex`
  and `lib/realtime/tenants/batch_broadcast.ex`: 202, the service role passes the
  write check because it bypasses RLS). A failed or slow POST (timeout
  AI_JOBS_LIVE_TIMEOUT_SECONDS) drops those messages and counts them; the text they
  carried is still in the next snapshot, and clients see the offset gap and re-read.
- Why REST and not `realtime.send` from SQL: realtime.send inserts a row in
  realtime.messages per message (a database write per message, through the worker's
  database connection); the endpoint writes nothing to the database.
- Each message: `{job, stream, seq, offset, delta, format, done}` (+ `partial` for
  structured output): `stream` is new per Claude call (a retried call starts again at
  offset 0), `seq` counts the stream's messages from 1, `offset` is where `delta`
  starts in the stream's text in UTF-16 code units (JavaScript string indices), so a
  client appends `delta[len - offset:]` when `offset <= len` and re-reads the row on a
  gap. For structured output `partial` is the JSON so far, closed to parse
  (`partial_json`), while the text is at most PARTIAL_MAX_CHARS.
- The snapshot `{id, seq, format, text}` rides on the job's coalesced progress writes
  (JobContext.attach_stream -> ai_jobs_progress_v2), so database writes per job depend
  on the call's duration, not on its token count.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Format = Literal["text", "json"]
EVENT = "output"
TOPIC_PREFIX = "ai-jobs-live:"
PARTIAL_MAX_CHARS = 64_000  # above this, json messages carry no `partial` (clients parse the text)
MIN_INTERVAL_MS = 100  # at most 10 messages per second per job


def topic(job_id: Any) -> str:
    """The private Broadcast topic of a job (RLS: only its owner may receive it)."""
    return f"{TOPIC_PREFIX}{job_id}"


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of JavaScript string indices."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class LiveSettings:
    enabled: bool
    url: str | None
    key: str | None
    interval_seconds: float
    timeout_seconds: float

    @property
    def publishes(self) -> bool:
        return self.enabled and bool(self.url) and bool(self.key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LiveSettings:
        """AI_JOBS_LIVE_OUTPUT (on|off, default on), AI_JOBS_REALTIME_URL (default
        SUPABASE_URL), the service key (AI_JOBS_REALTIME_KEY, else SUPABASE_SERVICE_ROLE_KEY
        or SUPABASE_SECRET_KEY; `ai-jobs dev` sets the first two for its local edge),
        AI_JOBS_LIVE_INTERVAL_MS (100-5000, default 100), AI_JOBS_LIVE_TIMEOUT_SECONDS
        (0.1-10, default 2). Bad values raise ValueError naming the variable."""
        env = os.environ if env is None else env
        flag = (env.get("AI_JOBS_LIVE_OUTPUT") or "on").strip().lower()
        if flag not in ("on", "off", "true", "false", "1", "0"):
            raise ValueError(f"AI_JOBS_LIVE_OUTPUT must be on or off, got {flag!r}")

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low:g} and {high:g}, got {raw}")
            return value

        url = (env.get("AI_JOBS_REALTIME_URL") or env.get("SUPABASE_URL") or "").strip().rstrip("/") or None
        key = (env.get("AI_JOBS_REALTIME_KEY") or env.get("SUPABASE_SERVICE_ROLE_KEY")
               or env.get("SUPABASE_SECRET_KEY") or "").strip() or None
        return cls(
            enabled=flag in ("on", "true", "1"), url=url, key=key,
            interval_seconds=number("AI_JOBS_LIVE_INTERVAL_MS", 100, MIN_INTERVAL_MS, 5000) / 1000,
            timeout_seconds=number("AI_JOBS_LIVE_TIMEOUT_SECONDS", 2, 0.1, 10),
        )


def partial_json(text: str) -> Any:
    """The value of an incomplete JSON text, closed where it stops: an open string is
    ended, open arrays and objects closed; a dangling key, separator or literal is cut
    back to the last complete member. None when nothing parses yet."""
    stack: list[str] = []
    in_string = escape = False
    cuts: list[tuple[int, tuple[str, ...]]] = []  # (end of text to keep, open brackets there)
    for i, ch in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            cuts.append((i + 1, tuple(stack)))
        elif ch in "}]":
            if stack:
                stack.pop()
            cuts.append((i + 1, tuple(stack)))
        elif ch == ",":
            cuts.append((i, tuple(stack)))
    candidates: list[str] = []
    tail = text
    if in_string:
        tail = (tail[:-1] if escape else tail) + '"'
    candidates.append(tail + "".join(reversed(stack)))
    for end, open_ in reversed(cuts[-4:]):
        candidates.append(text[:end] + "".join(reversed(open_)))
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


class LiveStream:
    """One Claude call's output for one job: fed by the job thread, drained by the publisher."""

    def __init__(self, job_id: Any, fmt: Format, publisher: Publisher | None) -> None:
        self.job_id = str(job_id)
        self.id = uuid.uuid4().hex[:16]
        self.format: Format = fmt
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._units = 0  # UTF-16 length of the text so far
        self._sent_units = 0  # where the next message's delta starts
        self._pending: list[str] = []
        self._seq = 0
        self._done = False
        self._done_sent = False
        self._snapshot_seq = -1  # seq of the last snapshot handed out (None when unchanged)
        self._snapshot_units = -1
        self.sent = 0
        self.dropped = 0
        self._publisher = publisher
        if publisher is not None:
            publisher.register(self)

    def feed(self, delta: str) -> None:
        """Job thread: append a text delta (cheap; never blocks on the network)."""
        if not delta:
            return
        with self._lock:
            self._parts.append(delta)
            self._pending.append(delta)
            self._units += utf16_len(delta)

    def close(self) -> None:
        """The call ended (or failed): the publisher sends what is left with done=true."""
        with self._lock:
            self._done = True
        if self._publisher is None:
            return
        self._publisher.wake()

    @property
    def text(self) -> str:
        with self._lock:
            if len(self._parts) > 1:
                self._parts = ["".join(self._parts)]
            return self._parts[0] if self._parts else ""

    def snapshot(self) -> dict[str, Any] | None:
        """For the next progress write: {id, seq, format, text}, or None when nothing
        changed since the last one (no text rewritten for a progress-only write)."""
        with self._lock:
            if self._units == self._snapshot_units:
                return None
            self._snapshot_units = self._units
            text = "".join(self._parts)
            self._parts = [text] if text else []
            seq = self._seq
        return {"id": self.id, "seq": seq, "format": self.format, "text": text}

    def take(self) -> tuple[dict[str, Any] | None, bool]:
        """Publisher thread: the coalesced message since the last one (None: nothing new),
        and whether the stream is finished (no more messages after this one)."""
        with self._lock:
            if not self._pending and not (self._done and self._seq > 0 and not self._done_sent):
                return None, self._done  # nothing new (a stream that never sent needs no end marker)
            delta = "".join(self._pending)
            self._done_sent = self._done
            self._pending = []
            offset = self._sent_units
            self._sent_units = self._units
            self._seq += 1
            payload: dict[str, Any] = {
                "job": self.job_id, "stream": self.id, "seq": self._seq, "offset": offset,
                "delta": delta, "format": self.format, "done": self._done,
            }
            whole = "".join(self._parts) if self.format == "json" else ""
            if whole:
                self._parts = [whole]
        if self.format == "json" and len(whole) <= PARTIAL_MAX_CHARS:
            payload["partial"] = partial_json(whole)
        return payload, self._done


Sender = Callable[[list[dict[str, Any]]], None]


class Publisher:
    """The process's one publisher thread: every interval, one message per stream with
    new text, all in one POST. Failures are dropped and counted, never retried."""

    def __init__(self, settings: LiveSettings, send: Sender | None = None, *, start: bool = True) -> None:
        self.settings = settings
        self._send = send or self._post
        self._streams: list[LiveStream] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._client: Any = None
        self.requests = 0
        self.messages_sent = 0
        self.messages_dropped = 0
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="ai-jobs-live-output", daemon=True)
        if start:  # start=False: rounds only by flush() (tests)
            self._thread.start()

    def register(self, stream: LiveStream) -> None:
        with self._lock:
            self._streams.append(stream)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._client is not None:
            self._client.close()

    def _run(self) -> None:
        interval = self.settings.interval_seconds
        last_round = float("-inf")
        while not self._stopping.is_set():
            with self._lock:
                idle = not self._streams
            self._wake.wait(None if idle else interval)  # no streams: sleep until one registers
            self._wake.clear()
            # at most one message per stream per interval, even when close() wakes us early
            left = interval - (time.monotonic() - last_round)
            if left > 0 and self._stopping.wait(left):
                break
            last_round = time.monotonic()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the publisher must outlive any one failure
                log.exception("live output: publish round failed")
        try:
            self.flush()  # what is left when the process stops
        except Exception:  # noqa: BLE001
            pass

    def flush(self) -> None:
        """One round: take a message from each stream with news, send them together."""
        with self._lock:
            streams = list(self._streams)
        batch: list[tuple[LiveStream, dict[str, Any]]] = []
        finished: list[LiveStream] = []
        for stream in streams:
            payload, done = stream.take()
            if payload is not None:
                batch.append((stream, payload))
            if done:
                finished.append(stream)
        if finished:
            with self._lock:
                self._streams = [s for s in self._streams if s not in finished]
        if not batch:
            return
        messages = [{"topic": topic(p["job"]), "event": EVENT, "payload": p, "private": True} for _, p in batch]
        self.requests += 1
        try:
            self._send(messages)
        except Exception as exc:  # noqa: BLE001 - dropped and counted
            self.messages_dropped += len(batch)
            for stream, _ in batch:
                stream.dropped += 1
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("live output: %d Realtime message(s) dropped (%s: %s); %d dropped in all",
                            len(batch), type(exc).__name__, str(exc)[:200], self.messages_dropped)
            return
        self.messages_sent += len(batch)
        for stream, _ in batch:
            stream.sent += 1

    def _post(self, messages: list[dict[str, Any]]) -> None:
        import httpx

        if self._client is None:
            headers = {"apikey": str(self.settings.key), "Content-Type": "application/json"}
            if str(self.settings.key).count(".") == 2:  # a JWT key (legacy service_role); sb_secret_ keys go as apikey only
                headers["Authorization"] = f"Bearer {self.settings.key}"
            self._client = httpx.Client(timeout=self.settings.timeout_seconds, headers=headers)
        response = self._client.post(f"{self.settings.url}/realtime/v1/api/broadcast", json={"messages": messages})
        if response.status_code >= 300:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")


_publisher: Publisher | None = None
_publisher_key: LiveSettings | None = None
_publisher_lock = threading.Lock()


def publisher() -> Publisher | None:
    """The process's publisher for the current settings (None: live output off, or no
    Realtime URL and service key). A settings change (tests, `ai-jobs dev`) starts a new one."""
    global _publisher, _publisher_key
    try:
        settings = LiveSettings.from_env()
    except ValueError as exc:
        log.warning("live output off: %s", exc)
        return None
    if not settings.publishes:
        return None
    with _publisher_lock:
        if _publisher is None or _publisher_key != settings:
            old = _publisher
            _publisher, _publisher_key = Publisher(settings), settings
            if old is not None:
                threading.Thread(target=old.stop, daemon=True).start()
        return _publisher
