"""The Vercel entrypoint (pyproject.toml's [tool.vercel] entrypoint): the
package's WSGI app, `ai_jobs.http.app.create_app()` (werkzeug, no Flask). The
routes and handlers live in the package so `ai-jobs serve` from a wheel runs the same app.

`api` is the same app as a functions-framework target:
`functions-framework --target api --source functions/app.py`.
"""

from __future__ import annotations

try:
    from functions import _bootstrap  # noqa: F401 - puts shared/src on sys.path when not installed
except ModuleNotFoundError:  # functions-framework loads this file by path, with functions/ on sys.path
    import _bootstrap  # type: ignore[no-redef]  # noqa: F401

from typing import TYPE_CHECKING

from ai_jobs.http.app import create_app

if TYPE_CHECKING:
    from werkzeug.wrappers import Request, Response

app = create_app()


def api(request: Request) -> Response:
    """functions-framework target (it passes a flask.Request, a werkzeug Request):
    hand the request's WSGI environ to `app` as is (path, headers and body
    untouched), so routing and errors are the same."""
    from werkzeug.wrappers import Response

    return Response.from_app(app, request.environ)
