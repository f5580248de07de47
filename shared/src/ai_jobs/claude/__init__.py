"""Claude integration. Nothing here imports `anthropic` at module import time:
the SDK (about 0.9 s to import) is loaded on the worker path, on first use."""
