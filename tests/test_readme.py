"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(block: str) -> None:
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    # A block that defines a pytest test through auto_hook_cases: run its cases too.
    test = namespace.get("test_two_layer_is_hooked")
    if callable(test):
        for param in test.pytestmark[0].args[1]:  # type: ignore[attr-defined]
            param.values[0].check()
