"""Vercel entrypoint: app.py exposes the package's WSGI app (ai_jobs.http.app)."""
