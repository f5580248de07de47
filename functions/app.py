"""The Vercel entrypoint (pyproject.toml's [tool.vercel] entrypoint): the
package's Flask app, `ai_jobs.http.app.create_app()`. The routes and handlers
live in the package so `ai-jobs serve` from a wheel runs the same app."""

from __future__ import annotations

from functions import _bootstrap  # noqa: F401 - puts shared/src on sys.path when not installed

from ai_jobs.http.app import create_app

app = create_app()
