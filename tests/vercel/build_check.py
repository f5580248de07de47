"""`make vercel-build`: build the deployment as Vercel would, offline, and check it.

`vercel deploy` uploads the files that pass .vercelignore and Vercel builds the
upload, so this script does the same on this machine: it asks the installed
Vercel CLI for its upload list (upload_files.mjs), copies exactly those files to
.vercel/deploy-check/, runs `vercel build` there (Python 3.12 and uv on PATH, a
local .vercel/project.json, no Vercel account), and then fails unless

- a function serves the pyproject.toml entrypoint, routed for /api, with
  runtime python3.12 and vercel.json's maxDuration;
- the bundle holds no .env*, .ai-jobs, tests/, bench/ (or other dev-only paths)
  and everything the function imports at run time;
- it stays under Vercel's 500 MB (uncompressed) limit for Python functions;
- the built handler, imported in a fresh Python 3.12 as the runtime does,
  answers GET /api/health (200, or 503 JSON without a database) and
  GET /api/openapi.json (200).

It prints the bundle's size and the build time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LIMIT_MB = 500  # Vercel: Python functions, uncompressed
STAGE_NAME = "deploy-check"

# No path in the bundle may start with these (outside _vendor, the installed
# dependencies).
FORBIDDEN_TOP = ("tests", "bench", ".ci", ".github", "test-artifacts", ".venv", "node_modules", ".hypothesis",
                 ".pytest_cache", "Makefile", "SECURITY.md")
# What the function imports or reads at run time, all of which must be there.
REQUIRED = ("functions/__init__.py", "functions/_bootstrap.py", "functions/app.py",
            "shared/src/ai_jobs/__init__.py", "shared/src/ai_jobs/http/app.py",
            "_vendor/werkzeug/__init__.py", "_vendor/vercel_runtime/vc_init.py")
# Dependencies the function must not ship: the app is werkzeug alone (Flask cost ~0.4 s of every cold start).
UNWANTED = ("_vendor/flask/",)


def forbidden(path: str) -> str | None:
    """Why `path` (a path inside the function) must not ship, or None."""
    parts = path.split("/")
    if any(p == ".env" or p.startswith(".env.") for p in parts):
        return "secret (.env*)"
    if ".ai-jobs" in parts:
        return "local data (.ai-jobs)"
    if parts[0] in FORBIDDEN_TOP:
        return f"dev-only ({parts[0]})"
    return None


def upload_list(project: Path) -> dict:
    out = subprocess.run(["node", str(HERE / "upload_files.mjs"), str(project)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def stage(project: Path, files: list[str]) -> Path:
    """Copy the upload into .vercel/deploy-check/, keeping its own .vercel/
    (the builder's virtualenv and uv cache make a rebuild fast)."""
    dest = project / ".vercel" / STAGE_NAME
    dest.mkdir(parents=True, exist_ok=True)
    for entry in dest.iterdir():
        if entry.name == ".vercel":
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    (dest / ".vercel").mkdir(exist_ok=True)
    shutil.rmtree(dest / ".vercel" / "output", ignore_errors=True)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / rel, target)
    linked = project / ".vercel" / "project.json"
    if not linked.is_file():
        # What `vercel link` writes, minus the ids of a real project. Vercel
        # detects the Flask preset from pyproject.toml when the project is created.
        linked.parent.mkdir(exist_ok=True)
        linked.write_text(json.dumps({"projectId": "prj_local_build", "orgId": "team_local_build",
                                      "settings": {"framework": "flask"}}, indent=2) + "\n")
        print(f"created {linked.relative_to(project)} (no linked project; Flask preset)")
    shutil.copy2(linked, dest / ".vercel" / "project.json")
    return dest


def tool_path(shims: Path, python: str, uv: str) -> str:
    """PATH with a first folder where python3, python3.12 and uv are ours."""
    for name in ("python", "python3", "python3.12"):
        (shims / name).symlink_to(python)
    (shims / "uv").symlink_to(uv)
    return f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"


def run_build(stage_dir: Path, vercel: Path, path: str) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=path, VERCEL_TELEMETRY_DISABLED="1", NO_UPDATE_NOTIFIER="1")
    started = time.monotonic()
    proc = subprocess.run([str(vercel), "build", "--yes", "--cwd", str(stage_dir)], env=env,
                          capture_output=True, text=True)
    took = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (stage_dir.parent / f"{STAGE_NAME}.log").write_text(log)
    if proc.returncode != 0:
        print(log[-4000:], file=sys.stderr)
        raise SystemExit(f"vercel build failed (exit {proc.returncode}); log in .vercel/{STAGE_NAME}.log")
    return took, log


def entrypoint(project: Path) -> tuple[str, str]:
    spec = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["vercel"]["entrypoint"]
    module, _, variable = spec.partition(":")
    return module, variable or "app"


def find_function(output: Path, module: str, variable: str) -> Path | None:
    for handler in output.glob("functions/**/*.func/vc__handler__python.py"):
        text = handler.read_text()
        if f'"__VC_HANDLER_MODULE_NAME": "{module}"' in text and f'"__VC_HANDLER_VARIABLE_NAME": "{variable}"' in text:
            return handler.parent
    return None


def bundle_files(func: Path, stage_dir: Path) -> dict[str, Path]:
    """Every file of the function: the ones in the .func folder plus the
    filePathMap (path in the function -> file in the built project)."""
    files = {p.relative_to(func).as_posix(): p for p in func.rglob("*")
             if p.is_file() and p.name != ".vc-config.json"}
    config = json.loads((func / ".vc-config.json").read_text())
    for inside, source in config.get("filePathMap", {}).items():
        files[inside] = stage_dir / source
    return files


def materialize(files: dict[str, Path]) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="ai-jobs-vercel-func-"))
    for inside, source in files.items():
        target = dest / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


CALL = r"""
import json, sys, time
sys.path.insert(0, ".")
started = time.monotonic()
import vc__handler__python as h
imported = time.monotonic() - started
results = {"import_s": round(imported, 3)}
for path in ("/api/health", "/api/openapi.json"):
    event = {"body": json.dumps({"method": "GET", "path": path, "headers": {"host": "localhost"}})}
    r = h.vc_handler(event, None)
    headers = {k.lower(): v for k, v in r["headers"].items()}
    ctype = headers.get("content-type")
    results[path] = {"status": r["statusCode"], "content_type": ctype if isinstance(ctype, str) else ctype[0],
                     "body": r.get("body", "")[:300]}
print("RESULT " + json.dumps(results))
"""


def call_handler(func_dir: Path, python: str) -> dict:
    """Import the built handler as Vercel's runtime does (vc__handler__python ->
    vercel_runtime.vc_init -> the entrypoint) in a clean Python 3.12 with no
    configuration, and send it two requests."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(func_dir), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([python, "-I", "-c", CALL], cwd=func_dir, env=env, capture_output=True, text=True,
                          timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"the built function did not answer (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--python", default=sys._base_executable, help="CPython 3.12 for the builder")
    parser.add_argument("--uv", default=shutil.which("uv", path=str(Path(sys.executable).parent)),
                        help="uv for the builder (default: this virtualenv's; make vercel-build installs it)")
    args = parser.parse_args()
    project = args.project.resolve()
    python = str(Path(args.python).resolve())
    if not args.uv:
        raise SystemExit("uv not found: pip install uv (make vercel-build installs the version Vercel uses)")
    if subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"]).returncode:
        raise SystemExit(f"{python} is not Python 3.12, what Vercel runs: pass --python")
    vercel = HERE / "node_modules" / ".bin" / "vercel"
    problems: list[str] = []

    upload = upload_list(project)
    leaked = [f for f in upload["files"] if forbidden(f)]
    if leaked:
        problems.append(f"vercel deploy would upload {len(leaked)} such files, e.g. {', '.join(leaked[:5])}")
    print(f"Vercel CLI {upload['cli']}: uploads {len(upload['files'])} files, ignores {len(upload['ignored'])} "
          f"paths (e.g. {', '.join(p for p in upload['ignored'] if forbidden(p))[:200]})")

    stage_dir = stage(project, upload["files"])
    with tempfile.TemporaryDirectory(prefix="ai-jobs-vercel-bin-") as shims:
        took, _ = run_build(stage_dir, vercel, tool_path(Path(shims), python, args.uv))
    output = stage_dir / ".vercel" / "output"
    print(f"vercel build: {took:.1f} s -> {output.relative_to(project)}")

    module, variable = entrypoint(project)
    func = find_function(output, module, variable)
    if func is None:
        raise SystemExit(f"FAIL: no function in {output} serves {module}:{variable}")
    vc = json.loads((func / ".vc-config.json").read_text())
    vercel_json = json.loads((project / "vercel.json").read_text())
    entry_file = module.replace(".", "/") + ".py"
    want_duration = vercel_json.get("functions", {}).get(entry_file, {}).get("maxDuration")
    if vc.get("runtime") != "python3.12":
        problems.append(f"runtime is {vc.get('runtime')!r}, not python3.12")
    if want_duration is None or vc.get("maxDuration") != want_duration:
        problems.append(f"maxDuration is {vc.get('maxDuration')!r}; vercel.json says {want_duration!r}")
    if not vc.get("handler"):
        problems.append(".vc-config.json names no handler")
    config = json.loads((output / "config.json").read_text())
    name = "/" + func.relative_to(output / "functions").as_posix().removesuffix(".func")
    if not any(r.get("dest") == name for r in config.get("routes", [])):
        problems.append(f"no route sends requests to {name}")
    if config.get("crons") != vercel_json.get("crons"):
        problems.append(f"crons {config.get('crons')} differ from vercel.json")

    files = bundle_files(func, stage_dir)
    missing_sources = [k for k, p in files.items() if not p.is_file()]
    if missing_sources:
        problems.append(f"filePathMap points at missing files: {missing_sources[:5]}")
    shipped_bad: dict[str, list[str]] = {}
    for inside in sorted(files):
        if why := forbidden(inside):
            shipped_bad.setdefault(why, []).append(inside)
    problems += [f"bundle contains {why}: {len(paths)} files, e.g. {', '.join(paths[:3])}"
                 for why, paths in shipped_bad.items()]
    problems += [f"bundle lacks {req}" for req in REQUIRED if req not in files]
    problems += [f"bundle ships {bad} (a runtime dependency brought it back)" for bad in UNWANTED
                 if any(k.startswith(bad) for k in files)]
    size = sum(p.stat().st_size for p in files.values() if p.is_file())
    mb = size / 1e6
    top = sorted({k.split("/")[0] for k in files})
    print(f"function {func.relative_to(output)}: runtime {vc.get('runtime')}, maxDuration {vc.get('maxDuration')}, "
          f"{len(files)} files, {mb:.1f} MB (limit {LIMIT_MB} MB); top level: {' '.join(top)}")
    if mb >= LIMIT_MB:
        problems.append(f"bundle is {mb:.1f} MB, over Vercel's {LIMIT_MB} MB")

    if not problems:
        func_dir = materialize(files)
        try:
            answers = call_handler(func_dir, python)
        finally:
            shutil.rmtree(func_dir, ignore_errors=True)
        health, spec = answers["/api/health"], answers["/api/openapi.json"]
        print(f"handler import {answers['import_s']:.2f} s; GET /api/health -> {health['status']} "
              f"{health['content_type']} {health['body'][:160]}; GET /api/openapi.json -> {spec['status']}")
        # No database is configured here: 503 with the health report (or a
        # problem) is the right answer; a 500 or a crash is not.
        if health["status"] not in (200, 503) or "json" not in (health["content_type"] or ""):
            problems.append(f"/api/health answered {health['status']} {health['content_type']}: {health['body']}")
        if spec["status"] != 200:
            problems.append(f"/api/openapi.json answered {spec['status']}: {spec['body']}")

    if problems:
        print("FAIL:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("OK: the deployment bundle is clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
