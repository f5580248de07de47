"""Cold start of the built Vercel function: import, first health check, first create.

    .venv/bin/python bench/import_time.py [--runs 7] [--no-build]

Builds the deployment twice as `vercel build` does (tests/vercel/build_check.py,
what `make vercel-build` runs; needs the Vercel CLI in tests/vercel/node_modules):
as Vercel builds it by default (no bytecode in the bundle, so every cold start
compiles every module it imports) and with VERCEL_PYTHON_COMPILEALL=1 (the
builder ships .pyc files). Each bundle is copied out as the function sees it and
run in fresh Python 3.12 processes with only the function's files, its
environment (.vc-config.json: PYTHONPATH=_vendor, PYTHONDONTWRITEBYTECODE=1) and
a local PostgreSQL (embedded, migrated) as its database:

- **import**: `import vc__handler__python`, which is what the runtime does (it
  imports functions/app.py, the pyproject entrypoint, and builds the app); of
  it, the import of functions/app.py alone (the request path: our package and
  its dependencies), timed around the runtime's own call that imports it, the
  rest being Vercel's runtime and the standard library modules it loads;
- **first health**: import + the first `GET /api/health` (one database round trip);
- **first create**: import + the first `POST /api/jobs` (token check, validation,
  insert, hand-off to a local stand-in for /api/internal/work).

Times are measured inside the process (interpreter start-up is the platform's):
wall time and the process's CPU time (which other load on a shared machine barely
changes), median and min-max of --runs fresh processes per figure. One more run under
`-X importtime` splits the first create by top-level package, and the modules
loaded after the import alone are listed (anthropic, supabase, jwt, httpx and
psycopg must not be). With --no-build the existing .vercel/deploy-check output is
measured as it is; --project DIR builds another checkout (an older commit, to
compare).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "vercel")]

import build_check  # noqa: E402 - tests/vercel/build_check.py: the same build and bundle as make vercel-build

# Modules the request path must not load at import (test_cold_start.py checks the same).
LAZY = ("anthropic", "supabase", "jwt", "httpx", "psycopg", "psycopg_pool", "jsonschema", "cryptography", "rich")

CHILD = r"""
import json, os, sys, time
started, cpu_started = time.perf_counter(), time.process_time()
sys.path.insert(0, ".")
# Time the runtime's import of the entrypoint on its own: the rest of the import is
# Vercel's runtime (vercel_runtime.vc_init and the standard library it loads), the
# same for every Python function. vc_init binds resolver.import_module at its import.
import vercel_runtime.resolver as resolver
entry = {}
_import_module = resolver.import_module
def _timed_import(*args, **kwargs):
    t, c = time.perf_counter(), time.process_time()
    try:
        return _import_module(*args, **kwargs)
    finally:
        entry["ms"], entry["cpu_ms"] = (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000
resolver.import_module = _timed_import
import vc__handler__python as h
imported = time.perf_counter()
out = {"import_ms": (imported - started) * 1000, "import_cpu_ms": (time.process_time() - cpu_started) * 1000,
       "entry_ms": entry.get("ms"), "entry_cpu_ms": entry.get("cpu_ms"),
       "loaded_after_import": sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(os.environ["BENCH_LAZY"])))}
mode = os.environ["BENCH_MODE"]
if mode != "import":
    request = json.loads(os.environ["BENCH_REQUEST"])
    r = h.vc_handler({"body": json.dumps(request)}, None)
    out["first_response_ms"] = (time.perf_counter() - started) * 1000
    out["first_response_cpu_ms"] = (time.process_time() - cpu_started) * 1000
    out["status"] = r["statusCode"]
    out["body"] = r.get("body", "")[:200]
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # the runtime's server thread and the app's pools: nothing to wait for
"""


class _Worker(BaseHTTPRequestHandler):
    """Stands in for /api/internal/work: reads the hand-off and answers at once."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def build(project: Path, compileall: bool) -> Path:
    """Build as make vercel-build does and copy the function out; returns its folder."""
    env = {**os.environ, "VERCEL_PYTHON_COMPILEALL": "1" if compileall else ""}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "vercel" / "build_check.py"), "--project",
                           str(project)], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return copy_function(project)


def copy_function(project: Path) -> Path:
    """The built function's files in a fresh folder, plus its .vc-config.json."""
    stage = project / ".vercel" / build_check.STAGE_NAME
    module, variable = build_check.entrypoint(project)
    func = build_check.find_function(stage / ".vercel" / "output", module, variable)
    if func is None:
        raise SystemExit("no built function: run make vercel-build (or drop --no-build)")
    folder = build_check.materialize(build_check.bundle_files(func, stage))
    shutil.copy2(func / ".vc-config.json", folder / ".vc-config.json")
    return folder


def function_env(func_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """What the runtime sets (the function's `environment`), a minimal system
    environment, and the app's configuration."""
    config = json.loads((func_dir / ".vc-config.json").read_text()).get("environment", {})
    return {"PATH": "/usr/bin:/bin", "HOME": str(func_dir), "LANG": "C.UTF-8", **config, **extra}


def run_child(python: str, func_dir: Path, env: dict[str, str], importtime: bool = False) -> tuple[dict, str]:
    args = [python, "-s", *(["-X", "importtime"] if importtime else []), "-c", CHILD]
    proc = subprocess.run(args, cwd=func_dir, env=env, capture_output=True, text=True, timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"the function did not answer (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT ")), proc.stderr


def by_package(importtime_log: str) -> dict[str, float]:
    """Self time per top-level package (ms) from -X importtime output."""
    totals: dict[str, float] = {}
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        try:
            self_us = int(parts[0].split(":")[1])
        except ValueError:
            continue
        top = parts[2].strip().split(".")[0]
        totals[top] = totals.get(top, 0.0) + self_us / 1000
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="fresh processes per figure")
    p.add_argument("--no-build", action="store_true", help="measure the existing .vercel/deploy-check output")
    p.add_argument("--project", type=Path, default=REPO,
                   help="the checkout to build, e.g. an older commit: git archive <rev> | tar -x -C DIR")
    p.add_argument("--python", default=sys._base_executable, help="CPython 3.12, as the runtime")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "import_time.json")
    args = p.parse_args(argv)

    import jwt
    import psycopg

    from bench._throwaway_db import throwaway_database

    stack = ExitStack()
    database = stack.enter_context(throwaway_database("it"))
    worker = ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    threading.Thread(target=worker.serve_forever, daemon=True).start()
    variants: list[tuple[str, Path]] = []
    out: dict[str, Any] = {"runs": args.runs, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                           "variants": {}}
    try:
        uri = database.url
        user_id = database.add_user()
        secret = "bench-import-time-secret-0123456789abcdef"
        token = jwt.encode({"sub": str(user_id), "role": "authenticated", "aud": "authenticated",
                            "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        base = {"DATABASE_URL": uri, "AI_JOBS_STORE": "postgres", "SUPABASE_JWT_SECRET": secret,
                "WORKER_SECRET": "bench-worker-secret", "AI_JOBS_WORKER_URL": f"http://127.0.0.1:{worker.server_port}",
                "BENCH_LAZY": json.dumps(LAZY)}
        requests = {
            "import": None,
            "first health": {"method": "GET", "path": "/api/health", "headers": {"host": "localhost"}},
            "first create": {"method": "POST", "path": "/api/jobs",
                             "headers": {"host": "localhost", "authorization": f"Bearer {token}",
                                         "content-type": "application/json"},
                             "body": json.dumps({"type": "ai.generate", "input": {"prompt": "Say hello"}})},
        }

        if args.no_build:
            variants.append(("as built", copy_function(args.project.resolve())))
        else:
            for compileall in (False, True):
                label = "VERCEL_PYTHON_COMPILEALL=1 (bytecode shipped)" if compileall else "default build (no bytecode)"
                print(f"building: {label} ...", flush=True)
                variants.append((label, build(args.project.resolve(), compileall)))

        for label, func_dir in variants:
            pycs = sum(1 for _ in func_dir.rglob("*.pyc"))
            result: dict[str, Any] = {"pyc_files": pycs}
            for name, request in requests.items():
                env = function_env(func_dir, {**base, "BENCH_MODE": "import" if request is None else "request",
                                              "BENCH_REQUEST": json.dumps(request)})
                runs = []
                for _ in range(args.runs):
                    answer, _ = run_child(args.python, func_dir, env)
                    runs.append(answer)
                    with psycopg.connect(uri, autocommit=True) as conn:  # stay under the per-user cap
                        conn.execute("delete from public.ai_jobs")
                key = "import_ms" if request is None else "first_response_ms"
                cpu_key = key.replace("_ms", "_cpu_ms")
                result[name] = {"ms": [round(r[key], 1) for r in runs], "median_ms": round(statistics.median(
                    r[key] for r in runs), 1), "cpu_ms": [round(r[cpu_key], 1) for r in runs],
                    "status": runs[-1].get("status"), "body": runs[-1].get("body")}
                if request is None:
                    result["loaded_after_import"] = runs[-1]["loaded_after_import"]
                    result["entrypoint"] = {"ms": [round(r["entry_ms"], 1) for r in runs],
                                            "cpu_ms": [round(r["entry_cpu_ms"], 1) for r in runs]}
                if request is not None and runs[-1].get("status") not in (200, 202):
                    print(f"  warning: {name} answered {runs[-1].get('status')}: {runs[-1].get('body')}", flush=True)
            env = function_env(func_dir, {**base, "BENCH_MODE": "request",
                                          "BENCH_REQUEST": json.dumps(requests["first create"])})
            _, log = run_child(args.python, func_dir, env, importtime=True)
            result["first_create_by_package_ms"] = {k: round(v, 1) for k, v in list(by_package(log).items())[:15]}
            out["variants"][label] = result
            shutil.rmtree(func_dir, ignore_errors=True)
    finally:
        worker.shutdown()
        for _, func_dir in variants:
            shutil.rmtree(func_dir, ignore_errors=True)
        stack.close()
    out["load_avg_end"] = os.getloadavg()

    print()
    print("| build | import ms | of which functions/app.py ms | import + first health ms "
          "| import + first create ms | loaded at import |")
    print("|---|---:|---:|---:|---:|---|")
    for label, r in out["variants"].items():
        print(f"| {label} | {stats(r['import']['ms'])} | {stats(r['entrypoint']['ms'])} | "
              f"{stats(r['first health']['ms'])} | {stats(r['first create']['ms'])} | "
              f"{', '.join(r['loaded_after_import']) or 'none of ' + '/'.join(LAZY)} |")
    print("| (the function process's CPU time, ms) | | | | | |")
    for label, r in out["variants"].items():
        print(f"| {label}, CPU | {stats(r['import']['cpu_ms'])} | {stats(r['entrypoint']['cpu_ms'])} | "
              f"{stats(r['first health']['cpu_ms'])} | {stats(r['first create']['cpu_ms'])} | |")
    print()
    print(f"wall time inside the process, and its CPU time (which other load on the machine barely changes): "
          f"median (min–max) of {args.runs} fresh processes; load average {out['load_avg_start'][0]:.2f} at start, "
          f"{out['load_avg_end'][0]:.2f} at end, {os.cpu_count()} CPUs")
    for label, r in out["variants"].items():
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["first_create_by_package_ms"].items())
        print(f"first create by package, {label} (-X importtime self ms, one run): {parts}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
