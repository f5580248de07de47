"""The HTTP API: the Flask app (app.py), its thin handlers (handlers.py) and
what they call (operations.py). functions/app.py exposes the app to Vercel."""
