"""The ``auto-hookpoint`` command. Nothing is downloaded.

``auto-hookpoint [sites] [MODEL_DIR] [--text TEXT]`` hooks a model (by default a small
Llama built from its config, with a tokenizer trained offline; or a local HuggingFace
model folder), prints the table of its hook sites and a short run_with_cache /
run_with_hooks demonstration.

``auto-hookpoint split [MODEL_DIR] [--layer K]`` runs a causal LM up to block K, saves
the activation, finishes the forward in a second process and checks the logits.

``auto-hookpoint train-sae [MODEL_DIR] [--hook NAME] [--steps N] [--out DIR]`` trains a
sparse autoencoder with sae_lens' own runner through the HookedTransformerAdapter and
saves it in sae_lens' format.

``auto-hookpoint trace|memory|nonfinite [MODEL_DIR]`` run the observers: a Chrome trace
of a generation, a memory table and bar chart, the first module producing a NaN/Inf.

``auto-hookpoint serve [MODEL_DIR] [--host 127.0.0.1] [--port 8000]`` serves the cloud
half of split inference over HTTP; ``auto-hookpoint plan [MODEL_DIR] --bandwidth 20Mbit
--rtt 30ms`` measures the model and prints the latency of every split for that link.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auto_hookpoint.commands import CommandError, load_any_model, load_causal_lm
from auto_hookpoint.errors import UnknownHookNameError

DEFAULT_TEXT = "The return statement leaves the current function call with a value."


COMMANDS = ("sites", "split", "train-sae", "trace", "memory", "nonfinite", "serve", "plan")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command. Bad arguments exit with status 2 (argparse's usage error) when
    they are wrong on their face, or 1 with one line naming the problem and the fix when
    they are found wrong once the model is loaded (a layer it does not have, ...)."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "sites")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    try:
        return _run(args)
    except CommandError as error:
        print(f"auto-hookpoint {args.command}: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auto-hookpoint",
        description="TransformerLens hooks on any model. With no command: `sites`.",
    )
    commands = parser.add_subparsers(dest="command")
    sites = commands.add_parser("sites", help="hook a model and print its hook sites")
    split = commands.add_parser(
        "split", help="split a causal LM after block K and finish it in another process"
    )
    split.add_argument("--layer", type=_at_least(0), default=1, help="the block to split after")
    train = commands.add_parser("train-sae", help="train an SAE with sae_lens on a causal LM")
    train.add_argument("--hook", default="blocks.1.hook_resid_post", help="the hook to train on")
    train.add_argument("--steps", type=_at_least(1), default=400, help="training steps")
    train.add_argument(
        "--out", type=_output_folder, default=Path("sae_out"), help="where to save the SAE"
    )
    tracing = commands.add_parser("trace", help="trace a generation, write a Chrome trace")
    tracing.add_argument("--out", type=_output_file, default=Path("trace.json"), help="trace file")
    memory = commands.add_parser("memory", help="memory per module, and a bar chart")
    memory.add_argument("--out", type=_output_file, default=Path("memory.png"), help="chart file")
    nonfinite = commands.add_parser("nonfinite", help="find the first module producing NaN/Inf")
    nonfinite.add_argument("--poison", help="set one weight of this module to NaN first")
    serve = commands.add_parser("serve", help="serve the cloud half of split inference (HTTP)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument("--port", type=_port, default=8000, help="port (0: a free one)")
    serve.add_argument("--max-request-mb", type=_positive, default=256, help="request size limit")
    serve.add_argument("--threads", type=_at_least(1), help="torch threads (default: torch's)")
    plan = commands.add_parser("plan", help="latency of every split point for a network link")
    plan.add_argument("--bandwidth", default="20Mbit", help="link bandwidth: 20Mbit, 1Gbit, 5MB/s")
    plan.add_argument("--rtt", default="30ms", help="round-trip time: 30ms, 0.1s")
    plan.add_argument("--batch", type=_at_least(1), default=1, help="batch size to plan for")
    plan.add_argument("--seq-len", type=_at_least(1), default=128, help="positions to plan for")
    plan.add_argument("--repeats", type=_at_least(1), default=5, help="measured forwards")
    plan.add_argument("--threads", type=_at_least(1), help="torch threads (default: torch's)")
    plan.add_argument(
        "--last-position", action="store_true", help="the server returns the last position only"
    )
    plan.add_argument(
        "--compress", default="none", help="compressions the pick may use: none,fp16,bf16,int8"
    )
    plan.add_argument(
        "--save-profile", type=_output_file, help="save this machine's profile (JSON)"
    )
    plan.add_argument("--edge-profile", type=Path, help="the edge's profile, measured there")
    plan.add_argument("--server-profile", type=Path, help="the server's profile, measured there")
    plan.add_argument(
        "--chart", type=_output_file, default=Path("split_plan.png"), help="chart file"
    )
    for sub in (sites, split, train, tracing, memory, nonfinite, serve, plan):
        sub.add_argument(
            "model_dir",
            nargs="?",
            type=_model_folder,
            help="a local HuggingFace model folder (default: a small Llama built from a config)",
        )
        sub.add_argument("--text", type=_some_text, default=DEFAULT_TEXT, help="input text")
    return parser


# Argument types: a ValueError's message becomes argparse's one-line error, exit status 2.
def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)  # argparse names a non-number itself
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= {low}")
        return value

    parse.__name__ = "int"
    return parse


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: give 1 to 65535, or 0 (any)")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _model_folder(text: str) -> Path:
    path = Path(text)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise argparse.ArgumentTypeError(
            f"{text} is not a HuggingFace model folder ({what}): give a folder written by "
            "save_pretrained(), or none for the demo model"
        )
    return path


def _output_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir():
        problem = "is a folder" if path.is_dir() else f"is in {path.parent}, which does not exist"
        raise argparse.ArgumentTypeError(
            f"{text} {problem}: give a file path in an existing folder"
        )
    return path


def _output_folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file: give a folder to save the SAE in")
    return path


def _some_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the text is empty: give a few words to run on")
    return text


def _run(args: argparse.Namespace) -> int:
    if args.command == "train-sae":
        return _train_sae(args)
    if args.command == "serve":
        from auto_hookpoint.commands.serve import serve as serve_model

        serve_model(args.model_dir, args.host, args.port, args.max_request_mb, args.threads)
        return 0
    if args.command == "plan":
        from auto_hookpoint.commands.plan import plan as plan_split

        return plan_split(args)
    if args.command in ("trace", "memory", "nonfinite"):
        from auto_hookpoint.commands import observer_demo as demo

        if args.command == "trace":
            demo.run_trace(args.model_dir, args.text, args.out)
        elif args.command == "memory":
            demo.run_memory(args.model_dir, args.text, args.out)
        else:
            demo.run_nonfinite(args.model_dir, args.text, args.poison)
        return 0
    if args.command == "split":
        from auto_hookpoint.commands.split_demo import split_and_finish_elsewhere

        return 0 if split_and_finish_elsewhere(args.model_dir, args.text, args.layer) else 1
    from auto_hookpoint import auto_hook
    from auto_hookpoint.site_report import SiteStatus, describe_sites, format_site_table

    model, tokenizer, label = _load(args.model_dir)
    inputs = dict(tokenizer(args.text, return_tensors="pt"))
    hooked = auto_hook(model)
    records = describe_sites(hooked, **inputs)
    fired = sum(r.status is SiteStatus.FIRED for r in records)
    print(f"{label}: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"{len(records)} hook sites, {fired} fired on {inputs['input_ids'].shape[1]} tokens\n")
    print(format_site_table(records))
    print()
    _demonstrate(hooked, inputs, [r.name for r in records if r.status is SiteStatus.FIRED])
    return 0


def _train_sae(args: argparse.Namespace) -> int:
    from auto_hookpoint.adapter import HookedTransformerAdapter
    from auto_hookpoint.adapter.train_sae import summary, train_sae
    from auto_hookpoint.demo import demo_model, demo_tokenizer

    if args.model_dir is None:
        adapter = HookedTransformerAdapter(demo_model(num_layers=4), demo_tokenizer())
    else:
        model, tokenizer, _ = load_causal_lm(args.model_dir)
        adapter = HookedTransformerAdapter(model, tokenizer)
    if args.hook not in adapter.hook_dict:
        try:
            adapter.hook_dict[args.hook]  # raises, naming the closest hooks
        except UnknownHookNameError as error:
            raise CommandError(f"--hook: {error}") from error
    model_name = adapter.cfg.original_architecture
    print(f"training an SAE on {args.hook!r} of {model_name} for {args.steps} steps")
    _, metrics = train_sae(adapter, args.hook, args.out, steps=args.steps)
    print(f"saved in sae_lens' format to {args.out}/: {sorted(p.name for p in args.out.iterdir())}")
    print(summary(metrics))
    return 0


def _load(model_dir: Path | None) -> tuple[nn.Module, Any, str]:
    if model_dir is None:
        from auto_hookpoint.demo import demo_model, demo_tokenizer

        return demo_model(), demo_tokenizer(), "demo LlamaForCausalLM (random weights)"
    return load_any_model(model_dir)  # type: ignore[no-any-return]


def _demonstrate(hooked: Any, inputs: dict[str, torch.Tensor], fired: list[str]) -> None:
    layers = [n for n in fired if n.count(".") >= 2 and n.rsplit(".", 2)[-2].isdigit()]
    site = layers[len(layers) // 2] if layers else fired[len(fired) // 2]
    with torch.no_grad():
        out, cache = hooked.run_with_cache(**inputs, names_filter=site)
        ablated = hooked.run_with_hooks(
            **inputs, fwd_hooks=[(site, lambda t, hook: torch.zeros_like(t))]
        )
    act = cache[site]
    print(f'run_with_cache(..., names_filter="{site}")')
    print(f"  cache[{site!r}]: shape {list(act.shape)}, mean |x| {act.abs().mean():.4f}")
    before, after = _primary(out), _primary(ablated)
    print(f'run_with_hooks(..., fwd_hooks=[("{site}", zero_ablate)])')
    print(f"  output changed by mean |d| {(after - before).abs().mean():.4f}")


def _primary(output: Any) -> torch.Tensor:
    from auto_hookpoint.core.structure import find_primary, get_at

    path = find_primary(output)
    assert path is not None
    return get_at(output, path)  # type: ignore[no-any-return]


if __name__ == "__main__":
    raise SystemExit(main())
