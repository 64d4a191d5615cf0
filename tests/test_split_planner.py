"""Where to split: profiles measured with the trace and memory observers, the Neurosurgeon
latency model over them, the table, the chart and `auto-hookpoint plan`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_models import ARCHS

from auto_hookpoint import SplitProfile, load_model_dir, plan_split, profile_split
from auto_hookpoint.cli import main
from auto_hookpoint.remote.executor import SplitExecutor
from auto_hookpoint.remote.planner import ALL_EDGE, ALL_SERVER, parse_bandwidth, parse_duration
from auto_hookpoint.remote.wire import SplitRequest, encode_request

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "bits"),
    [("20Mbit", 20e6), ("100 Mbps", 100e6), ("1Gbit", 1e9), ("512kbit", 512e3),
     ("2.5MB/s", 20e6), ("8 bit", 8), (1e6, 1e6)],
)  # fmt: skip
def test_bandwidths(text: Any, bits: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(bits)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30ms", 0.03), ("0.2s", 0.2), ("500us", 5e-4), (0.1, 0.1)]
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["20", "fast", "20 Mfoo", "-3Mbit", "0Mbit"])
def test_bandwidths_that_make_no_sense_are_refused(text: str) -> None:
    if text == "20":
        assert parse_bandwidth(text) == 20  # a bare number is bits per second
        return
    with pytest.raises(ValueError, match="bandwidth .* (is not understood|must be positive)"):
        parse_bandwidth(text)


def test_durations_that_make_no_sense_are_refused() -> None:
    with pytest.raises(ValueError, match="duration '30' is not understood; write e.g. '30ms'"):
        parse_duration("30")


def synthetic(**changes: Any) -> SplitProfile:
    """Two blocks: 45 ms each on the edge; 100 kB inputs, 10 kB activations, 1 kB back."""
    profile = SplitProfile(
        model_class="Model", fingerprint="f", machine="m", inputs={"x": [1, 100]}, output=None,
        last_position=False, sites=["blocks.0.hook_point", "blocks.1.hook_point"],
        forward_ms=100.0, until_ms=[47.0, 92.0], block_ms=[45.0, 45.0],
        activation_bytes=[8000, 8000],
        request_bytes={"none": [10_000, 10_000], "fp16": [5_000, 5_000], "bf16": [5_000, 5_000],
                       "int8": [2_500, None]},
        encode_ms={"none": [0.0, 0.0], "fp16": [0.5, 0.5], "bf16": [0.5, 0.5], "int8": [1.0, None]},
        decode_ms={"none": [0.0, 0.0], "fp16": [0.5, 0.5], "bf16": [0.5, 0.5], "int8": [1.0, None]},
        inputs_request_bytes=100_000, response_bytes=1_000, repeats=1,
    )  # fmt: skip
    return dataclasses.replace(profile, **changes)


def test_the_latency_of_each_split_is_edge_plus_network_plus_server() -> None:
    edge, server = synthetic(), synthetic(forward_ms=2.5, block_ms=[1.0, 1.0])  # a 10x server
    plan = plan_split(edge, server, bandwidth="8Mbit", rtt="20ms")  # 1 kB = 1 ms
    everything_there = plan.option(ALL_SERVER)
    assert everything_there.total_ms == pytest.approx(0 + (20 + 100 + 1) + 2.5)
    after_0 = plan.option("after blocks.0")
    assert after_0.total_ms == pytest.approx(47 + (20 + 10 + 1) + (2.5 - 1.0))
    after_0_int8 = plan.option("after blocks.0", "int8")
    assert after_0_int8.total_ms == pytest.approx(47 + 1 + (20 + 2.5 + 1) + (2.5 - 1.0) + 1)
    after_1 = plan.option("after blocks.1")
    assert after_1.total_ms == pytest.approx(92 + (20 + 10 + 1) + (2.5 - 2.0))
    assert plan.option(ALL_EDGE).total_ms == pytest.approx(100)
    assert not [o for o in plan.options if o.label == "after blocks.1" and o.compress == "int8"]
    # The best exact split sends the small activation rather than the large inputs ...
    assert plan.best is after_0
    # ... int8 would be faster still, but is lossy: chosen only when allowed.
    assert (
        plan_split(edge, server, bandwidth="8Mbit", rtt="20ms", compress=(None, "int8")).best
        == after_0_int8
    )
    # A fast link sends the inputs; no link worth using keeps everything on the edge.
    assert plan_split(edge, server, bandwidth="10Gbit", rtt="1ms").best.label == ALL_SERVER
    assert plan_split(edge, server, bandwidth="1Mbit", rtt="20ms").best.label == ALL_EDGE
    table = plan.table()
    assert "best: after blocks.0: 79.5 ms (edge 47.0 + network 31.0 + server 1.5)" in table
    assert "with int8 compression (lossy, not allowed here): after blocks.0, 74.0 ms" in table


def test_profiles_of_different_models_or_inputs_are_not_combined() -> None:
    with pytest.raises(ValueError, match=r"differ in inputs .* same inputs and output on both"):
        plan_split(synthetic(), synthetic(inputs={"x": [1, 50]}), bandwidth="1Gbit", rtt="1ms")
    with pytest.raises(ValueError, match="differ in fingerprint"):
        plan_split(synthetic(), synthetic(fingerprint="g"), bandwidth="1Gbit", rtt="1ms")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    ARCHS["llama"].build().save_pretrained(folder)
    return folder


def test_a_measured_profile_agrees_with_the_model_and_the_wire(
    llama_dir: Path, tmp_path: Path
) -> None:
    model = load_model_dir(llama_dir)
    inputs = ARCHS["llama"].inputs()
    profile = profile_split(model, repeats=2, last_position=True, **inputs)
    assert profile.sites == ["model.layers.0.hook_point", "model.layers.1.hook_point"]
    assert 0 < profile.until_ms[0] < profile.until_ms[1] < profile.forward_ms
    assert all(0 < t for t in profile.block_ms) and sum(profile.block_ms) < profile.forward_ms
    assert profile.activation_bytes == [2 * 8 * 32 * 4] * 2  # the memory observer's figure
    none, fp16, int8 = (profile.request_bytes[m] for m in ("none", "fp16", "int8"))
    assert all(a > b > c for a, b, c in zip(none, fp16, int8, strict=True))
    with torch.no_grad():
        early = model.run_until("model.layers.1.hook_point", **inputs)
    body = encode_request(SplitRequest(early, (), inputs, None, None, True))
    assert profile.request_bytes["none"][1] == len(body)  # the very request a client sends
    assert profile.response_bytes == len(SplitExecutor(model).run(body))
    profile.save(tmp_path / "p.json")
    assert SplitProfile.load(tmp_path / "p.json") == profile
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a split profile .* profile_split"):
        SplitProfile.load(tmp_path / "bad.json")
    plan = plan_split(profile, bandwidth="20Mbit", rtt="30ms")
    plan.save_chart(tmp_path / "plan.png")
    assert (tmp_path / "plan.png").read_bytes().startswith(PNG)
    assert len(plan.table().splitlines()) == 4 + len(plan.labels) + 1


def test_the_plan_command_measures_saves_and_combines_profiles(
    llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edge, chart = tmp_path / "edge.json", tmp_path / "chart.png"
    common = ["--bandwidth", "20Mbit", "--rtt", "30ms", "--chart", str(chart)]
    assert (
        main(
            [
                "plan",
                str(llama_dir),
                "--seq-len",
                "8",
                "--repeats",
                "1",
                "--save-profile",
                str(edge),
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "profiling LlamaForCausalLM from" in out and f"profile saved to {edge}" in out
    for line in (ALL_SERVER, "after model.layers.0", "after model.layers.1", ALL_EDGE, "best: "):
        assert line in out
    assert chart.read_bytes().startswith(PNG)
    server = tmp_path / "server.json"  # "measured on the server": 10x faster there
    fast = SplitProfile.load(edge)
    fast = dataclasses.replace(fast, machine="server", forward_ms=fast.forward_ms / 10,
                               block_ms=[t / 10 for t in fast.block_ms])  # fmt: skip
    fast.save(server)
    assert (
        main(["plan", "--edge-profile", str(edge), "--server-profile", str(server), *common]) == 0
    )
    out = capsys.readouterr().out
    assert "profiling" not in out and "server: server" in out and "best: " in out
    with pytest.raises(SystemExit, match="bandwidth '20 parsecs' is not understood"):
        main(["plan", "--bandwidth", "20 parsecs"])
    other = dataclasses.replace(fast, inputs={"input_ids": [1, 9]})
    other.save(server)
    with pytest.raises(SystemExit, match="differ in inputs"):
        main(["plan", "--edge-profile", str(edge), "--server-profile", str(server), *common])
    with pytest.raises(SystemExit, match="No such file"):
        main(["plan", "--edge-profile", str(tmp_path / "missing.json"), *common])
