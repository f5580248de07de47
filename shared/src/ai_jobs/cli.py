"""`ai-jobs` command line: the local stack, migrations, workers and queue inspection."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ai_jobs.models import JobStatus, NewJob
from ai_jobs.runner import RUNNER_MIN_REMAINING_SECONDS
from ai_jobs.settings import Settings
from ai_jobs.store.base import MAX_CLAIM_LIMIT, MAX_LIST_LIMIT

if TYPE_CHECKING:
    from ai_jobs.registry import JobRegistry
    from ai_jobs.runner import Runner
    from ai_jobs.store.base import JobStore
    from ai_jobs.wakeup import DueListener


def _database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server (started, and migrated, if needed)."""
    if settings.database_url:
        return settings.database_url
    from ai_jobs.database.embedded import ensure_embedded_database

    return ensure_embedded_database(settings.data_dir)


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT set the returned event, without taking a lock in the handler.

    A Python signal handler runs in the main thread between two bytecodes, possibly
    while that thread holds the event's internal lock (inside ``wait()`` or ``set()``):
    calling ``Event.set()`` there deadlocks, and ``make`` forwards the signal it gets
    from the process group, so a second one is common. The handler therefore only
    records the signal (one byte written to a self-pipe); a small thread
    reads the pipe and sets the event. Further signals only write more bytes."""
    stop = threading.Event()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def record(signum: int, _frame: Any) -> None:
        try:
            os.write(write_fd, b"s")
        except OSError:  # pipe full: a byte is already waiting, which is enough
            pass

    def relay() -> None:
        while True:
            try:
                if not os.read(read_fd, 64):
                    return
            except InterruptedError:
                continue
            stop.set()

    threading.Thread(target=relay, name="ai-jobs-signals", daemon=True).start()
    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGINT, record)
    return stop


def _load_app_factory() -> Any:
    """The package's WSGI app (the same one Vercel serves through functions/app.py)."""
    from ai_jobs.http.app import create_app

    return create_app


# -- database ----------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from ai_jobs.database.embedded import start_embedded_postgres
    from ai_jobs.database.migrations import migrate

    url = settings.database_url or start_embedded_postgres(settings.data_dir)
    standin = {"auto": None, "yes": True, "no": False}[args.standin]
    report = migrate(url, standin=standin)
    if report.standin_applied:
        print("local Supabase stand-in: in place (this database is not Supabase)")
    if not report.applied:
        print(f"up to date: {len(report.already_applied)} migrations already applied")
        return 0
    for name in report.applied:
        print(f"applied   {name}")
    if report.already_applied:
        print(f"({len(report.already_applied)} already applied before)")
    return 0


# -- serving -----------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace, banner: list[str], demo_fragment: str = "",
           stop: threading.Event | None = None, extend_app: Callable[[Any], None] | None = None) -> int:
    from rich.console import Console

    from ai_jobs.http import operations
    from ai_jobs.http.server import CannotListen, PortInUse, serve
    from ai_jobs.http.services import Services

    create_app = _load_app_factory()
    holder: dict[str, Services] = {}

    def app_factory(url: str) -> Any:
        configured = settings if settings.worker_url else settings.model_copy(update={"worker_url": url})
        holder["svc"] = Services(settings=configured)
        app = create_app(holder["svc"], serve_public=not args.no_public)
        if extend_app is not None:
            extend_app(app)
        return app

    from ai_jobs.devtools import remove_server_record, write_server_record

    database = _database_identity(settings)

    def ready(url: str) -> None:
        # `ai-jobs enqueue` reads this to hand its jobs to us, as POST /api/jobs does
        write_server_record(settings.data_dir, url, database)
        console = Console()
        console.print(f"[bold green]ai-jobs[/] serving on {url}")
        for line in banner:
            print(line)
        print(f"  API        {url}/api/health   OpenAPI {url}/api/openapi.json")
        if not args.no_public:
            print(f"  demo       {url}/{demo_fragment}")
        print("Press Ctrl-C to stop.", flush=True)

    stop = stop or _stop_on_signals()
    try:
        serve(
            app_factory,
            host=args.host,
            port=args.port,
            sweep=lambda: operations.run_sweep(holder["svc"]),
            sweep_interval=args.sweep_interval,
            on_ready=ready,
            stop=stop,
        )
    except PortInUse as exc:
        print(_port_in_use_message(args.command, exc), file=sys.stderr, flush=True)
        return 1
    except CannotListen as exc:  # e.g. a --host that is not an address of this machine
        print(f"ai-jobs: {exc} (check --host and --port)", file=sys.stderr, flush=True)
        return 1
    finally:
        remove_server_record(settings.data_dir)
    holder["svc"].close()
    return 0


def _port_in_use_message(command: str, exc: Any) -> str:
    """One line naming the exact command to run instead: `make dev PORT=N` under
    make (which sets MAKELEVEL for its commands), else `ai-jobs <command> --port N`."""
    from ai_jobs.http.server import free_port_after

    suggested = free_port_after(exc.host, exc.port) or exc.port + 1
    instead = (f"make dev PORT={suggested}" if command == "dev" and os.environ.get("MAKELEVEL")
               else f"ai-jobs {command} --port {suggested}")
    return f"port {exc.port} is in use: run {instead} (or ai-jobs {command} --port 0 for any free port)"


def _database_identity(settings: Settings) -> str:
    """Which database a process works on, comparable between processes: a
    server's hand-off only helps a job in the database that server serves."""
    kind = settings.resolved_store()
    if kind == "supabase":
        return f"supabase:{(settings.supabase_url or '').rstrip('/')}"
    if kind == "postgres":
        return settings.database_url or ""
    return _database_url(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # before an embedded database may start: a signal during start-up exits normally, stopping it
    return _serve(settings, args, [], stop=_stop_on_signals())


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Embedded PostgreSQL + migrations + API + hand-off to a local worker + public/."""
    from ai_jobs.devtools import dev_secrets, ensure_user, mint_token

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before the embedded database starts: a signal during start-up then ends the
    # command through its normal exit, which stops the PostgreSQL it started.
    stop = _stop_on_signals()
    if not os.environ.get("ANTHROPIC_API_KEY"):
        print("warning: ANTHROPIC_API_KEY is not set: the ai.* job types will fail until it is set "
              "(example.countdown works without it)", file=sys.stderr, flush=True)
    try:
        url = _database_url(settings)
    except Exception:
        # (the relay thread sets `stop` a moment after the signal that killed pg_ctl)
        if settings.database_url or not stop.wait(1.0):
            raise
        # The signal reached the group: pg_ctl died while starting a server that
        # runs in its own session. Stop that server unless another process uses it.
        _stop_orphaned_postgres(settings.data_dir)
        return 0
    if settings.database_url:
        from ai_jobs.database.migrations import migrate

        migrate(url)
    if stop.is_set():
        return 0
    secrets = dev_secrets(settings.data_dir)
    settings = settings.model_copy(
        update={
            "store": "postgres",
            "database_url": url,
            "jwt_secret": settings.jwt_secret or secrets.jwt_secret,
            "worker_secret": settings.worker_secret or secrets.worker_secret,
            "cron_secret": settings.cron_secret or secrets.cron_secret,
        }
    )
    user_id = ensure_user(url, "dev@localhost")
    token = mint_token(settings.jwt_secret or "", user_id, email="dev@localhost")
    edge, config = _start_supabase_edge(url, settings.jwt_secret or "", args)
    banner = [
        "  database ready, schema applied",
        f"  DATABASE_URL={url}",
        f"  data kept in {settings.data_dir.resolve()}" if not Settings.from_env().database_url else "",
        f"  dev user   dev@localhost ({user_id})",
        f"  AI_JOBS_TOKEN={token}",
        "  more users: ai-jobs token --user someone@example.com",
        f"  supabase   {edge.url}   (local Realtime + REST, dev only)" if edge else "",
    ]

    def extend(app: Any) -> None:
        from ai_jobs.localstack import install_dev_routes

        install_dev_routes(app, config)

    try:
        if stop.is_set():
            return 0
        return _serve(settings, args, [line for line in banner if line], demo_fragment=f"#token={token}",
                      stop=stop, extend_app=extend if config and not args.no_public else None)
    finally:
        if edge is not None:
            edge.stop()


def _stop_orphaned_postgres(data_dir: Any) -> None:
    """Stop the embedded server a signal left half started (pgserver never attached)."""
    import subprocess
    from pathlib import Path

    from ai_jobs.database.embedded import HANDLES_FILE, prune_dead_handles

    pgdata = (Path(data_dir) / "pgdata").resolve()
    if not pgdata.is_dir():
        return
    prune_dead_handles(pgdata)
    try:
        users = [int(pid) for pid in json.loads((pgdata / HANDLES_FILE).read_text()) if int(pid) != os.getpid()]
    except (OSError, ValueError, TypeError):
        users = []
    if users:
        return
    deadline = time.monotonic() + 2  # postgres writes postmaster.pid early in its start
    while not (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not (pgdata / "postmaster.pid").exists():
        return
    import pgserver

    pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    # as pgserver runs it: as its own system user when we are root (pg_ctl refuses root)
    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    subprocess.run([str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "-t", "4", "stop"],
                   capture_output=True, timeout=10, check=False, user=user)


def _start_supabase_edge(url: str, jwt_secret: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The local Supabase edge (Realtime + REST) on the dev database, and the
    console's config pointing at it. Each missing piece is one line on stderr and a
    console that polls, never a failed start."""
    try:
        from ai_jobs.localstack import dev_config, mint_anon_key, supabase_js_path
        from ai_jobs.localstack.edge import SupabaseEdge
        from ai_jobs.localstack.feed import install_feed
    except ImportError as exc:
        print(f"note: no local Realtime ({exc.name} is not installed: pip install 'ai-jobs[embedded]'); "
              "the demo console polls", file=sys.stderr, flush=True)
        return None, {}
    import psycopg

    from ai_jobs.database.migrations import is_supabase

    with psycopg.connect(url) as conn:
        if is_supabase(conn):
            print("note: DATABASE_URL is a Supabase database: use its own Realtime (no local edge)",
                  file=sys.stderr, flush=True)
            return None, {}
    has_js = supabase_js_path() is not None
    if not has_js:
        print("note: supabase-js is not installed (public/node_modules; make dev runs npm ci in public/): "
              "the demo console polls instead of using Realtime", file=sys.stderr, flush=True)
    edge = SupabaseEdge(url, jwt_secret, host="127.0.0.1", port=args.supabase_port)
    try:
        install_feed(url)
        edge.start()
    except (psycopg.Error, OSError, RuntimeError, TimeoutError) as exc:
        edge.stop()
        print(f"note: no local Realtime ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
              "the demo console polls", file=sys.stderr, flush=True)
        return None, dev_config(None, "", supabase_js=has_js)
    # Live Claude output: the in-process worker publishes to this edge's broadcast endpoint.
    from ai_jobs.localstack import mint_service_key

    os.environ.setdefault("AI_JOBS_REALTIME_URL", edge.url)
    os.environ.setdefault("AI_JOBS_REALTIME_KEY", mint_service_key(jwt_secret))
    # Status over Broadcast: the database trigger on (or off) as AI_JOBS_STATUS_BROADCAST says.
    status_broadcast = os.environ.get("AI_JOBS_STATUS_BROADCAST", "off").strip().lower() in ("on", "1", "true")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select public.ai_jobs_status_broadcast_v1(%s)", (status_broadcast,))
    return edge, dev_config(edge.url, mint_anon_key(jwt_secret), supabase_js=has_js, status_broadcast=status_broadcast)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from ai_jobs.devtools import dev_secrets, ensure_user, mint_token

    url = _database_url(settings)
    secret = settings.jwt_secret or dev_secrets(settings.data_dir).jwt_secret
    user_id = ensure_user(url, args.user)
    email = None if _is_uuid(args.user) else args.user
    print(mint_token(secret, user_id, email=email, ttl_seconds=args.ttl, issuer=settings.jwt_issuer()))
    return 0


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


# -- workers -----------------------------------------------------------------------------


WORKER_JOBS_PER_DRAIN = 1000


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """A long-lived worker loop for hosts that are not serverless; with --concurrency N,
    N loops in threads of one process (each its own lease holder and pooled connection),
    so N jobs run at once: Claude calls mostly wait on the network."""
    from ai_jobs.registry import load_job_modules
    from ai_jobs.runner import Runner
    from ai_jobs.store import open_store

    # The flags were checked when parsed; this bound is a setting: a usage error too
    # (usage, one line naming the flag, exit 2), before any database is opened.
    if args.concurrency > settings.pool_max_size:
        args.parser.error(f"argument --concurrency: Input should be at most AI_JOBS_POOL_MAX_SIZE "
                          f"({settings.pool_max_size}), got '{args.concurrency}'")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = load_job_modules()
    stop = _stop_on_signals()
    lease_seconds = settings.lease_seconds if args.lease_seconds is None else args.lease_seconds
    with open_store(settings) as store:
        # SIGTERM/SIGINT: a running job is released at its next step, no attempt spent
        runners = [Runner(store, registry, lease_seconds=lease_seconds, stopping=stop) for _ in range(args.concurrency)]
        listener = _due_listener(settings, store)
        wakeup = "LISTEN ai_jobs_due, polling" if listener else "polling"
        loops = f"{len(runners)} loops, " if len(runners) > 1 else ""
        print(f"worker {runners[0].worker_id} serving {', '.join(registry.types())} ({loops}{wakeup} every "
              f"{args.poll_interval:g} s when idle)", flush=True)
        wake = _WakeBroadcast(listener, stop)
        try:
            if len(runners) == 1:
                _worker_loop(runners[0], store, registry, settings, args, stop, wake, fire_schedules=True)
            else:
                threads = [
                    threading.Thread(target=_worker_loop, name=f"ai-jobs-worker-{i}", daemon=True,
                                     args=(runner, store, registry, settings, args, stop, wake, i == 0))
                    for i, runner in enumerate(runners)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        finally:
            wake.close()
    return 0


def _worker_loop(runner: Runner, store: JobStore, registry: JobRegistry, settings: Settings,
                 args: argparse.Namespace, stop: threading.Event, wake: _WakeBroadcast, fire_schedules: bool) -> None:
    """One claim-run-complete loop until `stop` (or, with --once, until idle)."""
    import random

    while not stop.is_set():
        seen = wake.generation  # a NOTIFY from now on (even during the claim below) ends the idle wait
        if fire_schedules:
            try:
                # due schedule ticks first (each fires once however many workers race)
                from ai_jobs.schedules import run_schedules

                run_schedules(store, registry, settings)
            except Exception:  # noqa: BLE001 - a schedule problem must not stop the worker
                logging.getLogger("ai_jobs.worker").exception("schedule firing error")
        try:
            # many batches per call: each batch's completions ride on the next claim
            # (one statement); the bound keeps the outcome list small
            outcomes = runner.run_available(max_jobs=WORKER_JOBS_PER_DRAIN, batch=args.batch)
        except Exception:  # noqa: BLE001 - keep serving; the database may come back
            logging.getLogger("ai_jobs.worker").exception("worker loop error")
            outcomes = []
        if args.once and not outcomes:
            break
        if not outcomes:
            wake.wait(args.poll_interval * random.uniform(0.8, 1.2), since=seen)


class _WakeBroadcast:
    """Idle loops sleep here until the poll interval ends, a NOTIFY ai_jobs_due arrives
    (one thread reads the LISTEN connection and wakes every loop), or `stop`."""

    def __init__(self, listener: DueListener | None, stop: threading.Event) -> None:
        self._listener = listener
        self._stop = stop
        self._cond = threading.Condition()
        self._generation = 0
        self._thread: threading.Thread | None = None
        if listener is not None:
            self._thread = threading.Thread(target=self._listen, name="ai-jobs-listen", daemon=True)
            self._thread.start()
        threading.Thread(target=self._on_stop, name="ai-jobs-stop-wake", daemon=True).start()

    def _fire(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _listen(self) -> None:
        assert self._listener is not None  # started only with a listener
        while not self._stop.is_set():
            if self._listener.wait(60.0, self._stop):
                self._fire()
            elif not self._listener.active:
                return  # the connection broke: the loops poll

    def _on_stop(self) -> None:
        self._stop.wait()
        self._fire()

    @property
    def generation(self) -> int:
        """How many wake-ups so far; pass it back to `wait` as `since`."""
        return self._generation

    def wait(self, timeout: float, since: int) -> None:
        """Return after `timeout`, at once if a wake-up came after `since`, or on stop."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != since or self._stop.is_set(), timeout)

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()  # the listening thread checks it at least every STOP_CHECK_SECONDS
            self._thread.join(timeout=2)
        if self._listener is not None:
            self._listener.close()


def _due_listener(settings: Settings, store: Any) -> Any:
    """A LISTEN connection for `ai-jobs worker`, per AI_JOBS_WORKER_WAKEUP: "auto"
    listens on a direct PostgreSQL connection (not through a transaction pooler,
    port 6543, which drops LISTEN), "poll" never, "listen" always (it fails loudly if
    it cannot). None: poll only."""
    from ai_jobs.store.postgres import PostgresStore, _uses_transaction_pooler

    mode = settings.worker_wakeup
    if mode == "poll":
        return None
    if not isinstance(store, PostgresStore):
        if mode == "listen":
            raise SystemExit("AI_JOBS_WORKER_WAKEUP=listen needs a direct PostgreSQL connection (DATABASE_URL)")
        return None
    if mode == "auto" and _uses_transaction_pooler(store.conninfo):
        return None
    from ai_jobs.wakeup import DueListener

    try:
        return DueListener(store.conninfo)
    except Exception as exc:  # noqa: BLE001 - auto: polling still starts every job
        if mode == "listen":
            raise
        logging.getLogger("ai_jobs.worker").warning("cannot LISTEN (%s); polling", type(exc).__name__)
        return None


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from ai_jobs.registry import load_job_modules
    from ai_jobs.runner import Runner
    from ai_jobs.store import open_store
    from ai_jobs.sweep import sweep

    with open_store(settings) as store:
        report = sweep(
            store,
            Runner(store, load_job_modules(), lease_seconds=settings.lease_seconds),
            None,
            stale_pending_seconds=settings.stale_pending_seconds,
            budget_seconds=args.budget,
            alerts=settings.alerts,
            settings=settings,
        )
    print(report.model_dump_json(indent=2))
    return 0


# -- jobs ------------------------------------------------------------------------------------


def _watch(store: Any, job_id: uuid.UUID, interval: float = 0.5) -> int:
    """Follow a job until it ends: a progress bar on a terminal, plain lines
    (one per change: percent, status, message) when piped. 0 if it completed."""
    from rich.console import Console

    console = Console()
    job = _follow_with_bar(store, job_id, interval, console) if console.is_terminal else _follow_plain(
        store, job_id, interval
    )
    if job.status.value == "completed":
        console.print_json(json.dumps(job.result))
        if job.usage:
            console.print(f"usage: {json.dumps(job.usage)}")
        return 0
    console.print(f"[bold red]{job.status.value}[/]: {job.error.message if job.error else ''}")
    return 1


def _follow_with_bar(store: Any, job_id: uuid.UUID, interval: float, console: Any) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("waiting", total=100)
        while True:
            job = store.get(job_id)
            label = f"{job.job_type} [{job.status.value}] {job.progress_message or ''}".strip()
            bar.update(task, completed=job.progress, description=label)
            if job.is_terminal:
                return job
            time.sleep(interval)


def _follow_plain(store: Any, job_id: uuid.UUID, interval: float) -> Any:
    last = None
    while True:
        job = store.get(job_id)
        line = f"{job.progress:>3}% {job.status.value}" + (f" {job.progress_message}" if job.progress_message else "")
        if line != last:
            print(line, flush=True)
            last = line
        if job.is_terminal:
            return job
        time.sleep(interval)


def _hand_off(settings: Settings, job_id: uuid.UUID) -> None:
    """Ask for a worker invocation for the new job, as POST /api/jobs does, so it
    starts now instead of at the next sweep. Notes go to stderr: stdout keeps
    the job id for scripts."""
    from ai_jobs.devtools import existing_dev_secrets, read_server_record

    url = settings.worker_url
    if not url:
        record = read_server_record(settings.data_dir)
        if record is not None and record.database == _database_identity(settings):
            url = record.url
    waits = "the job waits for a worker (`ai-jobs worker`) or the next sweep"
    if not url:
        print(f"no worker to hand off to: {waits}", file=sys.stderr)
        return
    dev = existing_dev_secrets(settings.data_dir)
    secret = settings.worker_secret or (dev.worker_secret if dev else None)
    if not secret:
        print(f"no WORKER_SECRET to hand off to {url} with: {waits}", file=sys.stderr)
        return
    from ai_jobs.dispatch import Dispatcher

    logging.getLogger("ai_jobs.dispatch").setLevel(logging.CRITICAL)  # we say it once, below
    # Not closed: its thread ends by itself within the read timeout, and the
    # interpreter waits for it at exit (closing could cut the request short).
    dispatcher = Dispatcher(url, secret, bypass_secret=settings.protection_bypass_secret,
                            wait_seconds=5.0, connect_timeout=2.0)
    delivered = dispatcher.dispatch(job_id)
    if delivered is not None and delivered.is_set() and not dispatcher.failed:
        print(f"handed off to {dispatcher.url}", file=sys.stderr)
    else:
        print(f"hand-off to {dispatcher.url} failed: {waits}", file=sys.stderr)


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from ai_jobs.service import build_job
    from ai_jobs.store import open_store

    # The type, input and spend limits are checked (as submit_job does) before a database
    # is opened or the owner looked up or created: a job the queue refuses writes nothing,
    # not even the user. The owner is filled in once known.
    new_job = build_job(uuid.UUID(int=0), args.type, args.input, settings=settings, priority=args.priority,
                        org_id=args.org, concurrency_key=args.concurrency_key)
    settings = _local(settings)
    new_job = new_job.model_copy(update={"user_id": _owner(settings, args.user)})
    with open_store(settings) as store:
        result = store.enqueue(new_job)
        print(f"{'enqueued' if result.created else 'existing'} {result.job.id}", flush=True)
        if result.created:
            _hand_off(settings, result.job.id)
        if args.watch:
            return _watch(store, result.job.id)
    return 0


def _local(settings: Settings) -> Settings:
    """Operator commands use DATABASE_URL, the Supabase REST store, or the embedded database."""
    if settings.resolved_store() == "embedded":
        return settings.model_copy(update={"store": "postgres", "database_url": _database_url(settings)})
    return settings


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from ai_jobs.store import open_store

    with open_store(_local(settings)) as store:
        return _watch(store, args.job_id)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from ai_jobs.store import open_store

    settings = _local(settings)
    user_id = _existing_user(settings, args.user) if args.user else None
    with open_store(settings) as store:
        page = store.list(
            user_id=user_id,
            status=JobStatus(args.status) if args.status else None,
            job_type=args.type,
            limit=args.limit,
        )
    rows = [
        (str(job.id), job.job_type, job.status.value, f"{job.progress}%", f"{job.attempts}/{job.max_attempts}",
         job.created_at.isoformat(timespec="seconds"))
        for job in page.jobs
    ]
    console = Console()
    if not console.is_terminal:  # piped: whole ids, one job per tab-separated line
        for row in rows:
            print("\t".join(row))
        return 0
    table = Table()
    for col in ("id", "type", "status", "progress", "attempts", "created"):
        table.add_column(col, no_wrap=col == "id")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


def _by_email_needs_database(who: str, action: str) -> ValueError:
    """On the Supabase REST store (no DATABASE_URL) the CLI cannot read auth.users."""
    return ValueError(f"--user {who!r}: {action} by email needs DATABASE_URL or the embedded database; "
                      "pass the user id instead")


def _owner(settings: Settings, who: str) -> uuid.UUID:
    """enqueue's --user: with a database, the dev user of that email or id (created
    if missing); on the Supabase REST store, only a user id."""
    if settings.database_url:
        from ai_jobs.devtools import ensure_user

        return ensure_user(settings.database_url, who)
    if _is_uuid(who):
        return uuid.UUID(who)
    raise _by_email_needs_database(who, "finding or creating users")


def _existing_user(settings: Settings, who: str) -> uuid.UUID:
    """A user id, or the id of the user with that email (which must exist)."""
    if _is_uuid(who):
        return uuid.UUID(who)
    if not settings.database_url:
        raise _by_email_needs_database(who, "looking users up")
    from ai_jobs.devtools import find_user

    user_id = find_user(settings.database_url, who)
    if user_id is None:
        raise ValueError(f"--user {who!r}: no user has this email")
    return user_id


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from ai_jobs.store import open_store

    with open_store(_local(settings)) as store:
        job = store.request_cancel_tree(args.job_id)  # children too, as the API does
    print(f"{job.id} {job.status.value}{' (cancel requested)' if job.status.value == 'running' else ''}")
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    """Queue depth, 24 h statistics and alerts: tables on a terminal; piped, plain
    tab-separated lines under each section's title (no colours, no box drawing)."""
    from rich.console import Console
    from rich.table import Table

    from ai_jobs.alerts import format_value
    from ai_jobs.store import open_store

    with open_store(_local(settings)) as store:
        depth = store.queue_depth()
        stats = store.stats_24h()
        alerts = store.alerts()
    console = Console()

    def section(title: str, columns: Sequence[str], rows: list[tuple[str, ...]], empty: str | None = None) -> None:
        if not console.is_terminal:
            print(title)
            print("\t".join(columns))
            for row in rows:
                print("\t".join(row))
            print()
            return
        if not rows and empty:
            console.print(f"[bold]{title}[/]: {empty}")
            return
        table = Table(title=title)
        for col in columns:
            table.add_column(col, no_wrap=col == "type")
        for row in rows:
            table.add_row(*row)
        console.print(table)

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    def when(value: Any) -> str:
        return "" if value is None else value.isoformat(timespec="seconds")

    section("Queue depth", ("type", "status", "jobs", "oldest due"),
            [(r.job_type, r.status.value, str(r.jobs), when(r.oldest_run_at)) for r in depth])
    section("Last 24 h", ("type", "completed", "failed", "cancelled", "failure rate", "p50 s", "p95 s"),
            [(s.job_type, str(s.completed), str(s.failed), str(s.cancelled),
              fmt(s.failure_rate), fmt(s.p50_run_seconds), fmt(s.p95_run_seconds)) for s in stats])
    section("Alerts (open, and resolved in the last 24 h)",
            ("type", "alert", "state", "value", "threshold", "opened", "last seen", "resolved", "notified"),
            [(a.job_type, a.kind, "resolved" if a.resolved_at else "open",
              format_value(a.kind, a.value), format_value(a.kind, a.threshold),
              when(a.opened_at), when(a.last_seen_at), when(a.resolved_at),
              "yes" if (a.resolution_notified_at if a.resolved_at else a.notified_at) else "no")
             for a in alerts],
            empty="none")
    return 0


# -- parser ------------------------------------------------------------------------------------


def _port(value: str) -> int:
    """--port and AI_JOBS_PORT: 0 (any free port) to 65535."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {port}")
    return port


def _checked(annotation: Any, *, pattern_hint: str | None = None) -> Callable[[str], Any]:
    """An argparse `type` validating a flag's value with pydantic against `annotation`
    (the model field the value ends up in, or the flag's own bounds): a value the
    queue would refuse later is a usage error at once, one line naming the flag,
    exit 2, before any database is opened. `pattern_hint` replaces pydantic's
    regular expression in the message."""
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)

    def check(value: str) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            problems = "; ".join(pattern_hint if pattern_hint and e["type"] == "string_pattern_mismatch" else e["msg"]
                                 for e in exc.errors())
            got = repr(value) if len(value) <= 40 else f"{len(value)} characters"
            raise argparse.ArgumentTypeError(f"{problems}, got {got}") from None

    return check


def _field(model: type[BaseModel], name: str, *, pattern_hint: str | None = None) -> Callable[[str], Any]:
    """`_checked` against `model`'s field `name`: the flag takes what the field takes."""
    info = model.model_fields[name]
    return _checked(Annotated[info.annotation, info], pattern_hint=pattern_hint)


def _problems(exc: Exception) -> list[str]:
    """One line per problem: a pydantic ValidationError's errors (`errors` is a
    method there), or the JSON-able `errors` list some AiJobsErrors carry."""
    if isinstance(exc, ValidationError):
        return [" ".join([exc.title, ".".join(str(part) for part in e["loc"])]).strip() + f": {e['msg']}"
                for e in exc.errors()]
    errors = getattr(exc, "errors", None)
    return [json.dumps(errors, indent=2, default=str)] if errors else []


def _json_object(value: str) -> dict[str, Any]:
    """enqueue's --input: a JSON object (NaN and Infinity are not JSON, as for the API)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        payload = json.loads(value, parse_constant=refuse)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        kinds = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {kinds.get(type(payload), 'null')}")
    return payload


def _job_id(value: str) -> uuid.UUID:
    """watch's and cancel's JOB_ID: a UUID, as `ai-jobs enqueue` prints it."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id (a UUID), got {value!r}") from None


def _server_options(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1")
    # argparse passes a string default through `type` too, so a bad AI_JOBS_PORT is a usage error
    p.add_argument("--port", type=_port, default=os.environ.get("AI_JOBS_PORT") or str(port),
                   help=f"0 picks a free port (default: AI_JOBS_PORT, else {port})")
    p.add_argument("--sweep-interval", type=_checked(Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)]),
                   default=15.0, help="seconds between local sweeps, at most 86400 (0: off)")
    p.add_argument("--no-public", action="store_true", help="do not serve public/")


_CONCURRENCY_KEY_HINT = "String should be 1-200 letters, digits and . _ : / = @ + -, starting with a letter or digit"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-jobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dev", help="embedded database, API, local worker hand-off and demo page")
    _server_options(p, 8000)
    p.add_argument("--supabase-port", type=_port, default=0,
                   help="port of the local Supabase edge (Realtime + REST, loopback; default 0: any free port)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("serve", help="serve the API with the configured database and secrets")
    _server_options(p, 8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="print an access token for a dev user (created if missing)")
    p.add_argument("--user", required=True, help="email or user id")
    p.add_argument("--ttl", type=_checked(Annotated[int, Field(ge=1)]), default=7 * 24 * 3600,
                   help="seconds until it expires (at least 1; default 7 days)")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("migrate", help="apply supabase/migrations to DATABASE_URL or the embedded database")
    p.add_argument("--standin", choices=("auto", "yes", "no"), default="auto",
                   help="apply the local Supabase stand-in (auto: only when the database is not Supabase)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run jobs in a long-lived loop (hosts that are not serverless)")
    # Checked when parsed, as AI_JOBS_LEASE_SECONDS is at start: a value the claim
    # would refuse stops the start instead of failing every poll.
    p.add_argument("--lease-seconds", type=_field(Settings, "lease_seconds"), default=None,
                   help="lease per job, 1-3600 seconds (default AI_JOBS_LEASE_SECONDS)")
    p.add_argument("--poll-interval", type=_checked(Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]),
                   default=1.0, help="seconds between polls when idle (above 0, at most 3600; default 1)")
    p.add_argument("--once", action="store_true", help="exit when no job is due")
    p.add_argument("--batch", type=_checked(Annotated[int, Field(ge=1, le=MAX_CLAIM_LIMIT)]), default=1,
                   help=f"jobs claimed per round trip, 1-{MAX_CLAIM_LIMIT} (short jobs: 10-50)")
    p.add_argument("--concurrency", type=_field(Settings, "pool_max_size"), default=1,
                   help="loops in this process, each running one job (or batch) at a time (default 1; "
                        "at most AI_JOBS_POOL_MAX_SIZE)")
    p.set_defaults(func=cmd_worker, parser=p)

    p = sub.add_parser("sweep", help="reap expired leases, purge old jobs, run due jobs")
    p.add_argument("--budget", type=_checked(Annotated[float, Field(ge=0, allow_inf_nan=False)]), default=60.0,
                   help=f"seconds to spend running due jobs (a job starts only with {RUNNER_MIN_REMAINING_SECONDS:g} s "
                        "of it left; 0: run none)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("enqueue", help="validate and enqueue a job")
    p.add_argument("type", help="job type, e.g. example.countdown")
    p.add_argument("--input", type=_json_object, default="{}", help="JSON object")
    p.add_argument("--user", default="dev@localhost", help="owner: email or user id (dev users are created)")
    # checked against the fields of the enqueue request (NewJob) they end up in
    p.add_argument("--priority", type=_field(NewJob, "priority"), default=None,
                   help="-1000 to 1000, higher is claimed first (default: the job type's; operators may raise it)")
    p.add_argument("--org", type=_field(NewJob, "org_id"), default=None,
                   help="organization id (1-200 characters) for the organization concurrency limit")
    p.add_argument("--concurrency-key", type=_field(NewJob, "concurrency_key", pattern_hint=_CONCURRENCY_KEY_HINT),
                   default=None, help="e.g. decision:123: 1-200 letters, digits and . _ : / = @ + -, starting "
                                      "with a letter or digit (see the key concurrency limit)")
    p.add_argument("--watch", action="store_true", help="show progress until the job ends")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("watch", help="progress of one job until it ends (plain lines when piped)")
    p.add_argument("job_id", type=_job_id)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("list", help="recent jobs, newest first")
    p.add_argument("--user", default=None, help="only this owner's jobs (email or user id)")
    p.add_argument("--status", choices=[status.value for status in JobStatus])
    p.add_argument("--type", default=None)
    p.add_argument("--limit", type=_checked(Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT)]), default=20,
                   help=f"at most this many jobs, 1-{MAX_LIST_LIMIT} (default 20)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("cancel", help="cancel a job (running jobs stop at their next step)")
    p.add_argument("job_id", type=_job_id)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("stats", help="queue depth, 24 h statistics and alerts")
    p.set_defaults(func=cmd_stats)
    return parser


def _working_directory_importable() -> None:
    """AI_JOBS_JOB_MODULES name modules of the app `ai-jobs` is run from. The
    console script puts only its own folder on sys.path, so put the working
    directory first (as `python -m` does) for every command alike: dev, serve,
    worker, sweep and enqueue then all find the same job types."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


# Commands that run or enqueue jobs: on the embedded (development-only) database they
# serve the demo types too, so the quickstart's `ai-jobs enqueue example.countdown`
# works next to `ai-jobs dev`.
_DEV_DATABASE_COMMANDS = ("enqueue", "worker", "sweep")


def _demo_job_types(command: str, settings: Settings) -> None:
    """`ai-jobs dev` (and job commands on the embedded database) serve the demo job
    types unless AI_JOBS_DEMO_JOB_TYPES says otherwise; everything else, and every
    deployment, needs AI_JOBS_DEMO_JOB_TYPES=1 for them."""
    from ai_jobs.registry import DEMO_JOB_TYPES_ENV

    if command == "dev" or (command in _DEV_DATABASE_COMMANDS and settings.resolved_store() == "embedded"):
        os.environ.setdefault(DEMO_JOB_TYPES_ENV, "1")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _working_directory_importable()
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # pydantic's ValidationError: a malformed setting stops start-up, with what to fix
        print(f"ai-jobs: invalid configuration: {exc}", file=sys.stderr)
        return 2
    _demo_job_types(args.command, settings)
    try:
        return int(args.func(args, settings))
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: a message, not a traceback
        from ai_jobs.errors import AiJobsError

        if isinstance(exc, ValidationError):  # a ValueError whose str() is many lines: one per problem instead
            print("\n".join(f"ai-jobs: {line}" for line in _problems(exc)), file=sys.stderr)
            return 1
        if isinstance(exc, (AiJobsError, ValueError, RuntimeError, FileNotFoundError)):
            print("\n".join([f"ai-jobs: {exc}", *_problems(exc)]), file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
