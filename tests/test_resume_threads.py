"""resume_from while another thread uses the same model (found by the split server's tests).

resume_from's stand-in blocks answer only in the thread (or task) that resumes: a plain
forward in another thread at that moment computes every block itself, and a second
resume at that moment resumes too, each from its own activation.

Each test holds a resume in the middle of its forward (a hook of that thread's own,
after the split, waits on an event) while the other thread runs: deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from hf_models import ARCHS

from auto_hookpoint import ResumeError, auto_hook

SPLIT, LATER = "model.layers.0.hook_point", "model.layers.1.hook_point"


@contextmanager
def resume_held_open(model: Any, inputs: dict[str, Any]) -> Iterator[Callable[[], None]]:
    """A resume from SPLIT running in another thread, paused inside its forward."""
    with torch.no_grad():
        early = model.run_until(SPLIT, **inputs)
    inside, release = threading.Event(), threading.Event()

    def wait_here(tensor: torch.Tensor, hook: Any) -> None:
        inside.set()
        release.wait(30)

    def resume() -> None:
        try:
            with torch.no_grad(), model.hooks(fwd_hooks=[(LATER, wait_here)]):
                model.resume_from(SPLIT, early, **inputs)
        except ResumeError:  # disturbed by the other thread too; what it saw is the test
            pass

    thread = threading.Thread(target=resume)
    thread.start()
    try:
        assert inside.wait(30)
        yield release.set
    finally:
        release.set()
        thread.join(30)


def _llama() -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(0)
    return auto_hook(ARCHS["llama"].build().eval()), ARCHS["llama"].inputs()


def test_a_forward_in_another_thread_is_not_changed_by_a_resume() -> None:
    model, inputs = _llama()
    other = {"input_ids": (inputs["input_ids"] + 1) % 96}
    with torch.no_grad():
        expected = model(**other).logits
    with resume_held_open(model, inputs), torch.no_grad():
        during = model(**other).logits
    assert torch.equal(during, expected), "a plain forward returned wrong logits during a resume"


def test_two_threads_resume_the_same_model_at_once() -> None:
    model, inputs = _llama()
    with torch.no_grad():
        expected = model(**inputs).logits
        early = model.run_until(SPLIT, **inputs)
    with resume_held_open(model, inputs), torch.no_grad():
        during = model.resume_from(SPLIT, early, **inputs).logits
    assert torch.equal(during, expected)
