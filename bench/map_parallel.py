"""ai.map_batches sequential versus fanned out into child jobs (issue 16 item 7).

One 200-item `ai.map_batches` job (batch_size 10: 20 Claude requests) against
tests/claude_api_fake.py, the local HTTP fake of the Anthropic API (billing as the API
does, prompt cache included), with every request taking 1 s. The queue is a throwaway
embedded PostgreSQL; the workers are 10 in-process runner loops (`Runner.run_available`,
what each worker invocation does), polling every 50 ms. Two runs, each with a cold
prompt cache:
  - sequential (AI_JOBS_MAP_FAN_OUT_MIN_BATCHES=0): the job runs its batches one after another;
  - fanned out (AI_JOBS_MAP_FAN_OUT_MIN_BATCHES=2, AI_JOBS_MAP_PARALLELISM=10): batch 1
    in the job, then 19 `ai.map_batch` children, at most 10 at a time.
Reported: wall time (enqueue to completed), handler runs (claims of the job and its
children: what a serverless deployment pays invocations for), runner loops that ran
something, database row writes per item (inserts + updates + deletes on every table,
from pg_stat_user_tables after the run's connections closed), and the recorded cost
(the job's usage cost_usd + children_cost_usd), which must be identical.
AI_JOBS_USER_CONCURRENCY is 0 here: the per-user running-job limit (default 3) also
bounds a user's children.

    .venv/bin/python bench/map_parallel.py [--items 200] [--batch-size 10] [--call-seconds 1] [--parallelism 10]

Runs in about 40 s; prints a Markdown table and writes bench/results/map_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "map_parallel.json"
MODEL = "claude-sonnet-5-5"
RUNNERS = 10


def row_writes(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        value = conn.execute("select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) from pg_stat_user_tables"
                             ).fetchone()
    return int(value[0]) if value else 0


def run_scenario(url: str, user: str, name: str, env: dict[str, str], doc: str, items: list[str],
                 batch_size: int, call_seconds: float) -> dict[str, Any]:
    from ai_jobs import workflows
    from ai_jobs.claude.client import reset_clients
    from ai_jobs.registry import load_job_modules
    from ai_jobs.runner import Runner
    from ai_jobs.store.postgres import PostgresStore
    from bench.map_cost import realistic_reply
    from tests.claude_api_fake import ClaudeApiFake

    with ClaudeApiFake(responder=realistic_reply, call_seconds=call_seconds) as fake:
        os.environ["ANTHROPIC_BASE_URL"] = fake.url
        os.environ.update(env)
        workflows._settings_from_env.cache_clear()
        reset_clients()
        registry = load_job_modules()
        time.sleep(1.5)  # let the previous run's statistics settle
        writes_before = row_writes(url)
        with PostgresStore(url, max_size=RUNNERS + 2) as store:
            data = {"document": doc, "items": items, "batch_size": batch_size, "use_batch_api": False}
            job_id = store.enqueue(registry.new_job(user, "ai.map_batches", data)).job.id
            started = time.perf_counter()
            done = threading.Event()
            runs: list[int] = [0] * RUNNERS

            def loop(slot: int) -> None:
                runner = Runner(store, registry, lease_seconds=30)
                while not done.is_set():
                    outcomes = runner.run_available(wait_for_due=False)
                    runs[slot] += len(outcomes)
                    if not outcomes:
                        time.sleep(0.05)

            threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(RUNNERS)]
            for t in threads:
                t.start()
            while not store.get(job_id).is_terminal:
                time.sleep(0.02)
            seconds = time.perf_counter() - started
            done.set()
            for t in threads:
                t.join(30)
            job = store.get(job_id)
            children = store.children(job_id, limit=200).jobs
        time.sleep(1.5)  # the closed connections' statistics are flushed at exit
        writes = row_writes(url) - writes_before
        for key in env:
            os.environ.pop(key, None)
    assert job.status.value == "completed", (job.status, job.error)
    assert [m["item"] for m in job.result["mappings"]] == items
    recorded = float(job.usage.get("cost_usd", 0)) + float(job.usage.get("children_cost_usd", 0))
    return {
        "scenario": name, "seconds": round(seconds, 2), "handler_runs": sum(runs),
        "runner_loops_used": sum(1 for r in runs if r), "children": len(children),
        "claude_requests": len(fake.message_requests), "row_writes": writes,
        "row_writes_per_item": round(writes / len(items), 2), "recorded_usd": recorded,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--call-seconds", type=float, default=1.0)
    p.add_argument("--parallelism", type=int, default=10)
    p.add_argument("--doc-tokens", type=int, default=20_000)
    args = p.parse_args(argv)

    from bench._throwaway_db import throwaway_database
    from bench.map_cost import document

    os.environ.update({"ANTHROPIC_API_KEY": "sk-ant-bench", "AI_JOBS_MODEL": MODEL, "AI_JOBS_USER_CONCURRENCY": "0"})
    for name in ("AI_JOBS_PROMPT_CACHE", "AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS", "AI_JOBS_MAP_BATCH_API_MIN_ITEMS",
                 "AI_JOBS_RATE_LIMITS", "AI_JOBS_PRICES", "AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "AI_JOBS_MAP_PARALLELISM"):
        os.environ.pop(name, None)
    doc = document(args.doc_tokens)
    items = [f"requirement {i}: files shared outside the workspace expire" for i in range(args.items)]
    scenarios = [
        ("sequential (AI_JOBS_MAP_FAN_OUT_MIN_BATCHES=0)", {"AI_JOBS_MAP_FAN_OUT_MIN_BATCHES": "0"}),
        (f"fanned out, parallelism {args.parallelism}",
         {"AI_JOBS_MAP_FAN_OUT_MIN_BATCHES": "2", "AI_JOBS_MAP_PARALLELISM": str(args.parallelism)}),
    ]
    rows = []
    with throwaway_database("mp") as database:
        url, user = database.url, database.add_user()
        for name, env in scenarios:
            rows.append(run_scenario(url, user, name, env, doc, items, args.batch_size, args.call_seconds))
            print(f"{name}: {rows[-1]['seconds']} s, ${rows[-1]['recorded_usd']:.6f}", file=sys.stderr)

    calls = -(-args.items // args.batch_size)
    print(f"\n{args.items} items, batch_size {args.batch_size} ({calls} requests of {args.call_seconds:g} s), "
          f"document ≈ {args.doc_tokens:,} tokens, {MODEL}, {RUNNERS} runner loops\n")
    print("| run | wall time | handler runs | runner loops used | children | row writes / item | recorded $ |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['seconds']:.1f} s | {r['handler_runs']} | {r['runner_loops_used']} "
              f"| {r['children']} | {r['row_writes_per_item']:.2f} | {r['recorded_usd']:.6f} |")
    same = abs(rows[0]["recorded_usd"] - rows[1]["recorded_usd"]) < 1e-9
    print(f"\nrecorded cost identical: {same}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"items": args.items, "batch_size": args.batch_size,
                                   "call_seconds": args.call_seconds, "doc_tokens": args.doc_tokens, "model": MODEL,
                                   "runners": RUNNERS, "rows": rows, "identical_cost": same}, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "shared" / "src")]
    sys.exit(main())
