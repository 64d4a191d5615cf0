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

# One torch thread per test process (and its subprocesses): on two cores, shared with
# a second pytest worker or other jobs, torch's default of a thread per core makes
# them spin against each other, ten times slower for these small models.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads on import)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
