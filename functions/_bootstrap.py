"""Make `ai_jobs` importable when the project is not pip-installed (a Vercel
bundle ships shared/ beside functions/)."""

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parent.parent / "shared" / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
