"""Bad input to every public entry point and every CLI command: a specific error whose
message names the problem and the fix, and nothing left half-done.

Adding a public name or a CLI command? Add one line to CALLS or to CLI:

    "<exported name>: <what is wrong>": Bad(<exception type>, r"<regex: problem and fix>", lambda: <the call>),
    "<command>: <what is wrong>": ([<argv>], <exit status: 2 argparse, 1 after loading>, r"<regex>"),

test_every_public_name_has_a_row fails, naming it, for an exported name without a row.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS
from plain_models import Nested
from torch import nn

import auto_hookpoint
from auto_hookpoint import (
    ArchitectureError,
    ArchitectureMapping,
    BlockParts,
    EarlyOutput,
    EarlyOutputError,
    HookedModule,
    HookedTransformerAdapter,
    HookedTransformerAdapterCfg,
    HookedTransformerConfig_From_AutoConfig,
    NameClashError,
    ResumeError,
    SiteKind,
    SplitClient,
    SplitConnectionError,
    SplitProfile,
    SplitServer,
    UnknownHookNameError,
    auto_hook,
    auto_hook_cases,
    capture,
    carry_context,
    check_auto_hook,
    current_step,
    describe_sites,
    find_nonfinite,
    generation_trace,
    load_model_dir,
    memory_profile,
    plan_split,
    profile_split,
    resume_from,
    run_until,
    split_server_app,
    trace,
    unwrap,
)
from auto_hookpoint.cli import main

X = torch.randn(2, 8)
SITE = "blocks.0.attn.hook_point"


@dataclass(frozen=True)
class Bad:
    error: type[BaseException]
    says: str  # a regex the message must match: what was wrong, and what to do
    call: Callable[[], Any]


def plain() -> nn.Module:
    return Nested()


def hooked() -> Any:
    return auto_hook(Nested())


def stack() -> Any:
    """A Sequential of blocks: the shape resume_from takes."""
    return auto_hook(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)))


def llama() -> nn.Module:
    torch.manual_seed(0)
    return ARCHS["llama"].build().eval()


def entered(context: Any) -> Any:
    with context:
        return None


def junk_file() -> Path:
    path = Path(tempfile.mkdtemp()) / "junk.safetensors"
    path.write_text("not safetensors")
    return path


class OwnsHookDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.hook_dict = {"mine": 1}


@auto_hook
class Decorated(Nested):
    pass


class SubclassOfDecorated(Decorated):
    pass


NOT_HOOKED = r"takes a model returned by auto_hook\(\.\.\.\); this Nested is not hooked\. Call auto_hook\(model\) first"
UNKNOWN = r"is not a hook site of this model .* List them all with `model.hook_dict.keys\(\)`"
NAMES = r"names must be a site name or glob .* a list of them, or a function of the site name"

# "<exported name>: <what is wrong>" -> the error it gets. One line each.
HAS_SAE_LENS = importlib.util.find_spec("sae_lens") is not None  # the `sae` extra (TL 3 only)

CALLS: dict[str, Bad] = {
    "auto_hook: an object that is not a module": Bad(TypeError, r"takes an nn.Module instance .* or an nn.Module subclass .*got builtins.int", lambda: auto_hook(42)),
    "auto_hook: a class that is not a module": Bad(TypeError, r"int is a class that does not derive from torch.nn.Module", lambda: auto_hook(int)),
    "auto_hook: a torch.jit.script module": Bad(TypeError, r"cannot hook TorchScript: this model is a RecursiveScriptModule .* Pass auto_hook the original nn.Module", lambda: auto_hook(torch.jit.script(nn.Linear(2, 2)))),
    "auto_hook: a torch.jit.trace module": Bad(TypeError, r"cannot hook TorchScript: this model is a TopLevelTracedModule .*use torch.compile", lambda: auto_hook(torch.jit.trace(nn.Linear(2, 2), torch.randn(1, 2)))),
    "auto_hook: a scripted submodule": Bad(TypeError, r"TorchScript: the submodule '1' is a RecursiveScriptModule", lambda: auto_hook(nn.Sequential(nn.ReLU(), torch.jit.script(nn.Linear(2, 2))))),
    "auto_hook: a non-bool option": Bad(TypeError, r"auto_hook's inputs= is True or False, not 'yes'", lambda: auto_hook(plain(), inputs="yes")),
    "auto_hook: a model owning hook_dict": Bad(NameClashError, r"'hook_dict' \(the instance has it\).*rename yours\. Nothing was changed", lambda: auto_hook(OwnsHookDict())),
    "carry_context: something that is not a function": Bad(TypeError, r"carry_context takes the function to hand to another thread .*not a int", lambda: carry_context(42)),
    "unwrap: a model that is not hooked": Bad(TypeError, r"this Nested is not auto_hooked; nothing to unwrap", lambda: unwrap(plain())),
    "unwrap: an object that is not a module": Bad(TypeError, r"this int is not auto_hooked", lambda: unwrap(42)),
    "unwrap: a subclass of a decorated class": Bad(TypeError, r"subclasses an @auto_hook class.*Unwrap the decorated class instead", lambda: unwrap(SubclassOfDecorated())),
    "HookedModule: run_with_hooks on a model that is not hooked": Bad(TypeError, NOT_HOOKED.replace("takes", "hooks\\(\\) takes"), lambda: HookedModule.run_with_hooks(plain(), X)),
    "HookedModule: run_with_cache on a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: HookedModule.run_with_cache(plain(), X)),
    "HookedModule: an unknown site in run_with_hooks": Bad(UnknownHookNameError, r"'blocks.0.atn.hook_point' is not a hook site .*Closest names: 'blocks.0.attn.hook_point'", lambda: hooked().run_with_hooks(X, fwd_hooks=[("blocks.0.atn.hook_point", lambda t, hook: t)])),
    "HookedModule: fwd_hooks as a dict": Bad(TypeError, r"fwd_hooks is a list of \(site name, hook\) pairs.*; got a dict", lambda: hooked().run_with_hooks(X, fwd_hooks={SITE: lambda t, hook: t})),
    "HookedModule: a hook that is not a function": Bad(TypeError, r"bwd_hooks is a list of \(site name, hook\) pairs.*the hook for '.*' is a int, not a function", lambda: hooked().hooks(bwd_hooks=[(SITE, 42)])),
    "HookedModule: an unknown name in names_filter": Bad(UnknownHookNameError, UNKNOWN, lambda: hooked().run_with_cache(X, names_filter="blocks.9.hook_point")),
    "HookedModule: names_filter of a wrong type": Bad(ValueError, r"names_filter must be a string, list of strings, or function", lambda: hooked().run_with_cache(X, names_filter=42)),
    "HookedModule: an unknown name in hook_dict": Bad(UnknownHookNameError, UNKNOWN, lambda: hooked().hook_dict["nope"]),
    "HookedModule: add_hook in an unknown direction": Bad(ValueError, r"Invalid direction sideways", lambda: hooked().add_hook(SITE, lambda t, hook: t, dir="sideways")),
    "SiteKind: an unknown kind": Bad(ValueError, r"'nope' is not a valid SiteKind", lambda: SiteKind("nope")),
    "describe_sites: a model that is not hooked": Bad(TypeError, NOT_HOOKED.replace("takes", "describe_sites takes"), lambda: describe_sites(plain(), X)),
    "capture: a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: entered(capture(plain(), "**"))),
    "capture: a glob matching no site": Bad(UnknownHookNameError, r"'nope.\*' is not a hook site", lambda: entered(capture(hooked(), "nope.*"))),
    "capture: names of a wrong type": Bad(TypeError, NAMES + r"; got 42", lambda: entered(capture(hooked(), 42))),
    "trace: a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: entered(trace(plain()))),
    "trace: an unknown site": Bad(UnknownHookNameError, UNKNOWN, lambda: entered(trace(hooked(), names=["nope"]))),
    "trace: one name instead of a list": Bad(TypeError, r"names must be a list of module-output site names .*; got 'blocks.0.attn.hook_point'", lambda: entered(trace(hooked(), names=SITE))),
    "memory_profile: a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: entered(memory_profile(plain()))),
    "memory_profile: an unknown site": Bad(UnknownHookNameError, UNKNOWN, lambda: entered(memory_profile(hooked(), names=["nope"]))),
    "find_nonfinite: a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: entered(find_nonfinite(plain()))),
    "find_nonfinite: an unknown site": Bad(UnknownHookNameError, UNKNOWN, lambda: entered(find_nonfinite(hooked(), names=["nope"]))),
    "generation_trace: a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: entered(generation_trace(plain()))),
    "generation_trace: a tokenizer without decode": Bad(TypeError, r"pass the model's tokenizer \(with a decode method\) or None; got int", lambda: entered(generation_trace(hooked(), 42))),
    "generation_trace: k below 1": Bad(ValueError, r"k \(top tokens recorded per step\) is a whole number >= 1, not 0", lambda: entered(generation_trace(hooked(), k=0))),
    "current_step: an argument": Bad(TypeError, r"current_step\(\) takes 0 positional arguments", lambda: current_step(1)),  # type: ignore[call-arg]
    "run_until: a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: run_until(plain(), SITE, X)),
    "run_until: an unknown site": Bad(UnknownHookNameError, UNKNOWN, lambda: run_until(hooked(), "nope", X)),
    "run_until: an unknown banked site": Bad(UnknownHookNameError, r"'nope' is not a hook site", lambda: run_until(hooked(), SITE, X, bank="nope")),
    "resume_from: a model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: resume_from(plain(), SITE, X, X)),
    "resume_from: an unknown site": Bad(UnknownHookNameError, UNKNOWN, lambda: resume_from(hooked(), "nope", X, X)),
    "resume_from: a site inside a block": Bad(ResumeError, r"needs the output of a block of a stack .* 'blocks.0.attn.hook_point' is not one", lambda: resume_from(hooked(), SITE, X, X)),
    "resume_from: an activation that is not a tensor": Bad(TypeError, r"takes the activation as a tensor or an EarlyOutput .*EarlyOutput.load\(path\).*got str", lambda: resume_from(stack(), "0.hook_point", "early.safetensors", X)),
    "resume_from: an activation of the wrong batch size": Bad(ResumeError, r"batch size 3 \(shape \[3, 5\]\).*has 2.*not banked for these inputs", lambda: resume_from(stack(), "0.hook_point", torch.randn(3, 5), X)),
    "resume_from: an activation of the wrong width": Bad(ResumeError, r"shape \[2, 5\]", lambda: resume_from(stack(), "0.hook_point", torch.randn(2, 5), X)),
    "EarlyOutput: a file that does not exist": Bad(EarlyOutputError, r"/nonexistent.safetensors is not a readable EarlyOutput file: No such file", lambda: EarlyOutput.load("/nonexistent.safetensors")),
    "EarlyOutput: a file that is not safetensors": Bad(EarlyOutputError, r"junk.safetensors is not a readable EarlyOutput file", lambda: EarlyOutput.load(junk_file())),
    "HookedTransformerAdapter: an object that is not a model": Bad(TypeError, r"needs an HF causal LM: HookedTransformerAdapter\(model, tokenizer\) or .from_pretrained\(folder\); got int", lambda: HookedTransformerAdapter(42)),
    "HookedTransformerAdapter: a model that is not a language model": Bad(ArchitectureError, r"could not find the token embedding of this Nested model. Pass mapping=ArchitectureMapping", lambda: HookedTransformerAdapter(plain())),
    "ArchitectureMapping: a path that is not in the model": Bad(ArchitectureError, r"model.embed", lambda: HookedTransformerAdapter(llama(), mapping=ArchitectureMapping("model.embed", "model.layers", "model.norm", "lm_head"))),
    "BlockParts: a path that is not in the block": Bad(ArchitectureError, r"block 0 of 'model.layers' has no module 'self_attention' \(BlockParts.attn_out\).*parts=BlockParts", lambda: HookedTransformerAdapter(llama(), mapping=ArchitectureMapping("model.embed_tokens", "model.layers", "model.norm", "lm_head", parts=BlockParts(attn_out="self_attention")))),
    "HookedTransformerAdapterCfg: mappings missing a part": Bad(ArchitectureError, r"mappings must name \['blocks', 'unembed'\]", lambda: HookedTransformerAdapter(llama(), adapter_cfg=HookedTransformerAdapterCfg(mappings={"embed": "model.embed_tokens"}))),
    "HookedTransformerConfig_From_AutoConfig: not a config": Bad(TypeError, r"takes a transformers config \(model.config, .*\); this int has no num_attention_heads", lambda: HookedTransformerConfig_From_AutoConfig.from_auto_config(42)),
    "check_auto_hook: an object that is not a module": Bad(TypeError, r"takes an nn.Module class or instance, not int", lambda: check_auto_hook(42)),
    "check_auto_hook: inputs that are not a dict": Bad(TypeError, r"input_kwargs is a dict of keyword arguments, e.g. \{'x': x\}; got Tensor", lambda: check_auto_hook(Nested, X)),
    "check_auto_hook: a tensor as input_args": Bad(TypeError, r"input_args is a tuple or list of positional inputs, e.g. input_args=\(x,\); got a Tensor", lambda: check_auto_hook(Nested, input_args=X)),
    "check_auto_hook: edit_sample below 1": Bad(ValueError, r"edit_sample \(sites to edit\) is a whole number >= 1, not 0", lambda: check_auto_hook(Nested, {"x": X}, edit_sample=0)),
    "check_auto_hook: a loss_fn that is not a function": Bad(TypeError, r"loss_fn is a function of the model's output, not a int", lambda: check_auto_hook(Nested, {"x": X}, loss_fn=42)),
    "AutoHookReport: an unknown check name": Bad(KeyError, r"no check named 'nope'; checks: \['output_identical'", lambda: check_auto_hook(nn.Linear(8, 8), {"input": X})["nope"]),
    "auto_hook_cases: an object that is not a module": Bad(TypeError, r"takes an nn.Module class or instance, not int", lambda: auto_hook_cases(42, {})),
    "auto_hook_cases: an option check_auto_hook does not have": Bad(TypeError, r"has no option 'edit_samples'; its options are", lambda: auto_hook_cases(Nested, {"x": X}, edit_samples=3)),
    "SplitClient: a URL that is not a string": Bad(TypeError, r"SplitClient takes the server's URL as a string, e.g. 'http://127.0.0.1:8000'; got int", lambda: SplitClient(42)),
    "SplitClient: an unknown compression": Bad(ValueError, r"compress='zip' is not one of None, 'fp16', 'bf16', 'int8'", lambda: SplitClient("http://127.0.0.1:1", compress="zip")),
    "SplitClient: a server that is not there": Bad(SplitConnectionError, r"cannot reach the split server at http://127.0.0.1:1 .*is `auto-hookpoint serve MODEL_DIR` running there\?", lambda: SplitClient("http://127.0.0.1:1", timeout=5).run(None, None, input_ids=torch.zeros(1, 3, dtype=torch.long))),
    "SplitClient: an edge model that is not hooked": Bad(TypeError, NOT_HOOKED, lambda: SplitClient("http://127.0.0.1:1").run(plain(), SITE, X)),
    "split_server_app: an object that is not a module": Bad(TypeError, r"auto_hook takes an nn.Module instance", lambda: split_server_app(42)),
    "SplitServer: an object that is not a module": Bad(TypeError, r"auto_hook takes an nn.Module instance", lambda: SplitServer(42)),
    "load_model_dir: a folder that is not a model": Bad(FileNotFoundError, r"/nonexistent is not a HuggingFace model folder \(no config.json\); save one with model.save_pretrained", lambda: load_model_dir("/nonexistent")),
    "profile_split: no measured forward": Bad(ValueError, r"repeats=0: at least one measured forward is needed", lambda: profile_split(stack(), X, repeats=0)),
    "profile_split: a model without a stack of blocks": Bad(ValueError, r"Linear has no ModuleList or Sequential of blocks", lambda: profile_split(auto_hook(nn.Linear(8, 8)), X)),
    "SplitProfile: a file that is not a profile": Bad(ValueError, r"junk.safetensors is not a split profile \(not JSON", lambda: SplitProfile.load(junk_file())),
    "plan_split: something that is not a profile": Bad(TypeError, r"plan_split takes SplitProfiles, from profile_split\(model, ...\) or SplitProfile.load\(path\); got int", lambda: plan_split(42, bandwidth="1Mbit", rtt="1ms")),
}  # fmt: skip

# Exported names that take no input of their own: exceptions, warnings and records.
NOT_CALLED: dict[str, str] = {
    name: "an exception or warning class: raised, not called"
    for name in auto_hookpoint.__all__
    if isinstance(getattr(auto_hookpoint, name), type)
    and issubclass(getattr(auto_hookpoint, name), (BaseException, Warning))
} | {
    "Site": "a record of one site, made by auto_hook and handed out by hook_sites",
    "SplitStats": "a record of one split call's costs, made by SplitClient",
    "SplitPlan": "the result of plan_split",
}


def test_every_public_name_has_a_row() -> None:
    covered = {key.split(":")[0] for key in CALLS}
    missing = sorted(set(auto_hookpoint.__all__) - covered - set(NOT_CALLED))
    assert not missing, f"add a bad-input row to CALLS in {__file__} for: {missing}"
    assert not covered - set(auto_hookpoint.__all__), "a row names something not exported"


@pytest.mark.parametrize("case", CALLS)
def test_bad_input_is_a_clear_error(case: str) -> None:
    bad = CALLS[case]
    with pytest.raises(bad.error) as raised:
        bad.call()
    message = str(raised.value)
    assert raised.type is bad.error or bad.error in (KeyError, ValueError, TypeError)
    assert _search(bad.says, message), f"{case}:\n  message: {message}\n  expected: {bad.says}"


def _search(pattern: str, message: str) -> bool:
    import re

    return re.search(pattern, message, re.DOTALL) is not None


def test_a_refused_model_is_left_as_it_was() -> None:
    for make in (OwnsHookDict, lambda: nn.Sequential(nn.ReLU(), torch.jit.script(nn.Linear(2, 2)))):
        model = make()
        kind = type(model)
        with pytest.raises((TypeError, NameClashError)):
            auto_hook(model)
        assert type(model) is kind and torch_hook_count(model) == 0
        assert not any(k.startswith("_auto_hook") for k in vars(model))


# ------------------------------------------------------------------------------ CLI
def _folder_without_weights() -> str:
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return str(folder)


NO_FOLDER = "/nonexistent/model"
# "<command>: <what is wrong>" -> (argv, exit status, regex for the last line of stderr)
CLI: dict[str, tuple[list[str], int, str]] = {
    "sites: a folder that does not exist": ([NO_FOLDER], 2, r"^auto-hookpoint sites: error: argument model_dir: /nonexistent/model is not a HuggingFace model folder \(does not exist\): give a folder written by save_pretrained\(\)"),
    "sites: a folder without config.json": (["sites", tempfile.gettempdir()], 2, r"is not a HuggingFace model folder \(has no config.json\)"),
    "sites: a folder whose model does not load": (["sites", _folder_without_weights()], 1, r"^auto-hookpoint sites: error: could not load the model in .*\(OSError: .*\); pass a folder written by save_pretrained\(\), with the model's config, weights and tokenizer$"),
    "sites: empty text": (["sites", "--text", " "], 2, r"argument --text: the text is empty: give a few words to run on"),
    "split: a layer that is not a number": (["split", "--layer", "x"], 2, r"argument --layer: invalid int value: 'x'"),
    "split: a negative layer": (["split", "--layer", "-1"], 2, r"argument --layer: -1 is too small: give a whole number >= 0"),
    "split: a layer the model does not have": (["split", "--layer", "7"], 1, r"^auto-hookpoint split: error: --layer 7: the stack 'model.layers' has 2 blocks; there is no block 7; pick a block from 0 on$"),
    "split: a folder whose model does not load": (["split", _folder_without_weights()], 1, r"^auto-hookpoint split: error: could not load the model in"),
    "train-sae: no steps": (["train-sae", "--steps", "0"], 2, r"argument --steps: 0 is too small: give a whole number >= 1"),
    "train-sae: an unknown hook": (["train-sae", "--hook", "blocks.1.hook_resid_pst", "--steps", "1"], 1, r"^auto-hookpoint train-sae: error: --hook: 'blocks.1.hook_resid_pst' is not a hook site .*Closest names: 'blocks.1.hook_resid_post'" if HAS_SAE_LENS else r"^auto-hookpoint train-sae: error: train-sae needs sae_lens: pip install 'auto_hookpoint\[sae\]'"),
    "train-sae: --out is a file": (["train-sae", "--out", __file__], 2, r"argument --out: .*test_bad_input.py is a file: give a folder to save the SAE in"),
    "trace: --out in a folder that does not exist": (["trace", "--out", "/nonexistent/t.json"], 2, r"argument --out: /nonexistent/t.json is in /nonexistent, which does not exist: give a file path in an existing folder"),
    "memory: --out is a folder": (["memory", "--out", tempfile.gettempdir()], 2, r"argument --out: .* is a folder: give a file path in an existing folder"),
    "nonfinite: --poison names no module": (["nonfinite", "--poison", "model.layers.0.mlp.up_prj"], 1, r"^auto-hookpoint nonfinite: error: --poison 'model.layers.0.mlp.up_prj': the model has no module of that path with a weight; give the path of one that has, such as 'model.layers.0.mlp.up_proj'"),
    "nonfinite: a folder that does not exist": (["nonfinite", NO_FOLDER], 2, r"argument model_dir: /nonexistent/model is not a HuggingFace model folder"),
    "split: an unknown option": (["split", "--depth"], 2, r"unrecognized arguments: --depth$"),
    "serve: a port out of range": (["serve", "--port", "70000"], 2, r"argument --port: 70000 is not a port: give 1 to 65535, or 0 \(any\)"),
    "serve: a port already taken": (["serve", "--port", "<taken>"], 1, r"^auto-hookpoint serve: error: cannot listen on 127.0.0.1:\d+ \(.*\): give an address of this machine and a free port \(--port 0 picks one\)$"),
    "serve: a folder whose model does not load": (["serve", _folder_without_weights()], 1, r"^auto-hookpoint serve: error: could not load the model in"),
    "plan: no measured forward": (["plan", "--repeats", "0"], 2, r"argument --repeats: 0 is too small: give a whole number >= 1"),
    "plan: a bandwidth it cannot read": (["plan", "--bandwidth", "fast"], 1, r"^auto-hookpoint plan: bandwidth 'fast' is not understood"),
    "plan: a chart in a folder that does not exist": (["plan", "--chart", "/nonexistent/plan.png"], 2, r"argument --chart: /nonexistent/plan.png is in /nonexistent, which does not exist"),
}  # fmt: skip


def test_every_cli_command_has_a_row() -> None:
    from auto_hookpoint.cli import COMMANDS

    covered = {key.split(":")[0] for key in CLI}
    assert not set(COMMANDS) - covered, f"add a bad-input row to CLI for {set(COMMANDS) - covered}"


@pytest.mark.parametrize("case", CLI)
def test_bad_cli_input_is_one_line_and_an_exit_status(
    case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, status, says = CLI[case]
    with socket.socket() as taken:  # a port in use, for the rows that ask for one
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = [str(taken.getsockname()[1]) if a == "<taken>" else a for a in argv]
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse, or a command's own one-line exit
            code = exit.code
            if isinstance(code, str):  # what the interpreter does with SystemExit("...")
                print(code, file=sys.stderr)
                code = 1
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert _search(says, last), f"{case}:\n  stderr: {err}\n  expected: {says}"
    if status == 1:  # found once the command ran: one line, nothing else
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (["split", "--layer", "x"], 2, "argument --layer: invalid int value: 'x'"),
        (["sites", _folder_without_weights()], 1, "error: could not load the model in"),
    ],
    ids=["argparse", "after-loading"],
)
def test_the_installed_command_prints_no_traceback(argv: list[str], status: int, says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "auto_hookpoint.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == status and "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr.strip().splitlines()[-1]
