"""The HTTP API: the WSGI app (app.py, werkzeug), its thin handlers (handlers.py) and
what they call (operations.py). functions/app.py exposes the app to Vercel."""
