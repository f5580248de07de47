"""Vercel entrypoint: app.py exposes the package's Flask app (ai_jobs.http.app)."""
