"""The local Supabase edge `ai-jobs dev` runs next to the API (development only).

- :mod:`ai_jobs.localstack.edge`: Realtime (Postgres Changes on public.ai_jobs)
  and a PostgREST-shaped read, speaking what supabase-js 2.119.1 speaks.
- :mod:`ai_jobs.localstack.feed`: the dev-only trigger + NOTIFY change feed it
  reads (installed by `ai-jobs dev` on its own database, never a migration).
- Below: what the dev server adds to the HTTP app: ``/config.js`` pointing the
  demo console at the edge (token auth, Realtime) and ``/vendor/supabase.js``
  served from the checkout's ``public/node_modules`` (no CDN, works offline).

Needs aiohttp (the ``embedded`` and ``dev`` extras); never imported on Vercel
or in a request path of the deployed app.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from ai_jobs.resources import public_dir

if TYPE_CHECKING:
    from ai_jobs.http.app import App
    from ai_jobs.http.io import ApiRequest

SUPABASE_JS = Path("node_modules") / "@supabase" / "supabase-js" / "dist" / "umd" / "supabase.js"
MISSING_SUPABASE_JS = (
    "supabase-js is not installed (public/node_modules): run `make dev` with npm available, "
    "or `npm ci` in public/. The demo console polls until then."
)


def supabase_js_path() -> Path | None:
    """supabase-js's UMD build from the checkout's public/node_modules, if installed."""
    path = public_dir() / SUPABASE_JS
    return path if path.is_file() else None


def mint_anon_key(jwt_secret: str, *, years: int = 10) -> str:
    """A dev anon key: an HS256 JWT with role anon, signed with the dev secret
    (a Supabase project's legacy anon key has the same shape)."""
    now = int(time.time())
    claims = {"iss": "supabase", "role": "anon", "iat": now, "exp": now + years * 365 * 24 * 3600}
    return jwt.encode(claims, jwt_secret, algorithm="HS256")


def mint_service_key(jwt_secret: str, *, years: int = 10) -> str:
    """A dev service-role key for the local edge (the worker publishes live output
    with it, as it would with a project's service key)."""
    now = int(time.time())
    claims = {"iss": "supabase", "role": "service_role", "iat": now, "exp": now + years * 365 * 24 * 3600}
    return jwt.encode(claims, jwt_secret, algorithm="HS256")


def dev_config(edge_url: str | None, anon_key: str, *, supabase_js: bool,
               status_broadcast: bool = False) -> dict[str, Any]:
    """What `ai-jobs dev` serves as window.AI_JOBS_CONFIG: the edge for Realtime when
    supabase-js is installed, else token + polling with a note saying why. With
    `status_broadcast` the console follows job status over Broadcast (statusVia)."""
    if edge_url and supabase_js:
        return {"supabaseUrl": edge_url, "supabaseAnonKey": anon_key, "supabaseJsUrl": "/vendor/supabase.js",
                "auth": "token", **({"statusVia": "broadcast"} if status_broadcast else {})}
    return {"supabaseUrl": "", "supabaseAnonKey": "", "auth": "token",
            "notice": MISSING_SUPABASE_JS if not supabase_js else "the local Supabase edge is off"}


def config_js(config: dict[str, Any]) -> str:
    return ("// Served by `ai-jobs dev` (development only): the local Supabase edge.\n"
            "// public/config.js is what a deployment (and `ai-jobs serve`) serves.\n"
            f"window.AI_JOBS_CONFIG = {json.dumps(config, indent=2)};\n")


def install_dev_routes(app: App, config: dict[str, Any]) -> None:
    """Add /config.js and /vendor/supabase.js to the app (werkzeug routes them ahead of public/'s catch-all)."""
    from werkzeug.utils import send_file
    from werkzeug.wrappers import Response

    body = config_js(config)

    def dev_config_js(request: ApiRequest) -> Response:
        return Response(body, mimetype="text/javascript", headers={"Cache-Control": "no-store"})

    def vendor_supabase_js(request: ApiRequest) -> Response:
        path = supabase_js_path()
        if path is None:
            return Response(f"// {MISSING_SUPABASE_JS}\n", status=404, mimetype="text/javascript")
        return send_file(path, request.environ, mimetype="text/javascript", max_age=0)

    app.add_route("/config.js", ["GET"], dev_config_js, endpoint="dev config.js")
    app.add_route("/vendor/supabase.js", ["GET"], vendor_supabase_js, endpoint="dev supabase.js")
