"""Draw docs/split_network_plan.png, the planner's chart shown in docs/split_network.md.

    .venv/bin/python docs/split_network_chart.py

A LlamaForCausalLM (6 layers, hidden 256, vocabulary 4096) on 128 tokens, asked for its
next-token logits, profiled on this machine (one torch thread) as the edge. The server
is that profile with every compute time divided by 10, standing for a server ten times
faster (as a GPU would be): a second machine's profile would be loaded with
``SplitProfile.load`` instead. Planned for a 20 Mbit/s link with a 30 ms round trip;
the table is printed, the chart written next to this script.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import transformers as tf

from auto_hookpoint import auto_hook, plan_split, profile_split


def main() -> None:
    torch.manual_seed(0)
    model = auto_hook(
        tf.LlamaForCausalLM(
            tf.LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024,
                           num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                           max_position_embeddings=256)
        ).eval()
    )  # fmt: skip
    ids = torch.randint(0, 4096, (1, 128), generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    edge = profile_split(model, repeats=9, last_position=True, input_ids=ids)
    server = dataclasses.replace(
        edge,
        machine="this machine's profile, 10x faster",
        forward_ms=edge.forward_ms / 10,
        block_ms=[t / 10 for t in edge.block_ms],
        decode_ms={
            m: [t / 10 if t is not None else None for t in ts] for m, ts in edge.decode_ms.items()
        },
    )
    plan = plan_split(edge, server, bandwidth="20Mbit", rtt="30ms", compress=(None, "int8"))
    print(plan.table())
    out = Path(__file__).with_name("split_network_plan.png")
    plan.save_chart(out)
    print(f"chart written to {out}")


if __name__ == "__main__":
    main()
