"""check_auto_hook: prove, in your own tests, that a model is fully and faithfully hooked.

>>> report = check_auto_hook(MyModel, input_kwargs={"x": x}, init_kwargs={"cfg": cfg})
>>> assert report.ok, report
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from auto_hookpoint.check.checks import CHECK_NAMES, ModelRaises, all_checks, make_baseline
from auto_hookpoint.check.report import (
    AutoHookCheckError,
    AutoHookReport,
    CheckResult,
    Status,
)
from auto_hookpoint.check.subject import make_subject

__all__ = [
    "CHECK_NAMES",
    "AutoHookCheckError",
    "AutoHookReport",
    "CheckResult",
    "Status",
    "check_auto_hook",
]


def check_auto_hook(
    model: Any,
    input_kwargs: Mapping[str, Any] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
    *,
    input_args: Sequence[Any] = (),
    strict: bool = False,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    edit_sample: int = 8,
    seed: int = 0,
) -> AutoHookReport:
    """Run every check on ``model`` (an ``nn.Module`` class, built with ``init_kwargs``,
    or an instance, which is deep-copied and never changed) with the given inputs.

    Checks: the hooked output is bit-identical; a copying hook on every site keeps it
    so; every site fires as often as its module runs (sites that cannot fire are noted,
    with why); run_with_cache returns every firing site with its shape; an edit at each
    of ``edit_sample`` sites changes the output; backward hooks fire on every site the
    loss depends on (``loss_fn(output)``, by default the mean square of the output's
    floating tensors); unwrap() restores the model; ``.to(float64)`` and deepcopy work;
    ``@auto_hook`` on the class agrees with ``auto_hook(instance)``.

    Forwards run with the torch RNG seeded by ``seed`` (and restored afterwards), so
    dropout in training mode repeats. Returns the report; with ``strict=True`` raises
    :class:`AutoHookCheckError` (an AssertionError whose message is the report) if any
    check failed.
    """
    check_arguments(model, input_kwargs, init_kwargs, input_args, edit_sample, loss_fn)
    subject = make_subject(
        model, tuple(input_args), input_kwargs or {}, init_kwargs or {}, seed, loss_fn
    )
    results: list[CheckResult] = []
    try:
        baseline = make_baseline(subject)
    except ModelRaises as error:
        why = _describe(error.__cause__)  # type: ignore[arg-type]
        results.append(
            CheckResult(
                "runs",
                Status.FAIL,
                f"the un-hooked model raises on these inputs, so nothing can be checked; "
                f"fix the inputs (input_args=, input_kwargs=): {why}",
            )  # fmt: skip
        )
    except Exception as error:
        results.append(
            CheckResult(
                "runs", Status.FAIL, f"the model could not be run and hooked: {_describe(error)}"
            )
        )
    else:
        for name, check in zip(CHECK_NAMES, all_checks(edit_sample), strict=True):
            try:
                results.append(check(subject, baseline))
            except Exception as error:
                results.append(CheckResult(name, Status.FAIL, f"raised {_describe(error)}"))
    report = AutoHookReport(subject.label, results)
    if strict and not report.ok:
        raise AutoHookCheckError(report)
    return report


def check_arguments(
    model: Any,
    input_kwargs: Any = None,
    init_kwargs: Any = None,
    input_args: Any = (),
    edit_sample: Any = 8,
    loss_fn: Any = None,
    **options: Any,
) -> None:
    """A TypeError or ValueError naming the argument and what it takes."""
    unknown = set(options) - {"strict", "seed"}
    if unknown:
        raise TypeError(
            f"check_auto_hook has no option {sorted(unknown)[0]!r}; its options are input_args, "
            "strict, loss_fn, edit_sample and seed"
        )
    if not isinstance(model, nn.Module) and not (
        isinstance(model, type) and issubclass(model, nn.Module)
    ):
        raise TypeError(
            f"check_auto_hook takes an nn.Module class or instance, not {type(model).__name__}"
        )
    for name, value in (("input_kwargs", input_kwargs), ("init_kwargs", init_kwargs)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(
                f"{name} is a dict of keyword arguments, e.g. {{'x': x}}; "
                f"got {type(value).__name__}"
            )
    if not isinstance(input_args, (tuple, list)):
        raise TypeError(
            "input_args is a tuple or list of positional inputs, e.g. input_args=(x,); got "
            f"a {type(input_args).__name__}"
        )
    if isinstance(edit_sample, bool) or not isinstance(edit_sample, int) or edit_sample < 1:
        raise ValueError(f"edit_sample (sites to edit) is a whole number >= 1, not {edit_sample!r}")
    if loss_fn is not None and not callable(loss_fn):
        what = type(loss_fn).__name__
        raise TypeError(f"loss_fn is a function of the model's output, not a {what}")


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
