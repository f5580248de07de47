"""Vercel HTTP handlers. Each module exposes `handler(request)`; app.py composes them."""
