"""The profiling observers: trace, memory and numerics, on plain and HF models."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS
from plain_models import SharedTwice
from torch import nn

from auto_hookpoint import UnknownHookNameError, auto_hook
from auto_hookpoint.observers.memory import memory_profile
from auto_hookpoint.observers.numerics import NonFiniteError, find_nonfinite
from auto_hookpoint.observers.trace import trace


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 0.5)  # NaN wherever x < 0.5


class SqrtOfZero(nn.Module):
    """Finite forward (sqrt(0) = 0), non-finite backward (inf * 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x * 0.0) + x


class Pipeline(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.log, self.b = nn.Linear(4, 4), Log(), nn.Linear(4, 4)
        self.sqrt, self.c = SqrtOfZero(), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, poison: bool = True) -> torch.Tensor:
        h = self.a(x)
        if poison:
            h = self.log(h)
        return self.c(self.sqrt(self.b(h)))


def pipeline() -> nn.Module:
    torch.manual_seed(0)
    return auto_hook(Pipeline())


def llama() -> nn.Module:
    torch.manual_seed(0)
    return auto_hook(ARCHS["llama"].build().eval())


# ----------------------------------------------------------------- trace
def test_trace_records_every_call_with_nesting_and_self_time() -> None:
    model = auto_hook(SharedTwice())
    with trace(model) as recorded:
        model(torch.randn(2, 8))
    modules = [e.module for e in recorded.events]
    assert modules == ["", "shared", "shared", "out"]  # in start order
    root = recorded.events[0]
    assert root.depth == 0 and all(e.depth == 1 for e in recorded.events[1:])
    assert root.children_ns == sum(e.duration_ns for e in recorded.events[1:])
    assert 0 <= root.self_ns <= root.duration_ns
    assert root.inputs == ["float32[2, 8]"] and root.outputs == ["float32[2, 2]"]
    averages = {row.module: row for row in recorded.key_averages()}
    assert averages["shared"].count == 2
    assert averages[""].total_ns == root.duration_ns and averages[""].self_ns == root.self_ns
    assert "shared" in recorded.table() and torch_hook_count(model) == 0


def test_key_averages_tables_sort_and_cut_as_torch_profiler_does() -> None:
    model = llama()
    inputs = ARCHS["llama"].inputs()
    with torch.no_grad(), trace(model) as recorded, memory_profile(model) as mem:
        model(**inputs)
    times = recorded.key_averages()
    for sort_by, column in [
        ("self_cpu_time_total", "self_ns"),  # torch.profiler's names for the same times
        ("cpu_time_total", "total_ns"),
        ("count", "count"),
    ]:
        table = times.table(sort_by=sort_by, row_limit=3).splitlines()
        top = sorted(times, key=lambda row: getattr(row, column), reverse=True)[:3]
        assert [line.split()[0] for line in table[1:]] == [r.module or "<root>" for r in top]
    assert recorded.table(2) == times.table(row_limit=2)  # the README's first spelling
    memory_rows = mem.key_averages()
    by_peak = mem.key_averages().table(sort_by="peak_bytes", row_limit=1).splitlines()
    top = max(memory_rows, key=lambda row: row.peak_bytes)
    assert by_peak[2].split()[0] == (top.module or "<root>") and len(by_peak) == 3
    with pytest.raises(ValueError, match="sort_by is one of 'self_ns', .*; got 'cuda_time'"):
        times.table(sort_by="cuda_time")
    with pytest.raises(ValueError, match="row_limit is the number of rows"):
        memory_rows.table(row_limit=0)


def test_chrome_trace_file_is_valid(tmp_path: Path) -> None:
    model = llama()
    with trace(model) as recorded:
        model(**ARCHS["llama"].inputs())
    recorded.export_chrome_trace(tmp_path / "trace.json")
    recorded.save_chrome_trace(tmp_path / "first-spelling.json")  # the first README's name
    assert (tmp_path / "first-spelling.json").read_text() == (tmp_path / "trace.json").read_text()
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert len(events) == len(recorded.events) > 20
    for event in events:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= event.keys()
        assert event["ph"] == "X" and event["ts"] >= 0 and event["dur"] >= 0
    root = next(e for e in events if e["name"] == "<root>")
    root_end = root["ts"] + root["dur"] + 1e-3
    assert all(root["ts"] <= e["ts"] and e["ts"] + e["dur"] <= root_end for e in events)


def test_record_function_labels_show_in_torch_profiler() -> None:
    model = llama()
    with torch.profiler.profile() as profiler, trace(model, record_function=True):
        model(**ARCHS["llama"].inputs())
    names = {event.key for event in profiler.key_averages()}
    assert {"model.layers.0.self_attn", "model.layers.1.mlp", "lm_head"} <= names


def test_trace_covers_every_generation_step() -> None:
    model = llama()
    ids = ARCHS["llama"].inputs(batch=1)["input_ids"]
    with trace(model) as recorded:
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    roots = [e for e in recorded.events if e.module == ""]
    assert len(roots) == 4
    # the prefill, then one new token per step (the KV cache holds the rest)
    assert roots[0].inputs[0] == "int64[1, 8]" and roots[1].inputs[0] == "int64[1, 1]"


def test_trace_closes_calls_that_raised_and_leaves_no_hooks() -> None:
    model = pipeline()
    with pytest.raises(RuntimeError), trace(model) as recorded:
        model(torch.randn(2, 5))  # wrong width: `a` raises
    raised = {e.module for e in recorded.events if e.raised}
    assert raised == {"", "a"}
    assert torch_hook_count(model) == 0


def test_an_observer_sees_only_its_own_thread() -> None:
    model = pipeline()
    x = torch.randn(2, 4)
    with trace(model) as recorded:
        worker = threading.Thread(target=lambda: model(x, poison=False))
        worker.start()
        worker.join()
        assert recorded.events == []
        model(x, poison=False)
    assert [e.module for e in recorded.events][0] == "" and len(recorded.events) == 5


# ----------------------------------------------------------------- memory
def test_memory_counts_output_bytes_and_reports_table_data_and_chart(tmp_path: Path) -> None:
    model = llama()
    with torch.no_grad(), memory_profile(model) as mem:
        model(**ARCHS["llama"].inputs())
    by_module = {r.module: r for r in mem.records}
    assert by_module["lm_head"].output_bytes == 2 * 8 * 96 * 4
    assert by_module["model.layers.0.mlp"].output_bytes == 2 * 8 * 32 * 4
    rows = mem.key_averages()
    assert rows[0].output_bytes >= rows[-1].output_bytes and rows[0].count == 1
    assert mem.peak_bytes > 0 and all(r.device == "cpu" for r in mem.records)
    assert mem.to_records()[0].keys() >= {"module", "output_bytes", "peak_bytes"}
    assert "peak resident" in mem.table()
    mem.save_bar_chart(tmp_path / "memory.png")
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_on_cuda_reports_allocator_peaks() -> None:
    model = llama().cuda()
    inputs = {k: v.cuda() for k, v in ARCHS["llama"].inputs().items()}
    with torch.no_grad(), memory_profile(model) as mem:
        model(**inputs)
    assert all(r.device.startswith("cuda") for r in mem.records)
    assert mem.peak_bytes >= max(r.after_bytes for r in mem.records) > 0


# ----------------------------------------------------------------- numerics
def test_the_first_forward_producer_is_found_not_the_propagators() -> None:
    model = pipeline()
    with find_nonfinite(model) as found:
        model(torch.randn(3, 4))
    assert found.first is not None
    assert (found.first.module, found.first.direction) == ("log", "forward")
    assert found.first.nan > 0 and found.first.path == ""
    assert [f.module for f in found.findings] == ["log"]  # b, c and the root only passed it on


def test_raise_on_first_names_the_module_and_leaves_the_model_usable() -> None:
    model = pipeline()
    expected = r"^log \(Log, call 1\) produced \d+ NaN"
    with pytest.raises(NonFiniteError, match=expected), find_nonfinite(model, raise_on_first=True):
        model(torch.randn(3, 4))
    assert torch_hook_count(model) == 0
    assert torch.isfinite(model(torch.randn(3, 4), poison=False)).all()


def test_the_first_backward_producer_is_found() -> None:
    model = pipeline()
    with find_nonfinite(model) as found:
        model(torch.randn(3, 4), poison=False).sum().backward()
    assert [(f.module, f.direction) for f in found.findings] == [("sqrt", "backward")]


def test_a_nan_during_generation_is_traced_to_its_module() -> None:
    model = llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    ids = ARCHS["llama"].inputs(batch=1)["input_ids"]
    with (
        pytest.raises(NonFiniteError, match="model.layers.1.mlp.down_proj"),
        find_nonfinite(model, raise_on_first=True),
    ):
        model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch_hook_count(model) == 0


def test_integers_and_non_tensors_are_skipped() -> None:
    class Counts(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
            return x.argmax(-1), 3

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.counts = Counts()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.counts(x)[0]

    model = auto_hook(Model())
    with find_nonfinite(model) as found:
        model(torch.randn(2, 3))
    assert found.findings == []


def test_observers_refuse_unhooked_models_and_unknown_names() -> None:
    with pytest.raises(TypeError, match="auto_hook"), trace(Pipeline()):
        pass
    with pytest.raises(UnknownHookNameError, match="'a.hook_point'"):
        with trace(pipeline(), names=["a.hookpoint"]):
            pass
