"""public/package.json: the browser client as the npm package `ai-jobs-client`.
`npm pack` must ship the module, the React entry and both declaration files (and
nothing of the demo console); installed from that tarball, `import "ai-jobs-client"`
runs in Node and both entries resolve with their types through `exports` in tsc
(bundler and nodenext resolution). Offline: the package has no dependencies."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PUBLIC = REPO / "public"
TSC = Path(__file__).resolve().parent / "js" / "node_modules" / ".bin" / "tsc"
SHIPPED = {"package.json", "ai-jobs.js", "ai-jobs.d.ts", "ai-jobs-react.js", "ai-jobs-react.d.ts"}

USAGE = """import { createAiJobsClient, AiJobsError, type Job, type WatchMode } from "ai-jobs-client";
import { useAiJob, type UseAiJob } from "ai-jobs-client/react";

const client = createAiJobsClient({ baseUrl: "https://api.example.com" });
const stop: () => void = client.watchJob("00000000-0000-0000-0000-000000000000", {
  onUpdate: (job: Job) => console.log(job.status),
  onGone: (id: string) => console.log(id),
  onMode: (mode: WatchMode) => console.log(mode),
});
const hook: (id: string) => UseAiJob = (id) => useAiJob(id, { client });
console.log(stop, hook, new AiJobsError(500));
"""


def npm() -> str:
    path = shutil.which("npm")
    if path is None:
        pytest.skip("npm not installed")
    return path


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack")
    packed = subprocess.run([npm(), "pack", "--json", "--pack-destination", str(out)], cwd=PUBLIC,
                            capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    info = json.loads(packed.stdout)[0]
    assert info["name"] == "ai-jobs-client"
    assert {f["path"] for f in info["files"]} == SHIPPED
    return out / info["filename"]


def test_manifest_exports_types_and_supabase_version() -> None:
    manifest = json.loads((PUBLIC / "package.json").read_text())
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./ai-jobs.d.ts", "default": "./ai-jobs.js"}
    assert manifest["exports"]["./react"] == {"types": "./ai-jobs-react.d.ts", "default": "./ai-jobs-react.js"}
    assert manifest["peerDependenciesMeta"] == {"@supabase/supabase-js": {"optional": True}, "react": {"optional": True}}
    # make dev serves public/node_modules/@supabase/supabase-js/dist/umd/supabase.js: npm ci must install this exact one
    assert manifest["devDependencies"] == {"@supabase/supabase-js": "2.119.1"}
    lock = json.loads((PUBLIC / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@supabase/supabase-js"]["version"] == "2.119.1"


def test_installed_package_imports_and_type_checks(tarball: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "app", "private": True, "type": "module"}))
    installed = subprocess.run([npm(), "install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", str(tarball)],
                               cwd=app, capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    assert not (app / "node_modules" / "ai-jobs-client" / "demo.js").exists()
    run = subprocess.run(
        ["node", "--input-type=module", "-e",
         "import * as m from 'ai-jobs-client'; console.log(JSON.stringify(Object.keys(m).sort()));"],
        cwd=app, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert {"createAiJobsClient", "watchJob", "AiJobsError", "configure", "JOB_COLUMNS"} <= set(json.loads(run.stdout))
    (app / "usage.ts").write_text(USAGE)
    for resolution in ("bundler", "nodenext"):
        module = "esnext" if resolution == "bundler" else "nodenext"
        checked = subprocess.run(
            [str(TSC), "--noEmit", "--strict", "--target", "es2022", "--module", module, "--moduleResolution", resolution,
             "--skipLibCheck", "false", "usage.ts"],
            cwd=app, capture_output=True, text=True, timeout=120,
        )
        assert checked.returncode == 0, f"{resolution}: {checked.stdout}{checked.stderr}"
