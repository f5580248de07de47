"""What a large ai.map_batches job costs: no caching, prompt caching, and the Batch API.

One 200-item `ai.map_batches` job (batch_size 10: 20 Claude requests) over a document of
about 100,000 tokens, run end to end by the real worker (Runner, PostgresStore on a
throwaway embedded PostgreSQL) against tests/claude_api_fake.py, a local HTTP fake of
the Anthropic API that bills as the API does: cache writes (5 m / 1 h) and reads by
prefix and TTL, the minimum cacheable length, and the Batch API tier; a Message
Batch's requests run in parallel there (none reads what another of the same batch
wrote: the worst case of the API's best-effort batch cache hits). Each scenario gets a
fresh fake (a cold cache). Reported per scenario: what the job recorded
(`usage.cost_usd`) and what the fake billed, priced with the same table
(ai_jobs.claude.pricing, claude-sonnet-5-5: $2 in, $10 out, $2.50 / $4 cache writes,
$0.20 cache reads per MTok, Batch API x0.5).

    .venv/bin/python bench/map_cost.py [--items 200] [--batch-size 10] [--doc-tokens 99000]

Runs in about 10 s; prints a Markdown table and writes bench/results/map_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "map_cost.json"
MODEL = "claude-sonnet-5-5"

SCENARIOS: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("before: no caching (AI_JOBS_PROMPT_CACHE=off)", {"AI_JOBS_PROMPT_CACHE": "off"}, {}),
    ("prompt caching, 5-minute TTL (AI_JOBS_PROMPT_CACHE=5m)", {"AI_JOBS_PROMPT_CACHE": "5m"}, {}),
    ("prompt caching, default (auto: 20 calls -> 1-hour TTL)", {}, {}),
    ("Batch API, no caching (use_batch_api: true, AI_JOBS_PROMPT_CACHE=off)",
     {"AI_JOBS_PROMPT_CACHE": "off"}, {"use_batch_api": True}),
    ("Batch API + caching (use_batch_api: true; default)", {}, {"use_batch_api": True}),
]


def document(tokens: int) -> str:
    """About `tokens` tokens of varied policy text (the fake counts 4 characters a token)."""
    parts, n = [], 0
    while sum(map(len, parts)) < tokens * 4 - 30:
        n += 1
        parts.append(f"Section {n}. Uploaded files in workspace {n % 97} are encrypted at rest with key "
                     f"version {n % 13}, access is logged for {n % 400 + 30} days, and reviewers sign off "
                     f"within {n % 9 + 1} business days. ")
    return "".join(parts)[: tokens * 4 - 24]  # plus "<document>\n" ... "\n</document>"


def realistic_reply(request: dict[str, Any]) -> str:
    """About 90 output tokens per item, like a sentence or two of mapping each."""
    content = request["messages"][-1]["content"]
    last = content if isinstance(content, str) else content[-1]["text"]
    items = [line[2:] for line in last.splitlines() if line.startswith("- ")]
    return json.dumps({"mappings": [
        {"item": it, "confidence": 80,
         "mapping": f"Addressed in sections 12-14: the document states how {it} is enforced, who reviews it "
                    "and how often; the retention period and the sign-off deadline are explicit, the escalation "
                    "path is not."}
        for it in items]})


def run_scenario(store: Any, db_url: str, user: str, name: str, env: dict[str, str], extra: dict[str, Any],
                 doc: str, items: list[str], batch_size: int) -> dict[str, Any]:
    import psycopg

    from ai_jobs.claude.client import reset_clients
    from ai_jobs.claude.pricing import usage_record
    from ai_jobs.registry import load_job_modules
    from ai_jobs.runner import Runner
    from tests.claude_api_fake import ClaudeApiFake

    with ClaudeApiFake(responder=realistic_reply, polls_until_ended=3) as fake:
        saved = {k: os.environ.get(k) for k in ("ANTHROPIC_BASE_URL", *env)}
        os.environ["ANTHROPIC_BASE_URL"] = fake.url
        os.environ.update(env)
        reset_clients()
        try:
            registry = load_job_modules()
            data = {"document": doc, "items": items, "batch_size": batch_size, **extra}
            job_id = store.enqueue(registry.new_job(user, "ai.map_batches", data)).job.id
            started = time.perf_counter()
            wakeups = 0
            while True:
                Runner(store, registry).run_available(job_id=job_id)
                wakeups += 1
                job = store.get(job_id)
                if job.is_terminal or wakeups > 20:
                    break
                with psycopg.connect(db_url, autocommit=True) as conn:  # the poll interval, skipped
                    conn.execute("update public.ai_jobs set run_at = now() where id = %s", (job_id,))
            seconds = time.perf_counter() - started
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            reset_clients()
    assert job.status.value == "completed", (job.status, job.error)
    assert len(job.result["mappings"]) == len(items)
    billed = sum(usage_record(b.model, b.usage, batch=b.batch)["cost_usd"] for b in fake.billed)
    u = job.usage
    return {
        "scenario": name, "recorded_usd": u["cost_usd"], "billed_usd": billed, "requests": u["requests"],
        "input_tokens": u["input_tokens"], "cache_write_tokens": u["cache_creation_input_tokens"],
        "cache_write_1h_tokens": u.get("cache_creation_1h_input_tokens", 0),
        "cache_read_tokens": u["cache_read_input_tokens"], "output_tokens": u["output_tokens"],
        "message_batches": len(fake.batches), "wakeups": wakeups, "seconds": round(seconds, 2),
        "direct": sum(not b.batch for b in fake.billed), "batched": sum(b.batch for b in fake.billed),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--doc-tokens", type=int, default=99_000, help="document size (the input allows 400,000 chars)")
    args = p.parse_args(argv)

    from ai_jobs.store.postgres import PostgresStore
    from bench._throwaway_db import throwaway_database

    # No per-job cost limit: the uncached scenario's worst case (about $5.7 for the
    # defaults) is over AI_JOBS_MAX_JOB_COST_USD's default $5, and this measures cost.
    os.environ.update({"ANTHROPIC_API_KEY": "sk-ant-bench", "AI_JOBS_MODEL": MODEL,
                       "AI_JOBS_MAP_BATCH_API_POLL_SECONDS": "1", "AI_JOBS_MAX_JOB_COST_USD": "0"})
    for name in ("AI_JOBS_PROMPT_CACHE", "AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS", "AI_JOBS_MAP_BATCH_API_MIN_ITEMS",
                 "AI_JOBS_RATE_LIMITS", "AI_JOBS_PRICES"):
        os.environ.pop(name, None)
    doc = document(args.doc_tokens)
    items = [f"requirement {i}: files shared outside the workspace expire" for i in range(args.items)]
    rows = []
    with throwaway_database("mc") as database:
        url, user = database.url, database.add_user()
        with PostgresStore(url, max_size=2) as store:
            for name, env, extra in SCENARIOS:
                rows.append(run_scenario(store, url, user, name, env, extra, doc, items, args.batch_size))
                print(f"{name}: ${rows[-1]['recorded_usd']:.4f} in {rows[-1]['seconds']} s", file=sys.stderr)

    base = rows[0]["recorded_usd"]
    calls = -(-args.items // args.batch_size)
    print(f"\n{args.items} items, batch_size {args.batch_size} ({calls} requests), document ≈ {args.doc_tokens:,} "
          f"tokens, {MODEL}\n")
    print("| scenario | recorded $ | fake billed $ | vs before | input | cache write (1 h) | cache read | output "
          "| direct / batched requests |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['recorded_usd']:.4f} | {r['billed_usd']:.4f} | {r['recorded_usd'] / base:.2f}× "
              f"| {r['input_tokens']:,} | {r['cache_write_tokens']:,} ({r['cache_write_1h_tokens']:,}) "
              f"| {r['cache_read_tokens']:,} | {r['output_tokens']:,} | {r['direct']} / {r['batched']} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"items": args.items, "batch_size": args.batch_size, "doc_tokens": args.doc_tokens,
                                   "model": MODEL, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "shared" / "src")]
    sys.exit(main())
