"""The wheel runs alone: built from this checkout, installed into an empty
folder and run from outside the checkout, `ai-jobs dev` applies the migrations
shipped in the wheel and serves the API and the demo page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "shared" / "src" / "ai_jobs"


def _expected_files() -> dict[str, Path]:
    """Wheel path -> source file, for everything the wheel must carry."""
    files = {f"ai_jobs/{p.relative_to(PACKAGE)}": p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    files["ai_jobs/py.typed"] = PACKAGE / "py.typed"
    for folder, target in (("supabase/migrations", "_supabase/migrations"), ("supabase/local", "_supabase/local")):
        files.update({f"ai_jobs/{target}/{p.name}": p for p in (REPO / folder).glob("*.sql")})
    files.update({f"ai_jobs/_public/{p.name}": p for p in (REPO / "public").iterdir() if p.is_file()})
    return files


def test_every_package_is_listed_in_pyproject() -> None:
    """pyproject lists packages by hand (find cannot map supabase/ and public/ in)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = {p for p in config["packages"] if not p.startswith(("ai_jobs._supabase", "ai_jobs._public"))}
    on_disk = {
        ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        for init in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert listed == on_disk


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps` of a copy of the build inputs (so no build/ lands in
    the checkout), then `pip install --no-deps --target`."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "node_modules")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("shared", "supabase", "public"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dist), str(src)], check=True, timeout=300)
    (wheel,) = dist.glob("ai_jobs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(set(_expected_files()) - names)
    assert not missing, f"not in the wheel: {missing}"
    target = work / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300)
    return target


def _env(target: Path, **extra: str) -> dict[str, str]:
    drop = ("AI_JOBS_SUPABASE_DIR", "DATABASE_URL", "SUPABASE_URL", "PYTHONPATH", "AI_JOBS_CORS_ORIGINS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"PYTHONPATH": str(target), "PYTHONUNBUFFERED": "1", **extra})
    return env


def test_installed_package_uses_its_own_files(installed_wheel: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, ai_jobs, ai_jobs.resources as r;"
        "print(ai_jobs.__file__); print(r.checkout_root()); print(r.supabase_dir()); print(r.public_dir());"
        "print(importlib.util.find_spec('functions'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed_wheel),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    package = installed_wheel / "ai_jobs"
    assert out == [str(package / "__init__.py"), "None", str(package / "_supabase"), str(package / "_public"), "None"]


@pytest.fixture()
def empty_database(database_url: str) -> Iterator[str]:
    name = f"wheel_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield psycopg.conninfo.make_conninfo(database_url, dbname=name)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'drop database "{name}" with (force)')


def test_wheel_runs_ai_jobs_dev_outside_the_checkout(installed_wheel: Path, empty_database: str, tmp_path: Path) -> None:
    env = _env(installed_wheel, DATABASE_URL=empty_database, AI_JOBS_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai_jobs.cli", "dev", "--port", "0", "--sweep-interval", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        url, lines, deadline = "", [], time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving on " in line:
                url = line.split("serving on ", 1)[1].strip()
            if "Press Ctrl-C" in line:
                break
        assert url, f"ai-jobs dev did not start: {''.join(lines)}"
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

        health = httpx.get(f"{url}/api/health", timeout=10)
        assert health.status_code == 200 and health.json()["database"] == "ok"
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200
        assert page.content == (installed_wheel / "ai_jobs" / "_public" / "index.html").read_bytes()
        assert page.content == (REPO / "public" / "index.html").read_bytes()
        script = httpx.get(f"{url}/ai-jobs.js", timeout=10)
        assert script.status_code == 200 and script.content == (REPO / "public" / "ai-jobs.js").read_bytes()
        missing = httpx.get(f"{url}/api/no-such-route", timeout=10)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    shipped = sorted(p.stem.partition("_")[0] for p in (installed_wheel / "ai_jobs" / "_supabase" / "migrations").glob("*.sql"))
    assert shipped == sorted(p.stem.partition("_")[0] for p in (REPO / "supabase" / "migrations").glob("*.sql"))
    with psycopg.connect(empty_database) as conn:
        applied = [r[0] for r in conn.execute("select version from supabase_migrations.schema_migrations order by 1")]
        assert conn.execute("select to_regclass('public.ai_jobs') is not null").fetchone()[0]
    assert applied == shipped
