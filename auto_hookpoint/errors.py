"""The errors auto_hookpoint raises on wrong use; each message names the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AutoHookError(Exception):
    """Base class of auto_hookpoint's own errors."""


class UnknownHookNameError(AutoHookError, KeyError):
    """A hook name that is not a site of the model. A KeyError, as TransformerLens raises."""

    def __init__(self, name: object, known: Iterable[str]):
        known = list(known)
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.6)
        hint = (
            "Closest names: " + ", ".join(repr(c) for c in close) + "."
            if close
            else f"Names look like {known[1] if len(known) > 1 else 'hook_point'!r}."
        )
        message = (
            f"{name!r} is not a hook site of this model ({len(known)} sites; "
            f"a module's output is '<module path>.hook_point'). {hint} "
            "List them all with `model.hook_dict.keys()`."
        )
        super().__init__(message)
        self.name = name
        self.closest = close

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


class HookFunctionError(AutoHookError, RuntimeError):
    """A user hook raised; the message names the hook and the site it was attached to.

    The hook's own exception is the ``__cause__``.
    """


class HookResultError(AutoHookError, ValueError):
    """A hook returned something other than None or a tensor like the one it was given
    (same shape, dtype and device); the message names the hook, the site, what came back
    and what was expected."""


class BackwardHookLostError(AutoHookError, RuntimeError):
    """Raised in the backward pass: a site's backward hooks could not see the gradient
    there (its tensor is a view that the model changed in place afterwards)."""


class StructureChangedError(AutoHookError, RuntimeError):
    """The model's modules or parameters changed since auto_hook found its sites, in a
    way the sites cannot follow; ``model.setup()`` finds them again."""


class SiteNeverFiredError(AutoHookError, RuntimeError):
    """run_until's split site did not fire before the forward ended."""


class ResumeError(AutoHookError, RuntimeError):
    """resume_from cannot resume this model from this site, exactly; the message says why."""


class EarlyOutputError(AutoHookError, ValueError):
    """An EarlyOutput file that is corrupt, or does not belong to this model."""


class ReadOnlySiteError(AutoHookError, RuntimeError):
    """A hook replaced or edited, in place, the tensor of a site that can only be read."""


class NameClashError(AutoHookError, TypeError):
    """The model has its own attribute under a name auto_hook must store on a hooked
    model (``hook_dict``, ``mod_dict``, ...); nothing was changed. Rename the model's."""


class NameClashWarning(UserWarning):
    """The model has its own attribute under a name a hooked model gains (``setup``,
    ``hooks``, ...): the model's own is kept; the message says how to reach ours."""


class SplitServerError(AutoHookError, RuntimeError):
    """The split server refused a request (4xx) or failed computing it (5xx).

    ``status`` is the HTTP status, ``kind`` the server's short name for the problem
    (``"wrong_model"``, ``"too_large"``, ...); the message is the server's explanation.
    """

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status = status
        self.kind = kind


class SplitConnectionError(AutoHookError, ConnectionError):
    """The split server could not be reached, or did not answer in time."""


class CompiledBeforeHookingError(AutoHookError, RuntimeError):
    """A submodule was compiled before auto_hook, so its compiled code would not notice
    hooks added later; the message names it and says what to do."""


# What to do when sae_lens is missing (it is the optional `sae` extra).
SAE_LENS_MISSING = (
    "pip install 'auto_hookpoint[sae]' (sae_lens 6 and datasets; sae_lens 6 requires "
    "TransformerLens 3, so this replaces a TransformerLens 4)"
)
