"""The README's Python examples run as written, in order, as a reader would paste them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_examples_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the examples write files
    assert len(BLOCKS) >= 4
    namespace: dict[str, object] = {}
    for index, block in enumerate(BLOCKS):
        if "LanguageModelSAERunnerConfig(..." in block:
            continue  # an outline of sae_lens' own API; tests/test_sae_lens.py runs it in full
        exec(compile(block, f"README.md block {index}", "exec"), namespace)  # noqa: S102
    # The block defining a pytest test through auto_hook_cases: run its cases too.
    test = namespace["test_two_layer_is_hooked"]
    cases = test.pytestmark[0].args[1]  # type: ignore[attr-defined]
    assert len(cases) == 10
    for param in cases:
        param.values[0].check()
