"""Deploy hygiene: what `vercel deploy` uploads, and what git keeps out.

The Vercel CLI filters the upload with .vercelignore (gitignore syntax) plus its
own defaults, never .gitignore, and Vercel's Python builder bundles every
uploaded file outside public/ into the function. So a missing rule ships a
secret (.env) or the embedded database (.ai-jobs/) to production.

The rules are checked with git's own matcher (the reference for gitignore
syntax), always, and with the installed Vercel CLI's upload code when
`make vercel-build` has installed it (tests/vercel/node_modules).
`make vercel-build` goes further: it builds the upload and checks the bundle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "tests" / "vercel"

# Must never be uploaded (paths inside the project).
EXCLUDED = [
    ".env",
    ".env.local",
    ".env.production",
    ".env.production.local",
    "functions/.env",
    "supabase/.env",
    ".ai-jobs/pgdata/PG_VERSION",
    ".ai-jobs/pgdata/base/1/112",
    "supabase/.temp/project-ref",
    "supabase/.temp/pooler-url",
    "tests/test_example.py",
    "tests/vercel/build_check.py",
    "tests/vercel/node_modules/vercel/package.json",
    "bench/throughput.py",
    "bench/results/throughput.json",
    ".ci/run",
    "test-artifacts/demo-completed.png",
    ".venv/bin/python",
    "node_modules/left-pad/index.js",
    "public/node_modules/@supabase/supabase-js/dist/umd/supabase.js",  # ai-jobs dev serves it locally
    "shared/src/ai_jobs/__pycache__/cli.cpython-312.pyc",
    "shared/src/ai_jobs.egg-info/PKG-INFO",
    ".pytest_cache/README.md",
    ".hypothesis/constants/abc",
    ".python-version",
    "uv.lock",
    "Makefile",
]
# Must be uploaded besides every tracked file under these folders: the
# function's code, the static files, and what building the wheel reads.
KEPT_FOLDERS = ("functions", "shared", "public", "supabase")
KEPT_FILES = ["pyproject.toml", "vercel.json", "README.md"]


def tracked(*folders: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", *folders], check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def kept_paths() -> list[str]:
    paths = tracked(*KEPT_FOLDERS) + KEPT_FILES
    assert any(p.startswith("functions/") for p in paths) and any(p.startswith("shared/src/") for p in paths)
    return paths


def make_tree(dest: Path, paths: list[str]) -> None:
    """A project tree holding `paths`: real files where the repo has them."""
    for rel in paths:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = ROOT / rel
        if source.is_file():
            shutil.copy2(source, target)
        else:
            target.write_text("SECRET=fake\n" if ".env" in rel else "fake\n")


def git_ignored(repo: Path, paths: list[str]) -> set[str]:
    """The subset of `paths` git ignores in `repo` (--no-index: tracked or not)."""
    proc = subprocess.run(["git", "-C", str(repo), "check-ignore", "--no-index", "--stdin"],
                          input="\n".join(paths) + "\n", capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr  # 1: nothing ignored
    return set(proc.stdout.splitlines())


def test_vercelignore_rules_by_git_semantics(tmp_path: Path) -> None:
    """.vercelignore, read by git as an ignore file of the same syntax."""
    kept = kept_paths()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy2(ROOT / ".vercelignore", tmp_path / ".gitignore")
    make_tree(tmp_path, EXCLUDED + kept)

    ignored = git_ignored(tmp_path, EXCLUDED + kept)

    assert sorted(set(EXCLUDED) - ignored) == []
    assert sorted(ignored & set(kept)) == []


def upload(project: Path) -> dict:
    proc = subprocess.run(["node", str(CLI_DIR / "upload_files.mjs"), str(project)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


needs_cli = pytest.mark.skipif(not (CLI_DIR / "node_modules" / "vercel").is_dir() or shutil.which("node") is None,
                               reason="Vercel CLI not installed (make vercel-build installs it in tests/vercel)")


@needs_cli
def test_vercel_cli_uploads_no_secrets_data_or_tests(tmp_path: Path) -> None:
    """The installed CLI's own upload list for a tree with secrets and data."""
    kept = kept_paths()
    make_tree(tmp_path, EXCLUDED + kept)
    shutil.copy2(ROOT / ".vercelignore", tmp_path / ".vercelignore")

    files = set(upload(tmp_path)["files"])

    assert sorted(set(EXCLUDED) & files) == []
    assert sorted(set(kept) - files) == []


@needs_cli
def test_vercel_cli_defaults_alone_would_upload_env_and_data(tmp_path: Path) -> None:
    """Why .vercelignore exists: without it the CLI uploads .env and .ai-jobs."""
    make_tree(tmp_path, EXCLUDED + KEPT_FILES)

    files = set(upload(tmp_path)["files"])

    assert {".env", ".ai-jobs/pgdata/PG_VERSION", "tests/test_example.py", "bench/throughput.py"} <= files
    assert ".env.local" not in files  # one of the CLI's defaults


def test_gitignore_covers_vercel_builder_output() -> None:
    """`vercel build` writes .python-version, uv.lock and .vercel/ into the
    project; `make vercel-build` installs the CLI in tests/vercel/node_modules."""
    must_ignore = [".python-version", "uv.lock", ".vercel/project.json", ".vercel/output/config.json",
                   ".vercel/deploy-check/functions/app.py", "tests/vercel/node_modules/vercel/package.json",
                   ".env", ".env.local", ".ai-jobs/pgdata/PG_VERSION"]
    must_track = ["tests/vercel/package.json", "tests/vercel/package-lock.json", "tests/vercel/build_check.py",
                  "tests/vercel/upload_files.mjs", ".vercelignore", ".env.example", "vercel.json"]

    ignored = git_ignored(ROOT, must_ignore + must_track)

    assert sorted(set(must_ignore) - ignored) == []
    assert sorted(ignored & set(must_track)) == []


def test_vercel_json_function_is_the_pyproject_entrypoint() -> None:
    """vercel.json `functions` keys the entrypoint's file: if they drift apart,
    Vercel's Python builder silently drops maxDuration (no error)."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["vercel"]["entrypoint"]
    module = entry.partition(":")[0]
    vercel_json = json.loads((ROOT / "vercel.json").read_text())

    assert list(vercel_json["functions"]) == [module.replace(".", "/") + ".py"]
    assert 10 <= vercel_json["functions"][module.replace(".", "/") + ".py"]["maxDuration"] <= 800
