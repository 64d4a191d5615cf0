"""pytest support: one test per check, from one line per model.

    from auto_hookpoint.testing import auto_hook_cases

    @pytest.mark.parametrize("case", auto_hook_cases(MyModel, {"x": x}, {"cfg": cfg}))
    def test_my_model_is_hooked(case):
        case.check()

Each case is one check, with the check's name as its pytest id, so a failure shows by
name. The checks run once per model (on the first case), not once per case.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from auto_hookpoint.check import (
    CHECK_NAMES,
    AutoHookReport,
    Status,
    check_arguments,
    check_auto_hook,
)


@dataclass(frozen=True)
class AutoHookCase:
    check_name: str
    report: functools.partial[AutoHookReport]  # computes (once) and returns the report

    def check(self) -> None:
        """Fail the test if this check failed; skip it if it did not apply."""
        report = self.report()
        try:
            result = report[self.check_name]
        except KeyError:  # the model could not even be run: every case fails with why
            raise AssertionError(str(report)) from None
        if result.status is Status.SKIP:
            pytest.skip(result.summary)
        assert result.passed, f"{result.name}: {result.summary}\n{result.details}\n\n{report}"


def auto_hook_cases(
    model: Any,
    input_kwargs: Mapping[str, Any] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[Any]:
    """``pytest.param``s, one per check of :func:`check_auto_hook`, ids = check names."""
    check_arguments(model, input_kwargs, init_kwargs, **options)  # wrong ones fail collection
    report = functools.partial(_cached_report, _Key(model, input_kwargs, init_kwargs, options))
    return [pytest.param(AutoHookCase(name, report), id=name) for name in CHECK_NAMES]


@dataclass(frozen=True, eq=False)
class _Key:
    model: Any
    input_kwargs: Mapping[str, Any] | None
    init_kwargs: Mapping[str, Any] | None
    options: dict[str, Any]


@functools.cache
def _cached_report(key: _Key) -> AutoHookReport:
    return check_auto_hook(key.model, key.input_kwargs, key.init_kwargs, **key.options)
