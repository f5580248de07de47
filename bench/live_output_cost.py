"""Cost of one live-output message: `realtime.send` from SQL versus a POST to the
Realtime broadcast endpoint (issue 14: choose by measured cost).

- realtime.send: in a PostgreSQL 15 cluster shaped like Supabase
  (tests/supabase_cluster.py) with the realtime schema as Realtime's migrations create
  it (tests/test_live_output_rls.py), as the non-superuser postgres: time per call and
  WAL bytes per message (each message is a row in realtime.messages).
- REST: `POST /realtime/v1/api/broadcast` to the local edge of `ai-jobs dev`
  (ai_jobs.localstack.edge) over a kept-alive httpx client, as the worker's publisher
  sends it: time per request; no database write.

Writes bench/results/live_output_cost.json. Run: .venv/bin/python -m bench.live_output_cost
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from pathlib import Path

import httpx
import psycopg

RESULTS = Path(__file__).resolve().parent / "results" / "live_output_cost.json"
N = 1000


def _payload() -> dict[str, object]:
    return {"job": str(uuid.uuid4()), "stream": "s", "seq": 1, "offset": 0, "delta": "x" * 400,
            "format": "text", "done": False}


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def realtime_send() -> dict[str, float]:
    from ai_jobs.database.migrations import migrate
    from tests.supabase_cluster import destroy_cluster, start_cluster
    from tests.test_live_output_rls import PARTITION_SQL, REALTIME_SQL

    cluster = start_cluster()
    try:
        cluster.prepare_database("postgres", pg_cron=False)
        with cluster.admin() as admin:
            admin.execute(REALTIME_SQL)
            admin.execute(PARTITION_SQL)
        migrate(cluster.url("postgres"))
        payload = _payload()
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            start = conn.execute("select pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            times = []
            for _ in range(N):
                began = time.perf_counter()
                conn.execute("select realtime.send(%s::jsonb, 'output', %s, true)",
                             (json.dumps(payload), f"ai-jobs-live:{payload['job']}"))
                times.append(time.perf_counter() - began)
            wal = conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0]  # type: ignore[index]
            rows = conn.execute("select count(*) from realtime.messages").fetchone()[0]  # type: ignore[index]
        return {"ms_p50": round(statistics.median(times) * 1000, 3), "ms_p95": round(_p(times, 0.95), 3),
                "wal_bytes_per_message": round(float(wal) / N), "rows_written_per_message": rows / N}
    finally:
        destroy_cluster(cluster)


def rest_broadcast() -> dict[str, float]:
    from ai_jobs.localstack import mint_service_key
    from ai_jobs.localstack.edge import SupabaseEdge
    from ai_jobs.localstack.feed import install_feed
    from bench._throwaway_db import throwaway_database

    with throwaway_database("lc") as database:
        install_feed(database.url)
        secret = "live-output-cost-secret-with-more-than-32-characters"
        edge = SupabaseEdge(database.url, secret, access_log=False)
        edge.start()
        try:
            return _time_broadcasts(edge.url, mint_service_key(secret))
        finally:
            edge.stop()


def _time_broadcasts(edge_url: str, key: str) -> dict[str, float]:
    payload = _payload()
    with httpx.Client(headers={"apikey": key, "Authorization": f"Bearer {key}"}) as client:
        times = []
        for _ in range(N):
            began = time.perf_counter()
            response = client.post(f"{edge_url}/realtime/v1/api/broadcast", json={"messages": [
                {"topic": f"ai-jobs-live:{payload['job']}", "event": "output", "payload": payload, "private": True}]})
            times.append(time.perf_counter() - began)
            assert response.status_code == 202
    return {"ms_p50": round(statistics.median(times) * 1000, 3), "ms_p95": round(_p(times, 0.95), 3),
            "rows_written_per_message": 0}


def main() -> None:
    results = {"messages": N, "delta_chars": 400, "realtime_send_sql": realtime_send(),
               "rest_broadcast_local_edge": rest_broadcast()}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
