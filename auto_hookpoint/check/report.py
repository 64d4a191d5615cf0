"""The report of check_auto_hook: one named result per check, as a table or as data."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from auto_hookpoint.errors import AutoHookError


class Status(enum.Enum):
    PASS = "pass"
    NOTE = "note"  # passed, with something worth knowing (a site that cannot fire, ...)
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class CheckResult:
    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status is not Status.FAIL


@dataclass
class AutoHookReport:
    """What check_auto_hook found. ``ok`` is True when no check failed."""

    model: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no check named {name!r}; checks: {[r.name for r in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "results": [{**asdict(r), "status": r.status.value} for r in self.results],
        }

    def __getattr__(self, name: str) -> Any:
        # Auto_HookPoint 0.6's check_auto_hook returned the hooked model; code that uses
        # the result as one gets told what changed instead of a bare AttributeError.
        if name.startswith("__") or name in ("model", "results"):
            raise AttributeError(name)
        raise AttributeError(
            f"'AutoHookReport' object has no attribute {name!r}: check_auto_hook returns "
            "its report (Auto_HookPoint 0.6 returned the hooked model). Hook the model "
            "itself with auto_hook(model) or auto_hook(ModelClass(**init_kwargs))."
        )

    def __str__(self) -> str:
        width = max(len(r.name) for r in self.results)
        verdict = "all checks passed" if self.ok else f"{len(self.failures)} check(s) FAILED"
        lines = [f"check_auto_hook({self.model}): {verdict}"]
        for r in self.results:
            lines.append(f"  {r.status.value.upper():4s}  {r.name.ljust(width)}  {r.summary}")
        return "\n".join(lines)


class AutoHookCheckError(AutoHookError, AssertionError):
    """Raised by ``check_auto_hook(..., strict=True)``; the message is the report's table.

    An AssertionError, so that pytest shows it as a test failure.
    """

    def __init__(self, report: AutoHookReport):
        super().__init__(str(report))
        self.report = report
