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
