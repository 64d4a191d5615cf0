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

# What the installed stack lacks decides what runs: TransformerLens 4 removed
# HookedTransformer (the parity oracle, marked `tl3`), and sae_lens 6 needs
# TransformerLens 3 (tests marked `sae_lens`). Under TransformerLens 4 the rest of the
# suite (the core, observers, split, and the adapter on its own) runs as usual.
import importlib.util  # noqa: E402
from importlib.metadata import version  # noqa: E402

import pytest  # noqa: E402

TL_MAJOR = int(version("transformer_lens").split(".")[0])
HAS_SAE_LENS = importlib.util.find_spec("sae_lens") is not None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tl3: needs TransformerLens 3 (HookedTransformer)")
    config.addinivalue_line("markers", "sae_lens: needs sae_lens (so TransformerLens 3)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TL_MAJOR >= 4 and item.get_closest_marker("tl3"):
            item.add_marker(pytest.mark.skip(reason="HookedTransformer is gone in TL 4"))
        if not HAS_SAE_LENS and item.get_closest_marker("sae_lens"):
            item.add_marker(pytest.mark.skip(reason="sae_lens is not installed"))
