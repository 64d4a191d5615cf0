"""torch.compile: a hook, cache, capture, observer or split site that is active for a call
fires for that call, however the model is compiled and whenever the hook was added.

Every route (each hook API, each observer, run_until / resume_from) runs on a compiled
hooked model and is compared with the same route on an eager hooked copy with the same
weights: added before the first compiled call and after it, then removed again. Dynamo's
behaviour (guards, graph breaks, recompiles) is what is tested, so most cases use the
``eager`` backend, which compiles nothing below dynamo; a few run inductor (``slow``).
Graph breaks and compiled frames are counted with torch's own counters.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch._dynamo
from battery import torch_hook_count
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM

from auto_hookpoint import (
    CompiledBeforeHookingError,
    HookedModule,
    auto_hook,
    capture,
    carry_context,
    find_nonfinite,
    generation_trace,
    memory_profile,
    trace,
)

SITE = "model.layers.1.hook_point"
MLP = "model.layers.0.mlp.hook_point"
PARAM = "model.layers.1.input_layernorm.weight.hook_point"
BLOCK = "model.layers.0.hook_point"


def tiny_llama(layers: int = 2, vocab: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


IDS = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(1))
BASE = tiny_llama()


def halve(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
    return tensor * 0.5


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class Counter(CompileCounter):
    """Dynamo's CompileCounter (frames compiled, ops), which also counts how many times
    compiled graphs ran: a call that ran compiled code moves ``runs``."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        compiled = super().__call__(gm, example_inputs)

        def run(*args: Any) -> Any:
            self.runs += 1
            return compiled(*args)

        return run


# ------------------------------------------------------------------ ways of compiling
Call = Callable[..., Any]


def compile_wrapper(model: Any, backend: Any) -> Call:
    return torch.compile(model, backend=backend)  # type: ignore[no-any-return]


def compile_in_place(model: Any, backend: Any) -> Call:
    model.compile(backend=backend)
    return model  # type: ignore[no-any-return]


def compile_forward(model: Any, backend: Any) -> Call:
    model.forward = torch.compile(model.forward, backend=backend)
    return model  # type: ignore[no-any-return]


MODES = {
    "torch.compile(model)": compile_wrapper,
    "model.compile()": compile_in_place,
    "model.forward = torch.compile(model.forward)": compile_forward,
}


# ------------------------------------------------------------------ routes
@dataclass
class Route:
    """One way of making a site active for a call; ``run`` returns what to compare."""

    run: Callable[[Any, Call], Any]
    # The route calls the model through its own methods (run_with_hooks, run_until...),
    # which torch.compile(model)'s wrapper does not compile: tested in the other modes.
    through_methods: bool = False
    # Its observers cannot be traced: the call runs eagerly, so nothing is compiled.
    eager: bool = False


def logits(output: Any) -> torch.Tensor:
    return output.logits  # type: ignore[no-any-return]


def _run_with_hooks(m: Any, call: Call) -> Any:
    return logits(m.run_with_hooks(IDS, fwd_hooks=[(SITE, halve), (MLP, halve)]))


def _hooks_context(m: Any, call: Call) -> Any:
    with m.hooks(fwd_hooks=[(SITE, halve)]):
        return logits(call(IDS))


def _add_hook(m: Any, call: Call) -> Any:
    m.add_hook(MLP, halve)
    try:
        return logits(call(IDS))
    finally:
        m.reset_hooks()


def _transformer_lens_style(m: Any, call: Call) -> Any:
    m.hook_dict[SITE].add_hook(halve)  # as TransformerLens code does
    try:
        return logits(call(IDS))
    finally:
        m.hook_dict[SITE].remove_hooks()


def _perma_hook(m: Any, call: Call) -> Any:
    m.add_perma_hook(SITE, halve)
    try:
        return logits(call(IDS))
    finally:
        m.reset_hooks(including_permanent=True)


def _torch_hook_on_hook_point(m: Any, call: Call) -> Any:
    handle = m.hook_dict[SITE].register_forward_hook(lambda mod, args, out: out * 3)
    try:
        return logits(call(IDS))
    finally:
        handle.remove()


def _parameter_hook(m: Any, call: Call) -> Any:
    with m.hooks(fwd_hooks=[(PARAM, halve)]):
        return logits(call(IDS))


def _input_hook(m: Any, call: Call) -> Any:
    with m.hooks(fwd_hooks=[("model.layers.1.hook_in", halve)]):
        return logits(call(IDS))


def _run_with_cache(m: Any, call: Call) -> Any:
    out, cache = m.run_with_cache(IDS, names_filter=[SITE, MLP, PARAM])
    return logits(out), cache


def _capture(m: Any, call: Call) -> Any:
    with capture(m, "model.layers.*.hook_point", append=True) as acts:
        call(IDS)
        call(IDS)
    return dict(acts)


def _run_until(m: Any, call: Call) -> Any:
    early = m.run_until(SITE, IDS, bank=[MLP])
    return early.activations, early.order


def _resume_from(m: Any, call: Call) -> Any:
    early = m.run_until(BLOCK, IDS)
    return logits(m.resume_from(BLOCK, early, IDS))


def _trace(m: Any, call: Call) -> Any:
    with trace(m) as recorded:
        call(IDS)
    return [(e.module, e.depth, e.outputs) for e in recorded.events]


def _memory_profile(m: Any, call: Call) -> Any:
    with memory_profile(m) as mem:
        call(IDS)
    return [(r.module, r.call, r.output_bytes) for r in mem.records]


def _find_nonfinite(m: Any, call: Call) -> Any:
    nan = [(MLP, lambda t, hook: t.clone().index_fill_(-1, torch.tensor([0]), float("nan")))]
    with find_nonfinite(m) as found, m.hooks(fwd_hooks=nan):
        call(IDS)
    return str(found.first)


def _generation_trace(m: Any, call: Call) -> Any:
    with generation_trace(m) as gen:
        sequences = m.generate(IDS, max_new_tokens=2, do_sample=False)
    gen.finish(sequences)
    return sequences, [step.chosen_id for step in gen.steps]


ROUTES = {
    "run_with_hooks": Route(_run_with_hooks, through_methods=True),
    "hooks()": Route(_hooks_context),
    "add_hook": Route(_add_hook),
    "hook_dict[name].add_hook": Route(_transformer_lens_style),
    "add_perma_hook": Route(_perma_hook),
    "HookPoint.register_forward_hook": Route(_torch_hook_on_hook_point),
    "parameter hook": Route(_parameter_hook),
    "input hook": Route(_input_hook),
    "run_with_cache": Route(_run_with_cache, through_methods=True),
    "capture": Route(_capture),
    "run_until": Route(_run_until, through_methods=True),
    "resume_from": Route(_resume_from, through_methods=True),
    "trace": Route(_trace, eager=True),
    "memory_profile": Route(_memory_profile, eager=True),
    "find_nonfinite": Route(_find_nonfinite, eager=True),
    "generation_trace": Route(_generation_trace, through_methods=True, eager=True),
}


def assert_same(expected: Any, got: Any, what: str) -> None:
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, msg=lambda m: f"{what}: {m}")
    elif isinstance(expected, dict):
        assert list(got) == list(expected), f"{what}: sites {list(got)} != {list(expected)}"
        for key in expected:
            assert_same(expected[key], got[key], f"{what}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), f"{what}: {got!r} != {expected!r}"
        for index, (a, b) in enumerate(zip(expected, got, strict=True)):
            assert_same(a, b, f"{what}[{index}]")
    else:
        assert got == expected, f"{what}: {got!r} != {expected!r}"


def hooked() -> Any:
    return auto_hook(copy.deepcopy(BASE), inputs=True)


FORWARD_MODE = "model.forward = torch.compile(model.forward)"


def applicable(mode: str, eager_routes: bool = True) -> list[str]:
    """torch.compile(model) compiles calls of its wrapper only: the model's own methods
    (run_with_hooks, run_with_cache, run_until, generate) call the model uncompiled."""
    wrapper = mode == "torch.compile(model)"
    return [
        name
        for name, route in ROUTES.items()
        if not (wrapper and route.through_methods) and (eager_routes or not route.eager)
    ]


def run_routes(mode: str, names: list[str], added: str) -> None:
    """Run each route on a compiled copy, added before the first compiled call (a fresh
    copy per route) or after it (one copy for all, each route a new hook set), then
    without it; compare every result with the eager hooked copy's."""
    eager_model = hooked()
    with torch.no_grad():
        plain = logits(eager_model(IDS))
    model = counter = call = None
    for name in names:
        route = ROUTES[name]
        grad = torch.enable_grad() if name == "find_nonfinite" else torch.no_grad()
        with grad:
            expected = route.run(eager_model, eager_model)
            if model is None or added == "before":
                if added == "before":
                    torch._dynamo.reset()  # compiled afresh, with the route active
                model, counter = hooked(), Counter()
                call = MODES[mode](model, counter)
                if added == "after":
                    assert_same(plain, logits(call(IDS)), "idle, the first compiled call")
            assert model is not None and counter is not None and call is not None
            runs, breaks = counter.runs, graph_breaks()
            assert_same(expected, route.run(model, call), f"{name}, added {added} ({mode})")
            if route.eager:
                # Its observers cannot be traced: the call ran eagerly; a compiled forward
                # assigned to model.forward runs, with the watched dispatch graph-broken.
                assert counter.runs == runs or mode == FORWARD_MODE, f"{name} ran compiled"
            else:  # compiled, in unbroken graphs
                assert counter.runs > runs, f"{name} did not run compiled ({mode})"
                assert graph_breaks() == breaks, dict(counters["graph_break"])
            assert_same(plain, logits(call(IDS)), f"after {name} ended ({mode})")
            assert model._auto_hook_core.installed_hook_count() == 0


# Enough cache entries for one compiled copy to see every route's hook set compiled.
many_hook_sets = torch._dynamo.config.patch(recompile_limit=64)

DEFAULT_MODE = "model.compile()"
# The routes tried at the first compiled call in the default run; all of them under `slow`.
AT_FIRST_CALL = ["hooks()", "parameter hook", "run_with_cache", "capture", "run_until"]


@many_hook_sets
@pytest.mark.parametrize("mode", list(MODES))
def test_every_route_added_after_the_first_compiled_call_fires(mode: str) -> None:
    # Observers that cannot be traced, in a compiled model.forward: graph breaks at every
    # module, slow to compile; they run under `slow`.
    run_routes(mode, applicable(mode, eager_routes=mode != FORWARD_MODE), "after")


@pytest.mark.slow
@many_hook_sets
def test_untraceable_observers_in_a_compiled_forward() -> None:
    run_routes(FORWARD_MODE, [n for n in applicable(FORWARD_MODE) if ROUTES[n].eager], "after")


@pytest.mark.parametrize("route", AT_FIRST_CALL)
def test_routes_active_at_the_first_compiled_call_fire(route: str) -> None:
    run_routes(DEFAULT_MODE, [route], "before")


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_every_route_active_at_the_first_compiled_call_fires(mode: str) -> None:
    run_routes(mode, applicable(mode), "before")


# ------------------------------------------------------------------ run_with_cache compiled
def test_compiled_run_with_cache_as_sae_lens_compiles_it() -> None:
    eager_model, model = hooked(), hooked()
    counter = CompileCounter()
    model.run_with_cache = torch.compile(model.run_with_cache, backend=counter)
    with torch.no_grad():
        for names in ([SITE], [MLP, SITE], [SITE]):
            expected, expected_cache = eager_model.run_with_cache(IDS, names_filter=names)
            out, cache = model.run_with_cache(IDS, names_filter=names)
            assert_same((logits(expected), expected_cache), (logits(out), cache), str(names))
    assert counter.frame_count == 2  # one per distinct set of cached sites
    assert graph_breaks() == 0


# ------------------------------------------------------------------ counts
def test_zero_graph_breaks_idle_and_with_hooks_and_caches_active() -> None:
    model = auto_hook(copy.deepcopy(BASE))
    with torch.no_grad():
        idle = torch._dynamo.explain(model)(IDS)
        assert (idle.graph_count, idle.graph_break_count) == (1, 0), idle.break_reasons
        with model.hooks(fwd_hooks=[(SITE, halve), (PARAM, halve)]):
            with capture(model, [MLP, BLOCK]):
                active = torch._dynamo.explain(model)(IDS)
        assert (active.graph_count, active.graph_break_count) == (1, 0), active.break_reasons


def test_recompiles_are_bounded_by_hook_sets_not_by_calls_or_layers() -> None:
    model = auto_hook(tiny_llama(layers=3))
    counter = CompileCounter()
    model.compile(backend=counter)
    with torch.no_grad():
        for _ in range(3):
            model(IDS)
            # a fresh hook function each call, as a loop over run_with_hooks makes
            model.run_with_hooks(IDS, fwd_hooks=[(SITE, lambda t, hook: t * 2)])
            model.run_with_cache(IDS, names_filter=[SITE, MLP])
            model.run_until(SITE, IDS)
            model.run_with_hooks(IDS, fwd_hooks=[(PARAM, lambda w, hook: w * 2)])
    assert counter.frame_count == 5  # idle, hook, cache, exit, parameter hook: a graph each
    with torch.no_grad():
        for layer in range(3):  # each layer cached in turn: three more sets
            model.run_with_cache(IDS, names_filter=f"model.layers.{layer}.hook_point")
            model.run_with_cache(IDS, names_filter=f"model.layers.{layer}.hook_point")
    assert counter.frame_count == 8
    assert graph_breaks() == 0, dict(counters["graph_break"])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_parameter_hook_placed_again_gives_the_parameter_back_when_the_forward_raises(
    compiled: bool,
) -> None:
    model, reference = hooked(), hooked()
    if compiled:
        model.compile(backend=CompileCounter())
    weight = model.get_parameter(PARAM.removesuffix(".hook_point"))
    with torch.no_grad():
        expected = reference.run_until(SITE, IDS).activation  # reference: no parameter hook
        for _ in range(3):  # the give-back hook is placed again each time, under its old id
            with model.hooks(fwd_hooks=[(PARAM, lambda w, hook: w * 0)]):
                early = model.run_until(SITE, IDS)  # the exit unwinds through the hooks
            assert model.get_parameter(PARAM.removesuffix(".hook_point")) is weight
            assert not torch.equal(early.activation, expected)  # the hook did act
        assert_same(logits(reference(IDS)), logits(model(IDS)), "after")
    assert model._auto_hook_core.installed_hook_count() == 0


def test_other_instances_of_the_class_see_their_own_hooks() -> None:
    first, second = auto_hook(copy.deepcopy(BASE)), auto_hook(copy.deepcopy(BASE))
    reference = auto_hook(copy.deepcopy(BASE))
    counter = CompileCounter()
    first.compile(backend=counter)
    second.compile(backend=counter)
    with torch.no_grad():
        plain = logits(first(IDS))  # compiled while no instance had a hook
        edited = logits(reference.run_with_hooks(IDS, fwd_hooks=[(SITE, halve)]))
        assert_same(edited, logits(second.run_with_hooks(IDS, fwd_hooks=[(SITE, halve)])), "B")
        assert_same(plain, logits(first(IDS)), "A, while B had a hook")
        assert_same(edited, logits(first.run_with_hooks(IDS, fwd_hooks=[(SITE, halve)])), "A")
        assert_same(plain, logits(second(IDS)), "B after")


def test_a_new_input_shape_does_not_make_a_removed_hook_fire() -> None:
    model = auto_hook(copy.deepcopy(BASE))
    reference = auto_hook(copy.deepcopy(BASE))
    model.compile(backend=CompileCounter())
    longer = torch.cat([IDS, IDS], dim=1)
    with torch.no_grad():
        model.run_with_hooks(IDS, fwd_hooks=[(SITE, halve)])
        assert_same(logits(reference(longer)), logits(model(longer)), "longer input")
        with model.hooks(fwd_hooks=[(SITE, halve)]):
            assert_same(
                logits(reference.run_with_hooks(longer, fwd_hooks=[(SITE, halve)])),
                logits(model(longer)),
                "longer input, hooked",
            )


# ------------------------------------------------------------------ threads
def test_threads_sharing_a_compiled_model_see_only_their_own_hooks() -> None:
    model, reference = auto_hook(copy.deepcopy(BASE)), auto_hook(copy.deepcopy(BASE))
    model.compile(backend=CompileCounter())
    jobs: dict[str, Callable[[Any], Any]] = {
        "ablate": lambda m: logits(m.run_with_hooks(IDS, fwd_hooks=[(SITE, halve)])),
        "cache": lambda m: m.run_with_cache(IDS, names_filter=MLP)[1][MLP],
        "plain": lambda m: logits(m(IDS)),
    }
    with torch.no_grad():
        expected = {name: job(reference) for name, job in jobs.items()}
        for job in jobs.values():  # compile each hook set before the threads race
            job(model)
        results: dict[str, list[Any]] = {name: [] for name in jobs}
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(jobs))

        def worker(name: str) -> None:
            try:
                barrier.wait()
                with torch.no_grad():
                    for _ in range(30):  # each run_with_hooks opens a new scope
                        results[name].append(jobs[name](model))
            except BaseException as error:  # surfaced below, in the test's thread
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    for name in jobs:
        assert len(results[name]) == 30
        for got in results[name]:
            assert_same(expected[name], got, name)


class _Meanwhile(CompileCounter):
    """A backend that runs ``meanwhile`` once, after dynamo has traced a frame and before
    it builds the frame's guards: where another thread's hook change used to slip in."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Callable[[], None] | None = None

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        job, self.meanwhile = self.meanwhile, None
        if job is not None:
            job()
        return super().__call__(gm, example_inputs)


def test_a_hook_placed_by_another_thread_while_one_compiles_waits_for_the_compilation() -> None:
    """Dynamo builds guards from the state it finds after tracing: a hook (or cache) begun
    in another thread meanwhile placed its torch hook, so code traced without it got guards
    expecting it,
    and the next run_with_cache reused that code and cached nothing (the race behind the
    KeyError of the test above, once in six runs). The hook change now waits."""
    model = auto_hook(copy.deepcopy(BASE))
    backend = _Meanwhile()
    model.compile(backend=backend)
    watching, done = threading.Event(), threading.Event()

    def hook_in_another_thread() -> None:  # a hook that only this thread's calls see
        with model.hooks(fwd_hooks=[(MLP, lambda tensor, hook: None)]):
            watching.set()
            done.wait()

    other = threading.Thread(target=hook_in_another_thread)

    def start_other_thread() -> None:
        other.start()
        watching.wait(0.3)  # at once without the fix; with it, it waits for this compile

    backend.meanwhile = start_other_thread
    try:
        with torch.no_grad():
            model(IDS)  # plain: traced with no hook on the MLP
            watching.wait()
            _, cache = model.run_with_cache(IDS, names_filter=MLP)
    finally:
        done.set()
        other.join()
    assert MLP in cache, "the cache ran code traced without its site's hook"
    with torch.no_grad():
        expected = auto_hook(copy.deepcopy(BASE)).run_with_cache(IDS, names_filter=MLP)[1]
    torch.testing.assert_close(cache[MLP], expected[MLP])


def test_the_state_compiled_guards_read_exists_in_every_thread() -> None:
    """Dynamo evaluates a compiled frame's guards in whichever thread calls it, so the
    per-thread state they read (each call's copy of the context, each hooks() scope's
    visibility) must exist in a thread that never called a hooked model, and for a scope
    opened after that thread's call began (it raised AttributeError inside dynamo when
    one thread ran run_with_hooks while another called the same compiled model)."""
    from auto_hookpoint.core import context

    scope = context.HookScope()  # opened here, read in a thread that never saw it
    read: list[Any] = []

    def in_a_new_thread() -> None:
        read.append(scope._seen.visible)
        read.extend(
            getattr(context._THIS_CALL, c.attr) is context._NO_COPY for c in context._COPIED
        )

    worker = threading.Thread(target=in_a_new_thread)
    worker.start()
    worker.join()
    assert read == [None] + [True] * len(context._COPIED)


@pytest.mark.parametrize(
    "compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"]
)
def test_carry_context_lets_hooks_follow_generate_into_a_worker_thread(compiled: bool) -> None:
    model, reference = auto_hook(copy.deepcopy(BASE)), auto_hook(copy.deepcopy(BASE))
    if compiled:
        model.compile(backend=CompileCounter())
    seen: list[str] = []

    def ablate(t: torch.Tensor, hook: Any) -> torch.Tensor:
        seen.append(threading.current_thread().name)
        return torch.zeros_like(t)

    kwargs = {"input_ids": IDS, "max_new_tokens": 2, "do_sample": False}
    with torch.no_grad():
        plain = reference.generate(**kwargs)
        with reference.hooks(fwd_hooks=[(SITE, ablate)]):
            ablated = reference.generate(**kwargs)
        assert not torch.equal(plain, ablated)
        seen.clear()
        results: dict[str, torch.Tensor] = {}
        with model.hooks(fwd_hooks=[(SITE, ablate)]):
            # the TextIteratorStreamer pattern: generate runs in a worker thread
            for name, target in (
                ("bare", model.generate),
                ("carried", carry_context(model.generate)),
            ):
                worker = threading.Thread(
                    target=lambda t=target, n=name: results.__setitem__(n, t(**kwargs)), name=name
                )
                worker.start()
                worker.join()
    assert torch.equal(results["bare"], plain)  # a thread's hooks do not leak to another
    assert torch.equal(results["carried"], ablated)
    assert set(seen) == {"carried"}


# ------------------------------------------------------------------ sae_lens
@pytest.mark.sae_lens
def test_sae_lens_activation_store_switching_hooks_on_a_compiled_adapter() -> None:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, StandardTrainingSAEConfig
    from sae_lens.training.activations_store import ActivationsStore

    from auto_hookpoint.adapter import HookedTransformerAdapter
    from auto_hookpoint.demo import demo_corpus, demo_tokenizer

    def store(model: Any, hook_name: str) -> Any:
        cfg = LanguageModelSAERunnerConfig(
            sae=StandardTrainingSAEConfig(d_in=16, d_sae=32), hook_name=hook_name,
            is_dataset_tokenized=False, streaming=False, context_size=8,
            store_batch_size_prompts=2, device="cpu", logger=LoggingConfig(log_to_wandb=False),
        )  # fmt: skip
        data = Dataset.from_dict({"text": demo_corpus()[:50]})
        return ActivationsStore.from_config(model, cfg, override_dataset=data)

    eager = HookedTransformerAdapter(tiny_llama(3, vocab=1024), demo_tokenizer())
    adapter = HookedTransformerAdapter(tiny_llama(3, vocab=1024), demo_tokenizer())
    counter = CompileCounter()
    # what sae_lens' runner does with compile_llm=True
    adapter.run_with_cache = torch.compile(adapter.run_with_cache, backend=counter)
    hook_names = ["blocks.1.hook_resid_post", "model.layers.0.mlp.hook_point"]
    tokens = store(eager, hook_names[0]).get_batch_tokens(2)
    for hook_name in [*hook_names, hook_names[0]]:
        expected = store(eager, hook_name).get_activations(tokens)
        assert_same(expected, store(adapter, hook_name).get_activations(tokens), hook_name)
    assert counter.frame_count == 2  # one graph per hook, each ending at its layer
    assert graph_breaks() == 0


def test_adapter_view_sites_in_a_compiled_forward_edit_cache_and_refuse_as_eager() -> None:
    """The adapter's per-head and norm names show the module's tensor through a view.
    Compiled, caches and edits (in place too) agree with eager, in one graph; a read-only
    name still refuses an edit."""
    from auto_hookpoint import ReadOnlySiteError
    from auto_hookpoint.adapter import HookedTransformerAdapter
    from auto_hookpoint.demo import demo_tokenizer

    base = tiny_llama(2, vocab=1024)
    eager = HookedTransformerAdapter(copy.deepcopy(base), demo_tokenizer())
    adapter = HookedTransformerAdapter(base, demo_tokenizer())
    counter = CompileCounter()
    adapter.model.compile(backend=counter)
    tokens = torch.randint(0, 1024, (2, 6), generator=torch.Generator().manual_seed(3))
    names = ["blocks.0.attn.hook_q", "blocks.1.ln2.hook_scale", "blocks.1.attn.hook_z"]

    def zero_head(q: torch.Tensor, hook: Any) -> None:
        q[:, :, 1] = 0  # in place, returning None: TransformerLens' own style

    def rescale(scale: torch.Tensor, hook: Any) -> torch.Tensor:
        return scale * 2

    with torch.no_grad():
        breaks = graph_breaks()
        for model in (eager, adapter):  # the same tokens, eager and compiled
            model.results = [  # type: ignore[attr-defined]
                model.run_with_cache(tokens, names_filter=names)[1]
            ]
        assert counter.frame_count >= 1, "the adapter's forward ran compiled"
        for model in (eager, adapter):
            model.results.append(  # type: ignore[attr-defined]
                model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_q", zero_head)])
            )
        for name in names:
            assert_same(eager.results[0][name], adapter.results[0][name], name)
        assert graph_breaks() == breaks, dict(counters["graph_break"])
        assert_same(eager.results[1], adapter.results[1], "an in-place edit of hook_q")
        assert not torch.equal(adapter.results[1], adapter(tokens))
        with pytest.raises(ReadOnlySiteError, match="hook_scale"):
            adapter.run_with_hooks(tokens, fwd_hooks=[("blocks.1.ln2.hook_scale", rescale)])


# ------------------------------------------------------------------ compiled parts
def test_a_compiled_submodule_called_on_its_own_sees_hooks_added_later() -> None:
    model, reference = hooked(), hooked()
    inner = torch.compile(model.model, backend=CompileCounter())  # not through the model
    with torch.no_grad():
        plain = inner(IDS).last_hidden_state
        with model.hooks(fwd_hooks=[(MLP, halve)]):
            got = inner(IDS).last_hidden_state
        with reference.hooks(fwd_hooks=[(MLP, halve)]):
            expected = reference.model(IDS).last_hidden_state
        assert_same(expected, got, "hooked")
        assert_same(plain, inner(IDS).last_hidden_state, "after")


def test_regional_compilation_after_auto_hook() -> None:
    model, reference = hooked(), hooked()
    for layer in model.model.layers:  # compile each block, as large models often are
        layer.compile(backend=CompileCounter())
    with torch.no_grad():
        assert_same(logits(reference(IDS)), logits(model(IDS)), "idle")
        for route in ("run_with_hooks", "run_with_cache", "run_until"):
            expected = ROUTES[route].run(reference, reference)
            assert_same(expected, ROUTES[route].run(model, model), route)


def test_auto_hook_refuses_submodules_compiled_before_it() -> None:
    model = copy.deepcopy(BASE)
    model.model.layers[1].compile(backend=CompileCounter())
    with torch.no_grad():
        model(IDS)  # its compiled code checks no hooks inside the block
    with pytest.raises(CompiledBeforeHookingError, match=r"'model.layers.1' was compiled"):
        auto_hook(model)
    assert not isinstance(model, HookedModule) and torch_hook_count(model) == 0


def test_a_compiled_function_that_calls_the_hooked_model() -> None:
    model, reference = hooked(), hooked()
    counter = Counter()
    step = torch.compile(lambda ids: logits(model(ids)).softmax(-1), backend=counter)
    with torch.no_grad():
        assert_same(logits(reference(IDS)).softmax(-1), step(IDS), "idle")
        with model.hooks(fwd_hooks=[(SITE, halve)]), capture(model, MLP) as acts:
            got = step(IDS)
        with reference.hooks(fwd_hooks=[(SITE, halve)]), capture(reference, MLP) as expected:
            assert_same(logits(reference(IDS)).softmax(-1), got, "hooked")
        assert_same(dict(expected), dict(acts), "captured")
    # The model's call is where the function's graph breaks; the forward is one graph.
    assert graph_breaks() <= 2, dict(counters["graph_break"])


@pytest.mark.parametrize("strict", [False, True], ids=["export", "strict export"])
def test_torch_export_of_a_hooked_model_keeps_its_global_hooks(strict: bool) -> None:
    model, reference = hooked(), hooked()
    for m in (model, reference):
        m.add_hook(SITE, halve)
    no_cache = {"use_cache": False}  # transformers' cache object is no pytree
    exported = torch.export.export(model, (IDS,), no_cache, strict=strict).module()
    with torch.no_grad():
        expected = logits(reference(IDS, **no_cache))
        assert_same(expected, logits(exported(IDS, **no_cache)), "exported")


# ------------------------------------------------------------------ inductor, benchmark (slow)
@pytest.mark.slow
@many_hook_sets
def test_inductor_compiled_routes_match_eager() -> None:
    model, reference = hooked(), hooked()
    model.compile()  # inductor, torch's default backend
    with torch.no_grad():
        torch.testing.assert_close(logits(model(IDS)), logits(reference(IDS)))
        for route in ("run_with_hooks", "parameter hook", "run_with_cache", "run_until"):
            expected, got = ROUTES[route].run(reference, reference), ROUTES[route].run(model, model)
            for want, have in zip(
                torch.utils._pytree.tree_leaves(expected),
                torch.utils._pytree.tree_leaves(got),
                strict=True,
            ):
                if isinstance(want, torch.Tensor):
                    torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)
                else:
                    assert have == want
    assert graph_breaks() == 0, dict(counters["graph_break"])


@pytest.mark.slow
def test_sae_lens_training_runner_with_compile_llm(tmp_path: Any) -> None:
    from datasets import Dataset
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        StandardTrainingSAEConfig,
    )

    from auto_hookpoint.adapter import HookedTransformerAdapter
    from auto_hookpoint.demo import demo_corpus, demo_tokenizer

    def runner(compile_llm: bool) -> Any:
        adapter = HookedTransformerAdapter(tiny_llama(3, vocab=1024), demo_tokenizer())
        cfg = LanguageModelSAERunnerConfig(
            sae=StandardTrainingSAEConfig(d_in=16, d_sae=32), hook_name="blocks.1.hook_resid_post",
            is_dataset_tokenized=False, streaming=False, context_size=8, training_tokens=256,
            train_batch_size_tokens=32, store_batch_size_prompts=4, n_batches_in_buffer=16,
            device="cpu", compile_llm=compile_llm, logger=LoggingConfig(log_to_wandb=False),
            output_path=str(tmp_path / str(compile_llm)), n_checkpoints=0,
        )  # fmt: skip
        data = Dataset.from_dict({"text": demo_corpus()[:200]})
        return LanguageModelSAETrainingRunner(cfg, override_model=adapter, override_dataset=data)

    eager, compiled = runner(False), runner(True)
    tokens = eager.activations_store.get_batch_tokens(4)
    torch.testing.assert_close(
        compiled.activations_store.get_activations(tokens),
        eager.activations_store.get_activations(tokens),
        rtol=1e-4,
        atol=1e-5,
    )
    sae = compiled.run()  # trains on the compiled model's activations
    assert sae.W_enc.isfinite().all()
    assert graph_breaks() == 0, dict(counters["graph_break"])


@pytest.mark.slow
def test_the_compile_benchmark_runs_with_no_break_and_no_recompile() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "compile.py"
    args = ["--rounds", "2", "--shapes", "tiny", "--backend", "eager"]
    table = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| tiny | ")]
    assert len(rows) == 7, table
    for row in rows[1:]:  # variant, ratio, graph breaks, recompiles
        assert row[4].strip() == "0" and row[5].strip() == "0", table
