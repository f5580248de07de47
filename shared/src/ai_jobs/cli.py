"""`ai-jobs` command line: local database, migrations and queue inspection."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from ai_jobs.settings import Settings


def _database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server (started if needed)."""
    if settings.database_url:
        return settings.database_url
    from ai_jobs.database.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.data_dir)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from ai_jobs.database.migrations import migrate

    standin = {"auto": None, "yes": True, "no": False}[args.standin]
    report = migrate(_database_url(settings), standin=standin)
    if report.standin_applied:
        print("local Supabase stand-in: applied (this database is not Supabase)")
    for name in report.applied:
        print(f"applied   {name}")
    for name in report.already_applied:
        print(f"unchanged {name}")
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from ai_jobs.database.embedded import ensure_embedded_database

    console = Console()
    if settings.database_url:
        from ai_jobs.database.migrations import migrate

        url = settings.database_url
        migrate(url)
    else:
        url = ensure_embedded_database(settings.data_dir)
    console.print("[bold green]ai-jobs dev[/] database ready, schema applied")
    # Plain prints: these lines are copied by people and parsed by tests, never wrapped.
    print(f"  DATABASE_URL={url}")
    if not settings.database_url:
        print(f"  data kept in {settings.data_dir.resolve()}")
    print("Press Ctrl-C to stop.", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from ai_jobs.store import open_store

    with open_store(settings) as store:
        depth = store.queue_depth()
        stats = store.stats_24h()
    console = Console()
    table = Table(title="Queue depth")
    for col in ("type", "status", "jobs", "oldest due"):
        table.add_column(col)
    for row in depth:
        table.add_row(row.job_type, row.status.value, str(row.jobs), str(row.oldest_run_at or ""))
    console.print(table)
    table = Table(title="Last 24 h")
    for col in ("type", "completed", "failed", "cancelled", "failure rate", "p50 s", "p95 s"):
        table.add_column(col)

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    for s in stats:
        table.add_row(
            s.job_type, str(s.completed), str(s.failed), str(s.cancelled),
            fmt(s.failure_rate), fmt(s.p50_run_seconds), fmt(s.p95_run_seconds),
        )
    console.print(table)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """A long-lived worker loop for hosts that are not serverless."""
    import logging
    import random

    from ai_jobs.registry import load_job_modules
    from ai_jobs.runner import Runner
    from ai_jobs.store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = load_job_modules()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lease = args.lease_seconds or settings.lease_seconds
    with open_store(settings) as store:
        runner = Runner(store, registry, lease_seconds=lease)
        print(f"worker {runner.worker_id} serving {', '.join(registry.types())}", flush=True)
        while not stop.is_set():
            try:
                outcomes = runner.run_available(max_jobs=1)
            except Exception:  # noqa: BLE001 - keep serving; the database may come back
                logging.getLogger("ai_jobs.worker").exception("worker loop error")
                outcomes = []
            if args.once and not outcomes:
                break
            if not outcomes:
                stop.wait(args.poll_interval * random.uniform(0.8, 1.2))
    return 0


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import uuid

    from ai_jobs.service import submit_job
    from ai_jobs.store import open_store

    try:
        payload = json.loads(args.input)
    except ValueError as exc:
        print(f"ai-jobs: --input is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(payload, dict):
        print("ai-jobs: --input must be a JSON object", file=sys.stderr)
        return 2
    with open_store(settings) as store:
        result = submit_job(store, uuid.UUID(args.user), args.type, payload, settings=settings, priority=args.priority)
    print(result.job.model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-jobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply supabase/migrations to DATABASE_URL or the embedded database")
    p.add_argument(
        "--standin",
        choices=("auto", "yes", "no"),
        default="auto",
        help="apply the local Supabase stand-in (auto: only when the database is not Supabase)",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("dev", help="start the embedded database with the schema applied")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("worker", help="run jobs in a long-lived loop (hosts that are not serverless)")
    p.add_argument("--lease-seconds", type=int, default=None, help="lease per job (default AI_JOBS_LEASE_SECONDS)")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls when idle")
    p.add_argument("--once", action="store_true", help="exit when no job is due")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="validate and enqueue a job")
    p.add_argument("type", help="job type, e.g. example.countdown")
    p.add_argument("--input", default="{}", help="JSON object")
    p.add_argument("--user", required=True, help="owner's user id (must exist in auth.users)")
    p.add_argument("--priority", type=int, default=0)
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("stats", help="queue depth and 24 h statistics")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    try:
        return int(args.func(args, settings))
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: a message, not a traceback
        from ai_jobs.errors import AiJobsError

        if isinstance(exc, (AiJobsError, RuntimeError, ValueError, FileNotFoundError)):
            print(f"ai-jobs: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
