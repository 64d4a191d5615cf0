"""Split inference across machines: a real uvicorn server on 127.0.0.1, the real client.

Both halves load the same model folder, saved to a temporary directory, as two machines
would. Servers run in background threads on free ports (one test starts the real
``auto-hookpoint serve`` command in a subprocess) and are always shut down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS, minilm_path
from safetensors.torch import save as save_safetensors
from torch import nn

from auto_hookpoint import (
    EarlyOutput,
    SplitClient,
    SplitConnectionError,
    SplitServer,
    SplitServerError,
    auto_hook,
    load_model_dir,
)
from auto_hookpoint.remote import codec
from auto_hookpoint.remote.wire import SplitRequest, encode_request

STACKS = {"llama": "model.layers", "gpt2": "transformer.h"}
LOOPBACK = "127.0.0.1"


@dataclasses.dataclass
class Deployment:
    """One model folder, loaded twice: the edge's copy and a running server's."""

    arch: str
    folder: Path
    edge: Any
    server: SplitServer
    inputs: dict[str, torch.Tensor]

    @property
    def url(self) -> str:
        return self.server.url

    def site(self, k: int) -> str:
        return f"{STACKS[self.arch]}.{k}.hook_point"

    def local(self, **inputs: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.edge(**(inputs or self.inputs)).logits  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Deployment]]:
    running: dict[str, Deployment] = {}
    try:
        for arch in STACKS:
            folder = tmp_path_factory.mktemp(arch)
            torch.manual_seed(0)
            ARCHS[arch].build().save_pretrained(folder)
            server = SplitServer(load_model_dir(folder), LOOPBACK, 0).start()
            running[arch] = Deployment(
                arch, folder, load_model_dir(folder), server, ARCHS[arch].inputs()
            )
        yield running
    finally:
        for deployment in running.values():
            deployment.server.stop()


@pytest.fixture
def llama(deployments: dict[str, Deployment]) -> Deployment:
    return deployments["llama"]


def post(url: str, body: bytes, **options: Any) -> httpx.Response:
    return httpx.post(f"{url}/run", content=body, timeout=30, **options)


def assert_still_serving(deployment: Deployment) -> None:
    client = SplitClient(deployment.url, timeout=30)
    assert client.health() == {"status": "ok"}
    out = client.run(deployment.edge, deployment.site(0), **deployment.inputs)
    assert torch.equal(out, deployment.local())


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("arch", STACKS)
def test_uncompressed_split_is_bit_identical_at_every_split_point(
    deployments: dict[str, Deployment], arch: str
) -> None:
    deployment = deployments[arch]
    full = deployment.local()
    client = SplitClient(deployment.url, timeout=30)
    blocks = deployment.server.executor.blocks
    assert blocks == [deployment.site(k) for k in range(len(blocks))] and len(blocks) == 2
    for site in [*blocks, None]:  # None: everything on the server
        out, stats = client.run_with_stats(deployment.edge, site, **deployment.inputs)
        assert torch.equal(out, full), site
        assert stats.request_bytes > 0 and stats.server_ms > 0
    assert torch_hook_count(deployment.edge) == 0
    assert client.info()["fingerprint"] == deployment.server.executor.fingerprint


def test_a_site_after_the_split_a_field_and_the_last_position(llama: Deployment) -> None:
    client = SplitClient(llama.url, timeout=30)
    edge, inputs = llama.edge, llama.inputs
    with torch.no_grad():
        full, cache = edge.run_with_cache(**inputs, names_filter="model.layers.1.hook_point")
    after = client.run(edge, llama.site(0), output="model.layers.1.hook_point", **inputs)
    assert torch.equal(after, cache["model.layers.1.hook_point"])
    assert torch.equal(client.run(edge, llama.site(0), output="logits", **inputs), full.logits)
    last, stats = client.run_with_stats(edge, llama.site(1), last_position=True, **inputs)
    assert torch.equal(last, full.logits[:, -1]) and last.shape == (2, 96)
    assert stats.response_bytes < full.logits.numel() * 4 / 4


# ------------------------------------------------------------------ compression
def test_int8_rounding_error_is_at_most_half_a_step_of_its_row() -> None:
    torch.manual_seed(0)
    for shape in [(2, 8, 32), (1, 5), (3, 4, 6, 7)]:
        x = torch.randn(shape) * torch.logspace(-3, 3, shape[-1])  # rows of very unequal scale
        parts = codec.encode(x, "int8")
        back = codec.decode(parts, "int8", x.dtype)
        step = x.abs().amax(-1, keepdim=True) / 127
        assert back.shape == x.shape and back.dtype == x.dtype
        assert ((back - x).abs() <= step / 2 * (1 + 1e-5) + 1e-12).all()
    zeros = torch.zeros(2, 3)
    assert torch.equal(codec.decode(codec.encode(zeros, "int8"), "int8", zeros.dtype), zeros)


@pytest.mark.parametrize("arch", STACKS)
@pytest.mark.parametrize("compress", ["fp16", "bf16", "int8"])
def test_compressed_split_reports_its_error(
    deployments: dict[str, Deployment], arch: str, compress: str
) -> None:
    """The figures quoted in docs/split_network.md come from here (pytest -s prints them)."""
    deployment = deployments[arch]
    edge, inputs, site = deployment.edge, deployment.inputs, deployment.site(0)
    full = deployment.local()
    exact, exact_stats = SplitClient(deployment.url).run_with_stats(edge, site, **inputs)
    client = SplitClient(deployment.url, compress=compress, timeout=30)  # type: ignore[arg-type]
    out, stats = client.run_with_stats(edge, site, **inputs)
    with torch.no_grad():
        act = edge.run_until(site, **inputs).activation
    dtype = act.dtype
    sent = codec.decode(codec.encode(act, compress), compress, dtype)  # type: ignore[arg-type]
    relative = ((sent - act).norm() / act.norm()).item()
    top1 = (out.argmax(-1) == full.argmax(-1)).float().mean().item()
    max_diff = (out - full).abs().max().item()
    print(
        f"\n{arch} {compress}: activation relative error {relative:.2e}, top-1 agreement "
        f"{top1:.3f}, max |logit diff| {max_diff:.2e}, request {stats.request_bytes} bytes "
        f"(exact {exact_stats.request_bytes})"
    )
    assert torch.equal(exact, full)
    assert 0 < relative < {"fp16": 1e-3, "bf16": 1e-2, "int8": 2e-2}[compress]
    assert 0 < max_diff < {"fp16": 1e-3, "bf16": 1e-2, "int8": 3e-2}[compress]
    assert top1 >= 0.9
    # The request carries the compressed payload in place of the activation (and a
    # slightly longer header).
    payload = codec.encoded_nbytes(codec.encode(act, compress))  # type: ignore[arg-type]
    assert (
        payload
        <= act.numel() * act.element_size() * {"fp16": 0.5, "bf16": 0.5, "int8": 0.3}[compress]
    )
    overhead = stats.request_bytes - payload - (exact_stats.request_bytes - act.numel() * 4)
    assert 0 <= overhead < 200


def test_compression_that_would_change_values_more_is_refused_before_sending(
    llama: Deployment,
) -> None:
    edge, inputs = llama.edge, llama.inputs
    client = SplitClient(llama.url, compress="fp16")
    edge.add_perma_hook(llama.site(0), lambda t, hook: t * 1e6)  # beyond float16's range
    try:
        with pytest.raises(
            ValueError, match=r"beyond float16's range \(65504\): use compress='bf16'"
        ):
            client.run(edge, llama.site(0), **inputs)
        edge.reset_hooks(including_permanent=True)
        poison = torch.tensor([0])
        edge.add_perma_hook(llama.site(0), lambda t, hook: t.index_fill(-1, poison, float("nan")))
        with pytest.raises(ValueError, match="holds NaN or Inf"):
            SplitClient(llama.url, compress="int8").run(edge, llama.site(0), **inputs)
    finally:
        edge.reset_hooks(including_permanent=True)
    assert torch_hook_count(edge) == 0
    with pytest.raises(ValueError, match="not one of None, 'fp16', 'bf16', 'int8'"):
        SplitClient(llama.url, compress="fp8")  # type: ignore[arg-type]


# ------------------------------------------------------------------ bad requests
def _early(deployment: Deployment, k: int = 0) -> EarlyOutput:
    with torch.no_grad():
        return deployment.edge.run_until(deployment.site(k), **deployment.inputs)  # type: ignore[no-any-return]


def _request(deployment: Deployment, early: EarlyOutput | None, **changes: Any) -> bytes:
    options: dict[str, Any] = {"kwargs": dict(deployment.inputs), **changes}
    return encode_request(SplitRequest(early, **options))


def _with_activation(early: EarlyOutput, activation: torch.Tensor) -> EarlyOutput:
    return dataclasses.replace(early, activations={early.site: activation}, source=None)


def _renamed(early: EarlyOutput, site: str) -> EarlyOutput:
    return dataclasses.replace(
        early, site=site, activations={site: early.activation}, order=[site], source=None
    )


def _foreign_tensor(d: Deployment) -> bytes:
    body = _request(d, _early(d))
    from safetensors.torch import load

    tensors = load(body)
    tensors["evil"] = torch.zeros(1)
    from auto_hookpoint.remote.wire import read_metadata

    return save_safetensors(tensors, metadata=read_metadata(body))


def _damaged_metadata(d: Deployment) -> bytes:
    from safetensors.torch import load

    from auto_hookpoint.remote.wire import read_metadata

    body = _request(d, _early(d))
    metadata = read_metadata(body)
    metadata["early"] = metadata["early"].replace('"site"', '"sight"')
    return save_safetensors(load(body), metadata=metadata)


def _other_model_early(d: Deployment) -> bytes:
    torch.manual_seed(0)
    gpt2 = auto_hook(ARCHS["gpt2"].build().eval())
    with torch.no_grad():
        early = gpt2.run_until("transformer.h.0.hook_point", **d.inputs)
    return _request(d, early)


BAD_REQUESTS: dict[str, tuple[Callable[[Deployment], bytes], int, str, str]] = {
    "wrong model": (_other_model_early, 409, "wrong_model", "different architecture or size"),
    "wrong batch": (
        lambda d: _request(d, _with_activation(_early(d), _early(d).activation[:1])),
        422, "wrong_shape", "has batch size 1",
    ),
    "wrong positions": (
        lambda d: _request(d, _with_activation(_early(d), _early(d).activation[:, :5])),
        422, "wrong_shape", r"shape \[2, 5, 32\] but input_ids has shape \[2, 8\]",
    ),
    "wrong dtype": (
        lambda d: _request(d, _early(d).to(torch.float64)),
        422, "cannot_resume", "float64 but the blocks after it compute in torch.float32",
    ),
    "unknown site": (
        lambda d: _request(d, _renamed(_early(d), "model.layers.7.hook_point")),
        422, "unknown_site", "not a hook site .* Closest names: 'model.layers.1.hook_point'",
    ),
    "site inside a block": (
        lambda d: _request(d, _renamed(_early(d), "model.layers.0.mlp.hook_point")),
        422, "cannot_resume", "inside block 'model.layers.0.hook_point'",
    ),
    "unknown output field": (
        lambda d: _request(d, _early(d), output="logitz"),
        422, "bad_output", "no tensor field 'logitz'; it has \\['logits'\\]",
    ),
    "output computed on the edge": (
        lambda d: _request(d, _early(d, 1), output="model.layers.0.hook_point"),
        422, "bad_output", "computed on the edge",
    ),
    "bad inputs for the whole forward": (
        lambda d: _request(d, None, kwargs={"input_ids": d.inputs["input_ids"] + 1000}),
        422, "bad_inputs", "the forward failed on these inputs: IndexError",
    ),
    "empty body": (lambda d: b"", 400, "malformed", "0 bytes are too few to be safetensors"),
    "not safetensors": (
        lambda d: b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
        400, "malformed", "the header is not JSON",
    ),
    "header longer than the body": (
        lambda d: (10**9).to_bytes(8, "little") + b"{}",
        400, "malformed", "claims 1000000000 bytes",
    ),
    "safetensors but not a request": (
        lambda d: save_safetensors({"w": torch.zeros(2)}, metadata={"format": "x"}),
        400, "malformed", "not a split request",
    ),
    "truncated": (
        lambda d: _request(d, _early(d))[:-100], 400, "malformed", "tensors cannot be read",
    ),
    "a foreign tensor": (_foreign_tensor, 400, "malformed", "tensor named 'evil'"),
    "damaged EarlyOutput metadata": (
        _damaged_metadata, 400, "malformed", "EarlyOutput metadata is damaged",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_each_bad_request_gets_a_4xx_that_says_why_and_the_server_keeps_serving(
    llama: Deployment, case: str
) -> None:
    build, status, kind, message = BAD_REQUESTS[case]
    response = post(llama.url, build(llama))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["kind"] == kind and body["status"] == status
    assert re.search(message, body["error"]), body["error"]
    assert_still_serving(llama)


def test_the_client_raises_the_servers_refusal_with_its_message(llama: Deployment) -> None:
    client = SplitClient(llama.url, timeout=30)
    with pytest.raises(SplitServerError, match="422 resume_from needs the output of a block") as e:
        client.run(llama.edge, "model.layers.0.mlp.hook_point", **llama.inputs)
    assert e.value.status == 422 and e.value.kind == "cannot_resume"
    with pytest.raises(TypeError, match="input past_key_values= is a list"):  # before computing
        client.run(llama.edge, "model.layers.0.hook_point", past_key_values=[1], **llama.inputs)
    assert torch_hook_count(llama.edge) == 0


def test_requests_over_the_size_limit_are_refused_declared_or_streamed(llama: Deployment) -> None:
    limit = 2000
    with SplitServer(llama.server.executor.model, LOOPBACK, 0, max_request_bytes=limit) as small:
        body = _request(llama, _early(llama))
        assert len(body) > limit
        declared = post(small.url, body)
        chunked = post(small.url, iter([body[:1500], body[1500:]]))  # no Content-Length
        for response in (declared, chunked):
            assert response.status_code == 413, response.text
            assert "over this server's limit of 2,000" in response.json()["error"]
        assert post(small.url, _request(llama, None)).status_code == 200  # small enough
        with pytest.raises(SplitServerError, match="413 the request is .* bytes, over") as e:
            SplitClient(small.url).run(llama.edge, llama.site(0), **llama.inputs)
        assert e.value.kind == "too_large"


def test_unknown_endpoints_and_methods_get_json_errors(llama: Deployment) -> None:
    missing = httpx.get(f"{llama.url}/nope", timeout=10)
    assert missing.status_code == 404 and "GET /health, GET /info, POST /run" in missing.text
    wrong_method = httpx.get(f"{llama.url}/run", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["kind"] == "method_not_allowed"
    info = httpx.get(f"{llama.url}/info", timeout=10).json()
    assert info["model_class"] == "LlamaForCausalLM" and info["split_sites"][0] == llama.site(0)


# ------------------------------------------------------------------ connections
def test_an_unreachable_server_is_a_clear_error_with_nothing_left_on_the_edge(
    llama: Deployment,
) -> None:
    server = SplitServer(nn.Linear(2, 2), LOOPBACK, 0)
    server.bind()
    url = server.url
    server.stop()  # the port is free again: nothing listens there
    with pytest.raises(SplitConnectionError, match="cannot reach the split server at http://127"):
        SplitClient(url, timeout=5).run(llama.edge, llama.site(0), **llama.inputs)
    assert torch_hook_count(llama.edge) == 0


class Gate(nn.Module):
    """A block that waits for the test to open it: a request held inside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.open = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.open.wait(30)
        return x + 1


def test_timeouts_and_a_busy_model_leave_the_server_responsive() -> None:
    gate = Gate()
    model = auto_hook(nn.Sequential(nn.Linear(4, 4), gate, nn.Linear(4, 4)))
    x = torch.randn(3, 4)
    with torch.no_grad():
        gate.open.set()
        expected = model(x)
        gate.open.clear()
    with SplitServer(model, LOOPBACK, 0) as server:
        client = SplitClient(server.url, timeout=0.5)
        with pytest.raises(SplitConnectionError, match="timed out after 0.5 s"):
            client.run(model, "0.hook_point", x)
        assert gate.entered.wait(10)  # the model is busy with that request ...
        assert client.health() == {"status": "ok"}  # ... and the server still answers
        gate.open.set()
        out = SplitClient(server.url, timeout=30).run(model, "0.hook_point", x)
    assert torch.equal(out, expected)


def test_concurrent_clients_each_get_their_own_exact_result(llama: Deployment) -> None:
    edge = llama.edge
    shared = SplitClient(llama.url, timeout=60)
    jobs = []
    for index in range(6):
        generator = torch.Generator().manual_seed(index)
        ids = torch.randint(0, 96, (1 + index % 2, 4 + index), generator=generator)
        site = [llama.site(0), llama.site(1), None][index % 3]
        client = shared if index % 2 else SplitClient(llama.url, timeout=60)
        jobs.append((client, site, ids, llama.local(input_ids=ids)))
    barrier = threading.Barrier(len(jobs))
    failures: list[str] = []

    def work(client: SplitClient, site: str | None, ids: torch.Tensor, want: torch.Tensor) -> None:
        try:
            barrier.wait(30)
            for _ in range(5):
                if not torch.equal(client.run(edge, site, input_ids=ids), want):
                    failures.append(f"{site} {list(ids.shape)}: wrong result")
        except Exception as error:
            failures.append(f"{site}: {error!r}")

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert torch_hook_count(edge) == 0


def test_a_restarted_server_serves_the_same_client_again(llama: Deployment) -> None:
    server = SplitServer(llama.server.executor.model, LOOPBACK, 0).start()
    client = SplitClient(server.url, timeout=30)
    try:
        assert torch.equal(client.run(llama.edge, llama.site(1), **llama.inputs), llama.local())
        server.stop()
        with pytest.raises(SplitConnectionError):
            client.run(llama.edge, llama.site(1), **llama.inputs)
        server.start()  # the same port
        assert torch.equal(client.run(llama.edge, llama.site(1), **llama.inputs), llama.local())
    finally:
        server.stop()
        client.close()


def test_the_serve_command_serves_a_model_folder(llama: Deployment) -> None:
    """`auto-hookpoint serve MODEL_DIR --host 127.0.0.1 --port 0`, as a user starts it."""
    command = [sys.executable, "-m", "auto_hookpoint.cli", "serve", str(llama.folder),
               "--host", LOOPBACK, "--port", "0", "--threads", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        lines: list[str] = []
        timer = threading.Timer(120, process.kill)  # never wait forever for the first line
        timer.start()
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if " at http://" in line:
                break
        timer.cancel()
        match = re.search(r"at (http://127\.0\.0\.1:\d+)", "".join(lines))
        assert match, "".join(lines)
        assert "LlamaForCausalLM from" in lines[-1]
        client = SplitClient(match.group(1), timeout=60)
        for site in (llama.site(0), None):
            assert torch.equal(client.run(llama.edge, site, **llama.inputs), llama.local())
        assert (
            client.info()["fingerprint"]
            == json.loads(json.dumps(llama.server.executor.info()))["fingerprint"]
        )
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode is not None


def test_real_pretrained_weights_and_tokenizer_minilm() -> None:
    """all-MiniLM-L6-v2 (a BertModel with a padding mask): exact at every split; the
    compressed modes' effect on real activations and sentence embeddings."""
    from transformers import AutoTokenizer

    folder = minilm_path()
    edge, cloud = load_model_dir(folder), load_model_dir(folder)
    texts = ["A man is eating food.", "The for statement iterates over a sequence.", "Hi."]
    inputs = dict(AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt"))
    mask = inputs["attention_mask"].unsqueeze(-1)
    with torch.no_grad():
        full = edge(**inputs).last_hidden_state
        act = edge.run_until("encoder.layer.2.hook_point", **inputs).activation

    def embedding(hidden: torch.Tensor) -> torch.Tensor:  # the model's mean pooling
        return (hidden * mask).sum(1) / mask.sum(1)

    with SplitServer(cloud, LOOPBACK, 0) as server:
        exact = SplitClient(server.url, timeout=30)
        for k in range(6):
            assert torch.equal(exact.run(edge, f"encoder.layer.{k}.hook_point", **inputs), full)
        for compress, bound in (("fp16", 1e-3), ("bf16", 1e-2), ("int8", 5e-2)):
            client = SplitClient(server.url, compress=compress, timeout=30)  # type: ignore[arg-type]
            out = client.run(edge, "encoder.layer.2.hook_point", **inputs)
            sent = codec.decode(codec.encode(act, compress), compress, act.dtype)  # type: ignore[arg-type]
            relative = ((sent - act).norm() / act.norm()).item()
            cosine = torch.cosine_similarity(embedding(out), embedding(full)).min().item()
            max_diff = (out - full).abs().max().item()
            print(
                f"\nMiniLM {compress}: activation relative error {relative:.2e}, max |hidden diff| "
                f"{max_diff:.2e} (hidden std {full.std():.2f}), embedding cosine >= {cosine:.6f}"
            )
            assert 0 < relative < bound and cosine > 0.999
