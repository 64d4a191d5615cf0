"""Split exit (run_until) and resume (resume_from), on HF decoders and plain stacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS
from plain_models import Residual
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from auto_hookpoint import auto_hook
from auto_hookpoint.errors import (
    EarlyOutputError,
    ResumeError,
    SiteNeverFiredError,
    UnknownHookNameError,
)
from auto_hookpoint.split import EarlyOutput

DECODERS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "gpt2": "transformer.h",
}
HERE = Path(__file__).parent


def build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return auto_hook(ARCHS[arch].build().eval())


class CalledModules:
    """Paths of every module called while active, seen by a global torch hook."""

    def __init__(self, model: nn.Module) -> None:
        self.paths = {id(m): p for p, m in model.named_modules()}
        self.called: list[str] = []

    def __enter__(self) -> list[str]:
        self.handle = register_module_forward_hook(
            lambda m, i, o: self.called.append(self.paths.get(id(m), "?"))
        )
        return self.called

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("k", [0, 1])
def test_exit_computes_nothing_after_the_split_and_resume_nothing_before(arch: str, k: int) -> None:
    model, stack = build(arch), DECODERS[arch]
    inputs = ARCHS[arch].inputs()
    site = f"{stack}.{k}.hook_point"
    with torch.no_grad():
        full = model(**inputs).logits
        _, cache = model.run_with_cache(**inputs, names_filter=site)
        with CalledModules(model) as called:
            early = model.run_until(site, **inputs)
        assert torch.equal(early.activation, cache[site])
        after = (f"{stack}.{k + 1}", "model.norm", "transformer.ln_f", "lm_head")
        assert called and not [p for p in called if p.startswith(after)]
        with CalledModules(model) as called:
            resumed = model.resume_from(site, early, **inputs)
    assert torch.equal(resumed.logits, full)
    assert not [p for p in called if any(p.startswith(f"{stack}.{i}.") for i in range(k + 1))]
    assert torch_hook_count(model) == 0


@pytest.mark.parametrize("arch", DECODERS)
def test_resume_in_a_second_process_from_a_saved_early_output(arch: str, tmp_path: Path) -> None:
    model = build(arch)
    inputs = ARCHS[arch].inputs()
    site = f"{DECODERS[arch]}.0.hook_point"
    with torch.no_grad():
        full = model(**inputs).logits
        model.run_until(site, **inputs).save(tmp_path / "early.safetensors")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    early_file, out_file = tmp_path / "early.safetensors", tmp_path / "out.safetensors"
    script = str(HERE / "split_worker.py")
    worker = [sys.executable, script, arch, site, str(early_file), str(out_file)]
    done = subprocess.run(worker, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(load_file(tmp_path / "out.safetensors")["logits"], full)


def test_banked_sites_come_back_in_firing_order_and_survive_a_round_trip(tmp_path: Path) -> None:
    model = build("llama")
    inputs = ARCHS["llama"].inputs()
    bank = ["model.embed_tokens.hook_point", "model.layers.0.mlp.hook_point", "lm_head.hook_point"]
    early = model.run_until("model.layers.1.hook_point", **inputs, bank=bank)
    assert early.order == [
        "model.embed_tokens.hook_point",
        "model.layers.0.mlp.hook_point",
        "model.layers.1.hook_point",
    ]
    assert "lm_head.hook_point" not in early.activations  # after the split: never computed
    early.save(tmp_path / "e.safetensors")
    loaded = EarlyOutput.load(tmp_path / "e.safetensors")
    assert (
        loaded.order == early.order
        and loaded.site == early.site
        and loaded.fingerprint == early.fingerprint
    )
    assert all(torch.equal(loaded.activations[k], v) for k, v in early.activations.items())


class Blocks(nn.Module):
    """A ModuleList stack, with a raw parameter of its own used before the stack."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.blocks = nn.ModuleList(Residual() for _ in range(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.mark.parametrize("k", range(4))
def test_plain_stacks_module_list_and_sequential(k: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    model = auto_hook(Blocks())
    early = model.run_until(f"blocks.{k}.hook_point", x)
    with CalledModules(model) as called:
        resumed = model.resume_from(f"blocks.{k}.hook_point", early, x)
    assert torch.equal(resumed, model(x))
    assert not [p for p in called if any(p.startswith(f"blocks.{i}.") for i in range(k + 1))]

    seq = auto_hook(nn.Sequential(*[Residual() for _ in range(4)], nn.Linear(8, 2)))
    early = seq.run_until(f"{k}.hook_point", x)
    assert torch.equal(seq.resume_from(f"{k}.hook_point", early, x), seq(x))


def test_parameters_lent_to_a_module_come_back_after_a_split_exit() -> None:
    torch.manual_seed(0)
    model = auto_hook(Blocks())
    real = model.scale
    model.add_perma_hook("scale.hook_point", lambda p, hook: p * 2)
    model.run_until("blocks.1.hook_point", torch.randn(2, 8))
    assert model._parameters["scale"] is real
    model.reset_hooks(including_permanent=True)
    assert torch_hook_count(model) == 0


def test_the_model_is_reusable_after_an_exit() -> None:
    model = build("llama")
    inputs = ARCHS["llama"].inputs()
    before = model(**inputs).logits
    model.run_until("model.layers.0.hook_point", **inputs)
    assert torch_hook_count(model) == 0
    assert torch.equal(model(**inputs).logits, before)
    _, cache = model.run_with_cache(**inputs, names_filter="model.layers.1.hook_point")
    assert "model.layers.1.hook_point" in cache


# ----------------------------------------------------------------- error paths
def test_unknown_site_is_named_with_the_closest() -> None:
    with pytest.raises(UnknownHookNameError, match="model.layers.0.hook_point"):
        build("llama").run_until("model.layer.0.hook_point", **ARCHS["llama"].inputs())


def test_a_site_that_never_fires_says_so() -> None:
    torch.manual_seed(0)
    model = auto_hook(ARCHS["t5"].build().eval())
    with pytest.raises(SiteNeverFiredError, match="'shared.hook_point'"):
        model.run_until("shared.hook_point", **ARCHS["t5"].inputs())
    assert torch_hook_count(model) == 0


def test_resuming_from_inside_a_block_is_refused_with_why() -> None:
    model = build("llama")
    inputs = ARCHS["llama"].inputs()
    early = model.run_until("model.layers.0.mlp.hook_point", **inputs)
    with pytest.raises(ResumeError, match="inside block 'model.layers.0.hook_point'"):
        model.resume_from("model.layers.0.mlp.hook_point", early, **inputs)


class TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y, y.mean()


class TupleStack(nn.Module):
    """Blocks return (hidden, extra) and the stack unpacks them, as transformers 4 did."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TupleBlock() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)[0]
        return x


def test_stacks_whose_blocks_return_structures_are_refused() -> None:
    torch.manual_seed(0)
    model, x = auto_hook(TupleStack()), torch.randn(2, 8)
    early = model.run_until("layers.1.hook_point", x)
    assert early.output_path == [0]
    with pytest.raises(ResumeError, match="not a plain tensor"):
        model.resume_from("layers.1.hook_point", early, x)
    with pytest.raises(ResumeError, match="cannot be resumed exactly"):
        model.resume_from("layers.1.hook_point", early.activation, x)  # raw tensor: caught too
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_wrong_model_is_refused_before_running(tmp_path: Path) -> None:
    early = build("llama").run_until("model.layers.0.hook_point", **ARCHS["llama"].inputs())
    with pytest.raises(EarlyOutputError, match="different architecture or size"):
        build("mistral").resume_from(
            "model.layers.0.hook_point", early, **ARCHS["mistral"].inputs()
        )


def test_wrong_shape_and_dtype_are_refused() -> None:
    model = build("llama")
    inputs = ARCHS["llama"].inputs()
    early = model.run_until("model.layers.0.hook_point", **inputs)
    with pytest.raises(
        ResumeError, match="torch.float64 but the blocks after it compute in torch.float32"
    ):
        model.resume_from("model.layers.0.hook_point", early.to(torch.float64), **inputs)
    with pytest.raises(ResumeError, match=r"shape \[2, 8, 16\]"):
        model.resume_from("model.layers.0.hook_point", torch.zeros(2, 8, 16), **inputs)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_corrupt_and_tampered_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(EarlyOutputError, match="not a readable EarlyOutput"):
        EarlyOutput.load(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(EarlyOutputError, match="not an EarlyOutput"):
        EarlyOutput.load(foreign)
    model = build("llama")
    early = model.run_until("model.layers.0.hook_point", **ARCHS["llama"].inputs())
    early.save(tmp_path / "ok.safetensors")
    loaded = load_file(tmp_path / "ok.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ok.safetensors"), "pt") as f:
        metadata = f.metadata()
    tampered = loaded["model.layers.0.hook_point"][:, :4].contiguous()
    loaded["model.layers.0.hook_point"] = tampered
    save_file(loaded, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(
        EarlyOutputError, match=r"is \[2, 4, 32\] torch.float32 but was saved as \[2, 8, 32\]"
    ):
        EarlyOutput.load(tmp_path / "bad.safetensors")
