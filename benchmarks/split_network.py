"""Split inference over a simulated link: measured latency of every split, and the planner.

    .venv/bin/python benchmarks/split_network.py [--rounds 7] [--quick]

For each model (an image classifier, whose input is larger than its activations, and a
causal LM asked for its next-token logits) and each link, it starts the real
``auto-hookpoint serve`` on 127.0.0.1 (a subprocess, one torch thread), loads the same
folder here as the edge (one torch thread) and times ``SplitClient.run``
end to end for every option: all on the server, after each block (exact and int8), all
on the edge.
The link is simulated in the client's transport: each request waits RTT/2 plus its body's
bits over the bandwidth before it is sent, and each response the same after it arrives,
so everything else (compute, encoding, HTTP over loopback) is measured for real.
Options are interleaved (rotating order) and each figure is a median over the rounds.

The planner then predicts every option from a profile of the model measured here
(``profile_split``; both halves run on this machine, so one profile serves as the edge's
and the server's), and the table shows whether its pick is within 10% of the best
measured. With the same compute on both sides, nothing beats keeping everything on the
edge; what this measures is how well the latency model predicts every option.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import transformers as tf

from auto_hookpoint import SplitClient, load_model_dir, plan_split, profile_split
from auto_hookpoint.remote.planner import ALL_EDGE, ALL_SERVER, parse_bandwidth, parse_duration

LINKS = [("20Mbit", "30ms"), ("200Mbit", "5ms")]
SERVER_THREADS = 1


class SimulatedLink(httpx.BaseTransport):
    """An httpx transport that delays each request and response as a link would."""

    def __init__(self, bandwidth: str, rtt: str):
        self.bits_per_s, self.rtt_s = parse_bandwidth(bandwidth), parse_duration(rtt)
        self.inner = httpx.HTTPTransport()

    def _wait(self, nbytes: int) -> None:
        time.sleep(self.rtt_s / 2 + nbytes * 8 / self.bits_per_s)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._wait(len(request.read()))
        response = self.inner.handle_request(request)
        content = response.read()
        self._wait(len(content))
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    def close(self) -> None:
        self.inner.close()


def models(quick: bool) -> dict[str, tuple[Any, dict[str, Any]]]:
    layers = 4 if quick else 6
    torch.manual_seed(0)
    vit = tf.ViTForImageClassification(
        tf.ViTConfig(hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=512, image_size=224, patch_size=16, num_labels=100)
    )  # fmt: skip
    llama = tf.LlamaForCausalLM(
        tf.LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256)
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    return {
        "vit (224x224 image)": (
            vit, {"pixel_values": torch.randn(1, 3, 224, 224, generator=generator)},
        ),
        "llama (128 tokens, next-token logits)": (
            llama, {"input_ids": torch.randint(0, 4096, (1, 128), generator=generator)},
        ),
    }  # fmt: skip


def start_server(folder: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "auto_hookpoint.cli", "serve", str(folder), "--port", "0",
               "--threads", str(SERVER_THREADS)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    timer = threading.Timer(300, process.kill)
    timer.start()
    seen = ""
    assert process.stdout is not None
    for line in process.stdout:
        seen += line
        match = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        if match:
            timer.cancel()
            drain = threading.Thread(target=process.stdout.read, daemon=True)  # its access log
            drain.start()
            return process, match.group(1)
    timer.cancel()
    raise RuntimeError(f"the server did not start:\n{seen}")


def measure(edge: Any, inputs: dict[str, Any], url: str, link: tuple[str, str], sites: list[str],
            last_position: bool, rounds: int) -> dict[tuple[str, str], float]:  # fmt: skip
    exact = SplitClient(url, transport=SimulatedLink(*link), timeout=120)
    int8 = SplitClient(url, compress="int8", transport=SimulatedLink(*link), timeout=120)
    options: dict[tuple[str, str], Any] = {
        (ALL_SERVER, "none"): lambda: exact.run(None, None, last_position=last_position, **inputs),
        (ALL_EDGE, "none"): lambda: edge(**inputs),
    }
    for site in sites:
        label = f"after {site.removesuffix('.hook_point')}"
        for mode, client in (("none", exact), ("int8", int8)):
            options[(label, mode)] = lambda c=client, s=site: c.run(
                edge, s, last_position=last_position, **inputs
            )
    times: dict[tuple[str, str], list[float]] = {key: [] for key in options}
    keys = list(options)
    with torch.no_grad():
        for key in keys:  # warm-up: connections, first calls
            options[key]()
        for index in range(rounds):
            for key in keys[index % len(keys) :] + keys[: index % len(keys)]:
                start = time.perf_counter()
                options[key]()
                times[key].append((time.perf_counter() - start) * 1e3)
    exact.close()
    int8.close()
    return {key: statistics.median(values) for key, values in times.items()}


def picks(name: str, link: tuple[str, str], measured: dict[tuple[str, str], float],
          edge: Any, server: Any) -> list[str]:  # fmt: skip
    """Table rows: the planner's pick (exact; exact or int8) against the best measured."""
    rows = []
    ends = f"{measured[(ALL_EDGE, 'none')]:.1f} / {measured[(ALL_SERVER, 'none')]:.1f} ms"
    for allow, kind in (((None,), "exact"), ((None, "int8"), "exact or int8")):
        keys = [k for k in measured if "int8" in allow or k[1] == "none"]
        best = min(keys, key=lambda k: measured[k])
        pick = plan_split(edge, server, bandwidth=link[0], rtt=link[1], compress=allow).best
        picked = measured[(pick.label, pick.compress)]
        rows.append(
            f"| {name} | {link[0]}, {link[1]} | {kind} | {pick.label} ({pick.compress}): "
            f"{picked:.1f} ms | {best[0]} ({best[1]}): {measured[best]:.1f} ms | "
            f"{picked / measured[best]:.2f}x | {ends} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="4 layers, 3 rounds, one link")
    args = parser.parse_args()
    rounds, links = (3, LINKS[:1]) if args.quick else (args.rounds, LINKS)
    torch.set_num_threads(1)
    summary = []
    for name, (model, inputs) in models(args.quick).items():
        last_position = "input_ids" in inputs
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            edge = load_model_dir(folder)
            process, url = start_server(Path(folder))
            try:
                options = {"repeats": 9, "last_position": last_position}
                profile = server_profile = profile_split(edge, **options, **inputs)
                for link in links:
                    measured = measure(
                        edge, inputs, url, link, profile.sites, last_position, rounds
                    )
                    plan = plan_split(
                        profile, bandwidth=link[0], rtt=link[1], compress=(None, "int8")
                    )
                    print(f"\n### {name}, {link[0]}, RTT {link[1]}\n")
                    print("| split | compression | request KiB | predicted ms | measured ms |")
                    print("|---|---|---|---|---|")
                    for (label, mode), ms in measured.items():
                        option = plan.option(label, mode)
                        print(f"| {label} | {mode} | {option.request_bytes / 1024:.1f} | "
                              f"{option.total_ms:.1f} | {ms:.1f} |")  # fmt: skip
                    summary += picks(name, link, measured, profile, server_profile)
            finally:
                process.terminate()
                process.wait(30)
    print("\n### planner pick vs best measured\n")
    print(
        "| model | link | allowed | planner pick, measured | best measured | pick / best "
        "| all-edge / all-server |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
