"""Where the SQL migrations and the browser files are: the checkout's own
supabase/ and public/ when running from a clone (edits apply at once, the
Supabase CLI reads the same files), else the copies shipped in the wheel."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent  # <root>/shared/src/ai_jobs in a checkout


def checkout_root() -> Path | None:
    """The repository root when this package is imported from a clone (editable
    install, PYTHONPATH=shared/src, a Vercel bundle), else None."""
    src = _PACKAGE.parent
    root = src.parent.parent
    if src.name == "src" and src.parent.name == "shared" and (root / "pyproject.toml").is_file():
        return root
    return None


def _resolve(folder: str, packaged: str) -> Path:
    root = checkout_root()
    if root is not None and (root / folder).is_dir():
        return root / folder
    return _PACKAGE / packaged


def supabase_dir() -> Path:
    """supabase/ (migrations, local stand-in); AI_JOBS_SUPABASE_DIR overrides."""
    override = os.environ.get("AI_JOBS_SUPABASE_DIR")
    if override:
        return Path(override)
    return _resolve("supabase", "_supabase")


def public_dir() -> Path:
    """public/ (the browser client and the demo page)."""
    return _resolve("public", "_public")
