"""One model, several callers at once: each thread sees only its own hooks and caches."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from battery import torch_hook_count
from hf_models import ARCHS

from auto_hookpoint import auto_hook

ROUNDS = 15


def run_together(*jobs: Callable[[], Any]) -> list[list[Any]]:
    """Run each job ROUNDS times, all jobs at once in their own threads."""
    barrier = threading.Barrier(len(jobs))
    results: list[list[Any]] = [[] for _ in jobs]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                results[index].append(jobs[index]())
        except BaseException as error:  # surfaced below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_two_threads_with_different_hooks_get_their_serial_results() -> None:
    torch.manual_seed(0)
    model = auto_hook(ARCHS["llama"].build().eval())
    ids = ARCHS["llama"].inputs()["input_ids"]

    def ablate_mlp() -> torch.Tensor:
        hooks = [("model.layers.0.mlp.hook_point", lambda t, hook: torch.zeros_like(t))]
        return model.run_with_hooks(input_ids=ids, fwd_hooks=hooks).logits

    def double_attention() -> torch.Tensor:
        hooks = [("model.layers.1.self_attn.hook_point", lambda t, hook: 2 * t)]
        return model.run_with_hooks(input_ids=ids, fwd_hooks=hooks).logits

    def plain() -> torch.Tensor:
        return model(input_ids=ids).logits

    with torch.no_grad():
        serial = [ablate_mlp(), double_attention(), plain()]
        assert not torch.equal(serial[0], serial[1])
        together = run_together(ablate_mlp, double_attention, plain)
    for expected, got in zip(serial, together, strict=True):
        assert all(torch.equal(expected, logits) for logits in got)
    assert (
        torch_hook_count(model) == 0
        and not model.hook_dict["model.layers.0.mlp.hook_point"].fwd_hooks
    )


def test_two_threads_caching_different_sites_get_exactly_their_own() -> None:
    torch.manual_seed(0)
    model = auto_hook(ARCHS["llama"].build().eval())
    inputs = [ARCHS["llama"].inputs(), {"input_ids": ARCHS["llama"].inputs()["input_ids"].flip(-1)}]
    sites = ["model.layers.0.hook_point", "model.layers.1.mlp.hook_point"]

    def cache(index: int) -> Callable[[], dict[str, torch.Tensor]]:
        return lambda: model.run_with_cache(**inputs[index], names_filter=sites[index])[1]

    with torch.no_grad():
        serial = [cache(0)(), cache(1)()]
        together = run_together(cache(0), cache(1))
    for expected, got in zip(serial, together, strict=True):
        for result in got:
            assert list(result) == list(expected)
            assert all(torch.equal(result[k], expected[k]) for k in expected)
    assert torch_hook_count(model) == 0


def test_global_hooks_added_outside_a_scope_are_seen_by_every_thread() -> None:
    torch.manual_seed(0)
    model = auto_hook(ARCHS["llama"].build().eval())
    ids = ARCHS["llama"].inputs()["input_ids"]
    seen: list[str] = []
    model.add_perma_hook(
        "model.layers.0.hook_point", lambda t, hook: seen.append(threading.current_thread().name)
    )
    worker = threading.Thread(target=lambda: model(input_ids=ids), name="worker")
    worker.start()
    worker.join()
    model(input_ids=ids)
    assert seen == ["worker", threading.current_thread().name]
