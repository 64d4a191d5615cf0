"""The documentation site (mkdocs.yml, docs/): it builds in strict mode, every Python
example on its pages runs as written, and its catalogues are complete.

- Each page's ```python blocks run in order, in one namespace per page, in a temporary
  folder. A block may opt out only where it needs a GPU or a second machine, with
  ``<!-- docs-test: skip (needs ...) -->`` on the line before it, saying which.
- ``torch.compile`` runs with dynamo's ``eager`` backend here: dynamo traces the hooked
  model exactly as for inductor (graph breaks, guards, recompiles), without inductor's
  code generation, which takes minutes on this CPU (``tests/test_compile.py`` covers
  inductor, marked slow).
- Every exception class of the package has an entry in docs/errors.md, every public
  name one in docs/reference.md, and every page is in the site's navigation.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import auto_hookpoint

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(
    r"^(?P<skip>[ \t]*<!-- docs-test: skip \((?P<reason>[^)]*)\) -->\n)?"
    r"(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)
ALLOWED_SKIPS = re.compile(r"\bGPU\b|second machine")


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) for each ```python block of ``page``."""
    text = page.read_text()
    return [
        (
            text.count("\n", 0, m.start("code")) + 1,
            textwrap.dedent(m["code"]),
            m["reason"],
        )
        for m in FENCE.finditer(text)
    ]


def page_param(page: Path) -> Any:
    """A page whose examples use sae_lens is marked so (it skips where sae_lens is not
    installed: under TransformerLens 4, see tests/conftest.py)."""
    uses_sae_lens = any(
        re.search(r"^\s*(from|import) sae_lens\b", code, re.M) for _, code, _ in python_blocks(page)
    )
    return pytest.param(page, marks=[pytest.mark.sae_lens] if uses_sae_lens else [], id=page.name)


PAGES_WITH_CODE = [page_param(page) for page in PAGES if python_blocks(page)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_every_python_example_on_the_page_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # examples write files
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    # A module of its own, as a script would be (torch.compile finds globals through it).
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for line, code, skip in python_blocks(page):
        if skip is not None:
            assert ALLOWED_SKIPS.search(skip), (
                f"{page.name}:{line} opts out ({skip!r}); only an example that needs a GPU "
                "or a second machine may, and it says so"
            )
            continue
        exec(compile(code, f"{page.name}:{line}", "exec"), module.__dict__)  # noqa: S102


def test_the_block_reader_sees_indented_blocks_and_skip_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\na = 1\n```\n- item\n\n    ```python\n    b = 2\n    ```\n"
        "<!-- docs-test: skip (needs a GPU) -->\n```python\nc = 3\n```\n```bash\nd\n```\n"
    )
    assert python_blocks(page) == [(3, "a = 1\n", None), (8, "b = 2\n", None),
                                   (12, "c = 3\n", "needs a GPU")]  # fmt: skip


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    needed = ("mkdocs", "material", "mkdocstrings")
    missing = [name for name in needed if not importlib.util.find_spec(name)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[docs]' (CI does)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "reference" / "index.html").exists()


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(auto_hookpoint.__path__, "auto_hookpoint."):
        module = importlib.import_module(info.name)
        for name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[name] = value
    return found


def test_every_exception_class_has_an_entry_in_the_error_catalogue() -> None:
    catalogue = (DOCS / "errors.md").read_text()
    entries = set(re.findall(r"^### `(\w+)`", catalogue, re.M))
    classes = _exception_classes()
    assert "UnknownHookNameError" in classes and "StopForward" in classes  # the scan works
    missing = sorted(set(classes) - entries)
    assert not missing, f"add `### Name` (what it means, the fix) to docs/errors.md: {missing}"
    stale = sorted(entries - set(classes))
    assert not stale, f"docs/errors.md describes classes that no longer exist: {stale}"


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = (DOCS / "reference.md").read_text()
    documented = set(re.findall(r"^::: auto_hookpoint\.(\w+)$", reference, re.M))
    missing = sorted(set(auto_hookpoint.__all__) - documented)
    assert not missing, f"add `::: auto_hookpoint.NAME` to docs/reference.md for {missing}"


def test_every_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    in_nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", config, re.M))
    assert in_nav == {page.name for page in PAGES}
