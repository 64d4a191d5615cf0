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

# Generated tests (hypothesis): "ci" by default, hundreds of examples in about a minute;
# more on demand with `pytest --hypothesis-profile=thorough` (or AUTO_HOOKPOINT_HYPOTHESIS=
# thorough). Each session draws a seed, shown in the header and after a failure, which
# reruns it exactly (`--hypothesis-seed=N`); a failure also prints the falsifying example
# and a blob for @reproduce_failure. No example database, and hypothesis' own caches go
# to the temporary folder: the suite writes nothing into the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "auto_hookpoint-hypothesis")

settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("ci"), max_examples=5000)
settings.load_profile(os.environ.get("AUTO_HOOKPOINT_HYPOTHESIS", "ci"))


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.randrange(2**32))


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
