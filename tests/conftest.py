"""Test-session setup shared by every test file."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

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

TL_MAJOR = int(version("transformer_lens").split(".")[0])
HAS_SAE_LENS = importlib.util.find_spec("sae_lens") is not None


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own plugin reads its seed option
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tl3: needs TransformerLens 3 (HookedTransformer)")
    config.addinivalue_line("markers", "sae_lens: needs sae_lens (so TransformerLens 3)")
    # One seed per session (xdist workers get the controller's), shown in the header.
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.randrange(2**32))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TL_MAJOR >= 4 and item.get_closest_marker("tl3"):
            item.add_marker(pytest.mark.skip(reason="HookedTransformer is gone in TL 4"))
        if not HAS_SAE_LENS and item.get_closest_marker("sae_lens"):
            item.add_marker(pytest.mark.skip(reason="sae_lens is not installed"))


# Generated tests (hypothesis): "ci" by default, 300 examples per property (~20 s alone);
# more on demand with `pytest --hypothesis-profile=thorough` (or AUTO_HOOKPOINT_HYPOTHESIS=
# thorough). Each session draws a seed, shown in the header and after a failure, which
# reruns it exactly (`--hypothesis-seed=N`); a failure also prints the falsifying example
# and a blob for @reproduce_failure. No example database, and hypothesis' own caches go
# to the temporary folder: the suite writes nothing into the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "auto_hookpoint-hypothesis")

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("ci"), max_examples=5000)
settings.load_profile(os.environ.get("AUTO_HOOKPOINT_HYPOTHESIS", "ci"))


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed")
    return f"generated tests: hypothesis seed {seed} (rerun with --hypothesis-seed={seed})"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    seed = config.getoption("hypothesis_seed")
    generated = sys.modules.get("test_generated")
    concurrency = sys.modules.get("test_concurrency")
    lines = []
    if generated is not None and any(generated.FIGURES.values()):
        lines.append(
            f"generated models tried: {generated.FIGURES['models']}, faults injected: "
            f"{generated.FIGURES['faults']}"
        )
    if concurrency is not None and concurrency.FIGURES["calls"]:
        lines.append(f"concurrent calls checked against serial ones: {concurrency.FIGURES}")
    if exitstatus != 0:
        lines.append(f"to rerun the generated tests exactly: --hypothesis-seed={seed}")
    for line in lines:
        terminalreporter.write_line(line)
