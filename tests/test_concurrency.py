"""Threads and asyncio tasks sharing one model, each with its own hooks, caches, observers.

Every kind of per-caller work (hooks that edit, run_with_cache, capture, trace and
memory observers, find_nonfinite, run_until, plain calls) runs many times at once, from
N threads and from M asyncio tasks that switch at ``await`` points while their scopes
are open (the pattern of an async server). Every result must equal the same work done
alone, and afterwards nothing of anyone's may remain on the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import torch
from battery import torch_hook_count
from hf_models import ARCHS

from auto_hookpoint import auto_hook, capture, find_nonfinite, memory_profile, trace
from auto_hookpoint.core.observers import ACTIVE_OBSERVERS

THREADS, TASKS, ROUNDS = 6, 4, 8
FIGURES = {"calls": 0, "threads": THREADS, "tasks": TASKS, "rounds": ROUNDS}


def workloads(model: Any, ids: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Each returns what it computed: comparable to its result when run alone."""

    def ablate() -> Any:
        zero = [("model.layers.0.mlp.hook_point", lambda t, hook: torch.zeros_like(t))]
        return model.run_with_hooks(input_ids=ids, fwd_hooks=zero).logits

    def scaled_with_trace() -> Any:
        with (
            trace(model) as tr,
            model.hooks(fwd_hooks=[("model.layers.1.self_attn.hook_point", lambda t, hook: t * 3)]),
        ):
            logits = model(input_ids=ids).logits
        return logits, len(tr.events)

    def cached() -> Any:
        return model.run_with_cache(input_ids=ids, names_filter="model.layers.1.hook_point")[1]

    def captured() -> Any:
        with capture(model, "model.layers.*.mlp.hook_point", dtype=torch.float64) as acts:
            model(input_ids=ids)
        return dict(acts)

    def memory_and_nonfinite() -> Any:
        with memory_profile(model) as mem, find_nonfinite(model) as found:
            model(input_ids=ids)
        return len(mem.records), found.first

    def split() -> Any:
        early = model.run_until(
            "model.layers.0.hook_point", input_ids=ids, bank=["model.embed_tokens.hook_point"]
        )
        return early.activations

    def plain() -> Any:
        return model(input_ids=ids).logits

    return {
        "ablate": ablate,
        "scaled_with_trace": scaled_with_trace,
        "cached": cached,
        "captured": captured,
        "memory_and_nonfinite": memory_and_nonfinite,
        "split": split,
        "plain": plain,
    }


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_nothing_remains(model: Any) -> None:
    core = model._auto_hook_core
    assert torch_hook_count(model) == 0
    assert not core.hooked and ACTIVE_OBSERVERS.get() == ()
    assert not [n for n, hp in model.hook_dict.items() if hp.holds_hooks()]
    assert all(not h.observer_counts and not h.enter_watchers for h in core._site_modules.values())


def setup() -> tuple[Any, dict[str, Callable[[], Any]], dict[str, Any]]:
    torch.manual_seed(0)
    model = auto_hook(ARCHS["llama"].build().eval())
    ids = ARCHS["llama"].inputs()["input_ids"]
    work = workloads(model, ids)
    with torch.no_grad():
        serial = {name: job() for name, job in work.items()}
    assert not same(serial["ablate"], serial["plain"])  # the hooks do change results
    return model, work, serial


def test_threads_sharing_one_model_each_get_their_serial_results() -> None:
    model, work, serial = setup()
    names = [list(work)[i % len(work)] for i in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    mismatches: list[str] = []
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            barrier.wait()
            with torch.no_grad():
                for _ in range(ROUNDS):
                    if not same(work[name](), serial[name]):
                        mismatches.append(name)
                    FIGURES["calls"] += 1
        except BaseException as error:  # surfaced in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert not mismatches, f"results differing from the serial ones: {mismatches}"
    assert_nothing_remains(model)


def test_asyncio_tasks_switching_inside_their_scopes_each_get_their_serial_results() -> None:
    model, work, serial = setup()
    ids = ARCHS["llama"].inputs()["input_ids"]
    layer = "model.layers.0.mlp.hook_point"

    async def hooked_task(scale: float) -> list[bool]:
        ok = []
        for _ in range(ROUNDS):
            # The scope stays open across awaits, while the other tasks run the model.
            with model.hooks(fwd_hooks=[(layer, lambda t, hook: t * scale)]):
                await asyncio.sleep(0)
                with torch.no_grad():
                    logits = model(input_ids=ids).logits
                await asyncio.sleep(0)
            ok.append(same(logits, expected[scale]))
            FIGURES["calls"] += 1
        return ok

    async def capturing_task() -> list[bool]:
        ok = []
        for _ in range(ROUNDS):
            with capture(model, "model.layers.*.mlp.hook_point", dtype=torch.float64) as acts:
                await asyncio.sleep(0)
                with torch.no_grad():
                    model(input_ids=ids)
                await asyncio.sleep(0)
            ok.append(same(dict(acts), serial["captured"]))
            FIGURES["calls"] += 1
        return ok

    async def threaded_task(name: str) -> list[bool]:
        ok = []
        for _ in range(ROUNDS):
            result = await asyncio.to_thread(lambda: _no_grad(work[name]))
            ok.append(same(result, serial[name]))
            FIGURES["calls"] += 1
        return ok

    scales = [0.0, 2.0][: max(1, TASKS - 2)]
    expected = {}
    for scale in scales:
        with torch.no_grad(), model.hooks(fwd_hooks=[(layer, lambda t, hook, s=scale: t * s)]):
            expected[scale] = model(input_ids=ids).logits

    async def main() -> list[list[bool]]:
        tasks = [hooked_task(s) for s in scales] + [capturing_task(), threaded_task("cached")]
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert all(all(ok) for ok in results), results
    assert_nothing_remains(model)


def _no_grad(job: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return job()
