"""Hooks and captures across generate(): the decoding step, and a generation trace.

.venv/bin/python examples/hooks_during_generation.py
"""

import torch

from auto_hookpoint import auto_hook, capture, current_step, generation_trace
from auto_hookpoint.demo import demo_model, demo_tokenizer

model, tokenizer = auto_hook(demo_model()), demo_tokenizer()
ids = tokenizer("The del statement removes", return_tensors="pt")["input_ids"]


def steer_after_prefill(resid: torch.Tensor, hook: object) -> torch.Tensor | None:
    step = current_step()
    return resid * 1.5 if step is not None and not step.prefill else None  # decode steps only


hooks = [("model.layers.0.hook_point", steer_after_prefill)]
with torch.no_grad(), generation_trace(model, tokenizer, k=3) as gen:
    with (
        capture(model, "model.layers.1.hook_point", append=True) as acts,
        model.hooks(fwd_hooks=hooks),
    ):
        out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
gen.finish(out)
for step in gen.steps:
    print(step)
print("layer 1 across all steps:", list(acts.cat("model.layers.1.hook_point").shape))
