"""Test-session setup shared by every test file."""

from __future__ import annotations

import os
from pathlib import Path

# Subprocesses started by tests (examples, the CLI, a second process resuming a split)
# import auto_hookpoint from this checkout, whatever the installed copy points at.
_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach for a hub
